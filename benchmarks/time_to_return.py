"""Wall-clock to a return, CrossQ vs our SAC: `python -m benchmarks.time_to_return --suite cpu|gpu`.

The claim under test (CrossQ paper): CrossQ reaches SAC's return 2–7× sooner in wall-clock
with a similar final return. At equal UTD a CrossQ gradient step costs more than a SAC one
(one critic forward on 2B rows through BRN layers), so SAC runs twice: with the preset's
`training_iter` (UTD 1 on the CPU suite: one env, one gradient step per env step) and with
4× that. Every run is the learner in its own subprocess and its own out dir under
benchmarks/runs/ (git-ignored); runs of one env are queued seed by seed, variants
interleaved, `--parallel` at a time, so the variants share the machine's noise.

Per env and variant it reports, from the eval rows of metrics.jsonl: the wall-clock (and env
steps) to the env's threshold, the return at the env's time budget (runs are stopped
there), the final return, time-to-threshold as a ratio to CrossQ's, and the claim's own
measure: how much sooner CrossQ reaches the SAC variant's final return (`add_verdicts`). A
run that never gets there counts its whole length, so its mean and ratio are bounds (">").
Writes benchmarks/results/time_to_return_<device>.json, learning curves with seed bands
(…_<device>.png) and a bar chart of time-to-threshold (time_to_return_bars_<device>.png).

`--compare` adds Stable-Baselines3 SAC and sb3-contrib CrossQ on the gym: envs (same env
steps, seeds, evaluation schedule; benchmarks/sb3_runner.py); other envs are skipped. Runs
already finished with the same command are reused (`--fresh` reruns them), so `--compare`
after a plain run only adds the SB3 runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from benchmarks.common import print_table, save_png, write_json
from crossq_gpu import configure

RUNS_DIR = Path(__file__).resolve().parent / "runs"


@dataclass(frozen=True)
class Task:
    env: str
    steps: int
    """Env-step budget of every run."""
    time_budget_s: float
    """Learner wall-clock (`wall_s`) at which returns are compared; runs are stopped there."""
    threshold: float
    """Return counted as "reached" (first eval row at or above it)."""
    eval_every: int
    args: tuple[str, ...] = ()
    """Learner flags shared by every variant (preset, envs, random steps, …)."""
    log_every: int = 500
    """Env steps between train rows: how often the time budget is checked (a host sync each)."""


CPU_COMMON = ("--preset", "cpu", "--device", "cpu", "--num-envs", "1", "--eval-episodes", "5",
              "--no-compile", "--set", "agent.algorithm.training_start_step=1000")

# Thresholds: "solved" where both algorithms solve the task in the budget, else about what
# our SAC at UTD 1 reaches by the end of the budget (the claim's "SAC's return").
CPU_SUITE = [
    # −250: the Pendulum bar of tests/test_learning.py; random ≈ −1200, good ≈ −150.
    Task("gym:Pendulum-v1", 8_000, 150, -250, 1000, CPU_COMMON),
    # 900 of 1000 (the pole stays up ≥ 90% of the time limit).
    Task("gym:InvertedPendulum-v5", 6_000, 120, 900, 1000, CPU_COMMON),
    # Same bar on Brax's version (episode_length 1000). Its first eval also compiles the
    # eval env (≈ 15 s, cached after), which every variant pays equally.
    Task("inverted_pendulum", 6_000, 150, 900, 1000, CPU_COMMON),
    # Harder, short budget: in a 15k-step pilot our SAC (UTD 1) ended at ≈ 660 and CrossQ at
    # ≈ 4000 (random ≈ −300), so 500 is "SAC's return" at this budget.
    Task("gym:HalfCheetah-v5", 15_000, 300, 500, 1500, CPU_COMMON),
]


def _gpu_task(env: str, threshold: float) -> Task:
    """4,096 Brax envs under the auto preset's many-env regime."""
    args = ("--preset", "auto", "--device", "cuda", "--num-envs", "4096", "--eval-episodes", "10")
    return Task(env, 5_000_000, 600, threshold, 200_000, args, log_every=4096 * 10)


# 15 runs of ≤ 10 min per seed (≈ 2.5 h on one GPU). Thresholds are provisional, not yet
# measured here: roughly "walks/runs steadily" on Brax's 1000-step episodes; revise them
# from the first GPU run's curves.
GPU_SUITE = [_gpu_task("ant", 3000), _gpu_task("halfcheetah", 3000), _gpu_task("hopper", 1500),
             _gpu_task("walker2d", 1500), _gpu_task("humanoid", 3000)]

SUITES = {"cpu": CPU_SUITE, "gpu": GPU_SUITE}
SB3_VARIANTS = ("sb3-sac", "sb3-crossq")


@dataclass
class Job:
    task: Task
    variant: str
    seed: int
    out: Path
    cmd: list[str] = field(default_factory=list)


# --- variants and commands ------------------------------------------------------------


def preset_training_iter(task: Task) -> int:
    """training_iter the task's preset and --set flags resolve to (SAC-UTD4 uses 4× it)."""
    preset = task.args[task.args.index("--preset") + 1]
    sets = [task.args[i + 1] for i, a in enumerate(task.args) if a == "--set"]
    num_envs = int(task.args[task.args.index("--num-envs") + 1])
    cfg, _ = configure.build_config(preset, cuda_available=True, overrides=sets,
                                    flags={"env.name": task.env, "env.num_envs": num_envs})
    return cfg.agent.algorithm.training_iter


def variant_flags(task: Task) -> dict[str, list[str]]:
    k = preset_training_iter(task)
    return {"crossq": ["--algo", "crossq"], "sac": ["--algo", "sac"],
            "sac-utd4": ["--algo", "sac", "--set", f"agent.algorithm.training_iter={4 * k}"]}


def command(job: Job, steps: int, eval_every: int) -> list[str]:
    t = job.task
    if job.variant in SB3_VARIANTS:
        return [sys.executable, "-m", "benchmarks.sb3_runner", "--algo", job.variant.removeprefix("sb3-"),
                "--env", t.env.removeprefix("gym:"), "--steps", str(steps), "--seed", str(job.seed),
                "--eval-every", str(eval_every), "--eval-episodes", "5", "--learning-starts", "1000",
                "--out", str(job.out)]
    return [sys.executable, "-m", "crossq_gpu.learner", "--env", t.env, *t.args, *variant_flags(t)[job.variant],
            "--total-steps", str(steps), "--seed", str(job.seed), "--eval-every", str(eval_every),
            "--log-every", str(min(t.log_every, eval_every)), "--checkpoint-every", "0", "--out", str(job.out)]


def child_env(device: str) -> dict[str, str]:
    """One torch/XLA thread per CPU run: runs go one per core and must not spin against each other."""
    env = dict(os.environ)
    if device == "cpu":
        env.update(OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_cpu_multi_thread_eigen=false")
    return env


# --- running --------------------------------------------------------------------------

# A learner stuck inside XLA (a CPU reset that hangs sits at 0 % CPU) never reaches Python's
# SIGTERM handler: this long after the SIGTERM it is killed.
KILL_GRACE_S = 60.0


def run_learner(cmd: list[str], out: Path, device: str, should_stop: Callable[[float], bool]) -> tuple[int, bool, bool]:
    """Run `cmd` with its output in out/stdout.log, polling every second; once `should_stop`
    (of the seconds so far) holds, SIGTERM (the learner stops cleanly), and KILL_GRACE_S later
    SIGKILL. Returns the exit code, whether it was stopped, and whether it had to be killed."""
    start, stopped_at = time.perf_counter(), None
    with open(out / "stdout.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(device),
                                cwd=Path(__file__).resolve().parents[1])
        while proc.poll() is None:
            time.sleep(1.0)
            waited = time.perf_counter() - start
            if stopped_at is None and should_stop(waited):
                proc.send_signal(signal.SIGTERM)
                stopped_at = waited
            elif stopped_at is not None and waited > stopped_at + KILL_GRACE_S:
                proc.kill()
                proc.wait()
                return proc.returncode, True, True
    return proc.returncode, stopped_at is not None, False


def last_wall_s(metrics: Path) -> float:
    try:
        lines = metrics.read_text().splitlines()
        return float(json.loads(lines[-1])["wall_s"]) if lines else 0.0
    except (OSError, ValueError, KeyError, IndexError):
        return 0.0  # a half-written last line: read it on the next poll


def code_digest() -> str:
    """Hash of crossq_gpu's sources at launch: others edit the tree while a suite runs."""
    h = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parents[1] / "crossq_gpu").rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def run_job(job: Job, budget_s: float, device: str, fresh: bool) -> None:
    """Run one job to its steps or its time budget (SIGTERM: the learner stops cleanly)."""
    marker = job.out / "run.json"
    if not fresh and marker.exists() and json.loads(marker.read_text()).get("cmd") == job.cmd:
        print(f"reuse  {job.out.relative_to(RUNS_DIR)}", flush=True)
        return
    job.out.mkdir(parents=True, exist_ok=True)
    (job.out / "metrics.jsonl").unlink(missing_ok=True)
    print(f"start  {job.out.relative_to(RUNS_DIR)}", flush=True)
    start, digest, load = time.perf_counter(), code_digest(), os.getloadavg()[0]
    returncode, stopped, killed = run_learner(
        job.cmd, job.out, device,
        lambda waited: last_wall_s(job.out / "metrics.jsonl") >= budget_s or waited > 2 * budget_s + 300)
    elapsed = time.perf_counter() - start
    if killed:
        raise RuntimeError(f"{' '.join(job.cmd)} still ran {KILL_GRACE_S:.0f} s after its SIGTERM (hung?) and was "
                           f"killed; see {job.out / 'stdout.log'}")
    if returncode not in (0, 130, -signal.SIGTERM):
        raise RuntimeError(f"{' '.join(job.cmd)} failed ({returncode}); see {job.out / 'stdout.log'}")
    marker.write_text(json.dumps({"cmd": job.cmd, "returncode": returncode, "stopped_at_budget": stopped,
                                  "process_s": round(elapsed, 1), "code_digest": digest,
                                  "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}, indent=2))
    print(f"done   {job.out.relative_to(RUNS_DIR)} in {elapsed:.0f} s{' (time budget)' if stopped else ''}",
          flush=True)


# --- reading results ------------------------------------------------------------------


def read_run(job: Job, threshold: float, budget_s: float) -> dict[str, Any]:
    rows = [json.loads(line) for line in (job.out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    marker = json.loads((job.out / "run.json").read_text())
    evals = [(r["env_steps"], r["wall_s"], r["return_mean"]) for r in rows if r["kind"] == "eval"]
    end_s = max(r["wall_s"] for r in rows)
    end_steps = max(r["env_steps"] for r in rows)
    hit = next((e for e in evals if e[2] >= threshold), None)
    before = [e for e in evals if e[1] <= budget_s]
    return {"env": job.task.env, "variant": job.variant, "seed": job.seed,
            "reached_s": hit[1] if hit else None, "reached_steps": hit[0] if hit else None,
            "return_at_budget": before[-1][2] if before else None,
            "final_return": evals[-1][2] if evals else None, "final_steps": evals[-1][0] if evals else None,
            "end_s": end_s, "end_steps": end_steps, "ms_per_env_step": 1e3 * end_s / max(end_steps, 1),
            "code_digest": marker.get("code_digest"), "loadavg_1min": marker.get("loadavg_1min"),
            "curve": [list(e) for e in evals]}


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.pstdev(xs) if len(xs) > 1 else None


def summarize(task: Task, variant: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Across seeds; a seed that never reached the threshold counts its whole run (a lower bound)."""
    reached = [r for r in runs if r["reached_s"] is not None]
    return {"env": task.env, "variant": variant, "seeds": len(runs), "threshold": task.threshold,
            "time_budget_s": task.time_budget_s, "steps": task.steps,
            "reached": f"{len(reached)}/{len(runs)}", "censored": len(reached) < len(runs),
            "t_thr_s": _mean([r["reached_s"] if r["reached_s"] is not None else r["end_s"] for r in runs]),
            "steps_thr": _mean([r["reached_steps"] for r in reached]) if reached else None,
            "ret_at_budget": _mean([r["return_at_budget"] for r in runs]),
            "ret_at_budget_std": _std([r["return_at_budget"] for r in runs]),
            "final_return": _mean([r["final_return"] for r in runs]),
            "final_return_std": _std([r["final_return"] for r in runs]),
            "final_steps": min((r["final_steps"] or 0) for r in runs),
            "ms_per_env_step": _mean([r["ms_per_env_step"] for r in runs])}


def first_time(run: dict[str, Any], target: float) -> float | None:
    return next((c[1] for c in run["curve"] if c[2] >= target), None)


def add_verdicts(summary: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """Ratios to CrossQ, and whether the claim holds against each SAC variant.

    ratio_thr: time-to-threshold / CrossQ's. match_ratio, the claim's own measure: the
    variant's mean wall-clock to its mean final return / CrossQ's wall-clock to that return
    (a seed that never gets there counts its whole run: ">" on the variant's side is a lower
    bound, on CrossQ's an upper one). "holds": match_ratio ≥ 2 and CrossQ's final return is
    not worse by more than 10% of the threshold's magnitude; a lower bound under 2 is
    "unresolved" (the budget was too short for SAC to get there).
    """
    cq_summary = {s["env"]: s for s in summary if s["variant"] == "crossq"}
    for s in summary:
        s.update(ratio_thr=None, ratio_thr_censored=None, match_target=None, match_ratio=None,
                 match_censored=None, verdict=None)
        cq = cq_summary.get(s["env"])
        if s["variant"] == "crossq" or cq is None:
            continue
        if not cq["censored"]:
            s["ratio_thr"], s["ratio_thr_censored"] = s["t_thr_s"] / cq["t_thr_s"], s["censored"]
        mine = [r for r in runs if r["env"] == s["env"] and r["variant"] == s["variant"]]
        theirs = [r for r in runs if r["env"] == s["env"] and r["variant"] == "crossq"]
        target = statistics.fmean(r["final_return"] for r in mine)
        t_mine = [first_time(r, target) for r in mine]
        t_cq = [first_time(r, target) for r in theirs]
        ratio = (statistics.fmean(t if t is not None else r["end_s"] for t, r in zip(t_mine, mine))
                 / max(statistics.fmean(t if t is not None else r["end_s"] for t, r in zip(t_cq, theirs)), 1e-9))
        s["match_target"], s["match_ratio"] = target, ratio
        s["match_censored"] = "variant" if None in t_mine else "crossq" if None in t_cq else None
        similar = (cq["final_return"] or -np.inf) >= s["final_return"] - 0.1 * max(abs(s["threshold"]), 1.0)
        if "sac" not in s["variant"]:
            continue  # another CrossQ (sb3-contrib): the ratios compare implementations, no claim
        if ratio >= 2 and similar:
            s["verdict"] = "holds" + (" (>7x)" if ratio > 7 else "")
        elif ratio <= 1:
            s["verdict"] = "does not hold: SAC sooner"
        elif not similar:
            s["verdict"] = "CrossQ sooner, lower final return"
        elif s["match_censored"] == "variant":
            s["verdict"] = "CrossQ sooner; 2x unresolved (bound)"
        else:
            s["verdict"] = "CrossQ sooner, < 2x"


# --- plots ----------------------------------------------------------------------------


def _hold(xs: list[float], ys: list[float], grid: np.ndarray, end: float) -> np.ndarray:
    """Latest y at or before each grid point; NaN before the first x and after the run's end."""
    idx = np.searchsorted(np.asarray(xs), grid, side="right") - 1
    out = np.where(idx >= 0, np.asarray(ys)[np.clip(idx, 0, None)], np.nan)
    return np.where(grid > end, np.nan, out)


def plot_curves(tasks: list[Task], runs: list[dict[str, Any]], variants: list[str]) -> Figure:
    fig = Figure(figsize=(11, 3.2 * len(tasks)))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    for row, task in zip(axes, tasks):
        for col, (key, xlabel) in enumerate([(0, "env steps"), (1, "wall-clock s")]):
            ax = row[col]
            for variant in variants:
                rs = [r for r in runs if r["env"] == task.env and r["variant"] == variant and r["curve"]]
                if not rs:
                    continue
                end_key = "end_steps" if key == 0 else "end_s"
                grid = np.linspace(0, max(r[end_key] for r in rs), 300)
                ys = np.stack([_hold([c[key] for c in r["curve"]], [c[2] for c in r["curve"]], grid, r[end_key])
                               for r in rs])
                valid = ~np.all(np.isnan(ys), axis=0)
                with warnings.catch_warnings():  # all-NaN columns (no run has a value there yet)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean, lo, hi = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
                color = f"C{variants.index(variant)}"
                ax.plot(grid[valid], mean[valid], color=color, label=f"{variant} (n={len(rs)})")
                ax.fill_between(grid[valid], lo[valid], hi[valid], color=color, alpha=0.2)
            ax.axhline(task.threshold, color="gray", ls="--", lw=0.8)
            if key == 1:
                ax.axvline(task.time_budget_s, color="gray", ls=":", lw=0.8)
            ax.set(xlabel=xlabel, ylabel="eval return", title=f"{task.env} (mean, min–max over seeds)")
            ax.grid(True, alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_bars(tasks: list[Task], summary: list[dict[str, Any]], runs: list[dict[str, Any]],
              variants: list[str]) -> Figure:
    fig = Figure(figsize=(3.2 * len(tasks), 3.6))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        ss = [s for v in variants for s in summary if s["env"] == task.env and s["variant"] == v]
        xs = np.arange(len(ss))
        for x, s in zip(xs, ss):
            ax.bar(x, s["t_thr_s"] or 0, color=f"C{variants.index(s['variant'])}", alpha=0.7,
                   hatch="//" if s["censored"] else None, edgecolor="k" if s["censored"] else None)
            seeds = [r for r in runs if r["env"] == task.env and r["variant"] == s["variant"]]
            ax.plot([x] * len(seeds), [r["reached_s"] or r["end_s"] for r in seeds], "k.")
        ax.set_xticks(xs, [s["variant"] for s in ss], rotation=30, fontsize=8)
        ax.set_ylabel("wall-clock s to threshold")
        ax.set_title(f"{task.env}, return ≥ {task.threshold:g}", fontsize=9)
    fig.suptitle("mean over seeds (dots: seeds); hatched: not every seed reached it (whole run counted)",
                 fontsize=9)
    fig.tight_layout()
    return fig


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=list(SUITES), default="cpu")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per variant")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="scale env steps, eval interval and time budgets (e.g. 0.1 for a smoke run)")
    p.add_argument("--compare", action="store_true",
                   help="add SB3 SAC and sb3-contrib CrossQ on the gym: envs (pip install -e '.[compare]')")
    p.add_argument("--envs", nargs="+", help="only these envs of the suite")
    p.add_argument("--parallel", type=int, default=None, help="runs at once (default: 2 on cpu, 1 on gpu)")
    p.add_argument("--fresh", action="store_true", help="rerun runs that already finished")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--results", default="time_to_return",
                   help="name of the JSON/PNGs under benchmarks/results/ (so a subset run apart keeps the suite's)")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[list[Task], list[str], list[Job]]:
    """The suite's tasks, the variants, and one job per (task, seed, variant) with its command."""
    tasks = [t for t in SUITES[args.suite] if not args.envs or t.env in args.envs]
    variants = ["crossq", "sac", "sac-utd4"] + (list(SB3_VARIANTS) if args.compare else [])
    if args.compare:
        import sb3_contrib  # noqa: F401  (fail now, not after an hour of runs)
        skipped = [t.env for t in tasks if not t.env.startswith("gym:")]
        if skipped:
            print(f"note: --compare runs SB3 on gym: envs only; skipped for {', '.join(skipped)}")
    scale = args.budget_scale
    root = RUNS_DIR / (f"time_to_return_{args.suite}" + ("" if scale == 1 else f"_x{scale:g}"))
    jobs: list[Job] = []
    for task in tasks:
        steps, every = max(1, round(task.steps * scale)), max(1, round(task.eval_every * scale))
        for seed in range(args.seeds):
            for variant in variants:
                if variant in SB3_VARIANTS and not task.env.startswith("gym:"):
                    continue
                job = Job(task, variant, seed, root / re.sub(r"[^A-Za-z0-9_.-]+", "_", task.env) / f"{variant}-s{seed}")
                job.cmd = command(job, steps, every)
                jobs.append(job)
    return tasks, variants, jobs


def run_all(jobs: list[Job], args: argparse.Namespace, device: str) -> tuple[dict[str, BaseException], dict[str, Any]]:
    """Every job, `parallel` at a time: the failed ones by run folder, and how loaded the machine was."""
    parallel = args.parallel or (2 if device == "cpu" else 1)
    load_before = os.getloadavg()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(run_job, j, j.task.time_budget_s * args.budget_scale, device, args.fresh)
                   for j in jobs]
    load_after = os.getloadavg()
    # One broken run must not cost the others' hour; running again redoes only the failed ones.
    failed = {str(j.out.relative_to(RUNS_DIR)): f.exception() for j, f in zip(jobs, futures) if f.exception()}
    for name, exc in failed.items():
        print(f"FAILED {name}: {exc}")
    machine = {"parallel_runs": parallel, "cpu_count": os.cpu_count(), "loadavg_before": load_before,
               "loadavg_after": load_after}
    return failed, machine


def report(tasks: list[Task], variants: list[str], jobs: list[Job], failed: dict[str, BaseException],
           machine: dict[str, Any], args: argparse.Namespace, device: str) -> None:
    """Read the finished runs, summarize them per env and variant, write the JSON and plots, print the table."""
    scale = args.budget_scale
    runs = [read_run(j, j.task.threshold, j.task.time_budget_s * scale) for j in jobs
            if str(j.out.relative_to(RUNS_DIR)) not in failed]
    present = [v for v in variants if any(r["variant"] == v for r in runs)]
    summary = [summarize(t, v, [r for r in runs if r["env"] == t.env and r["variant"] == v])
               for t in tasks for v in present if any(r["env"] == t.env and r["variant"] == v for r in runs)]
    add_verdicts(summary, runs)
    dev = torch.device(device)
    digests = sorted({str(r["code_digest"]) for r in runs})
    meta = {"suite": args.suite, "seeds": args.seeds, "budget_scale": scale, "variants": present,
            "tasks": [asdict(t) for t in tasks], **machine, "failed_runs": sorted(failed), "code_digests": digests,
            "claim": "CrossQ reaches SAC's return 2-7x sooner in wall-clock with similar final return",
            "summary": summary}
    path = write_json(args.results, dev, runs, **meta)
    save_png(plot_curves(tasks, runs, present), args.results, dev)
    save_png(plot_bars(tasks, summary, runs, present), f"{args.results}_bars", dev)
    print_summary(summary)
    load_before, load_after = machine["loadavg_before"], machine["loadavg_after"]
    print(f"load average before/after: {load_before[0]:.1f}/{load_after[0]:.1f} on {machine['cpu_count']} cores")
    if len(digests) > 1:
        print(f"warning: runs used different crossq_gpu sources ({', '.join(digests)})")
    print(f"wrote {path}")


def print_summary(summary: list[dict[str, Any]]) -> None:
    """The summary as a table, bounds marked ('>' lower, '<' upper), and what its columns mean."""

    def bound(value: float | None, flag: bool) -> str | None:
        return None if value is None else (">" if flag else "") + f"{value:.2f}"

    table = [{**s, "t_thr_s": (">" if s["censored"] else "") + f"{s['t_thr_s']:.0f}",
              "ratio_thr": bound(s["ratio_thr"], bool(s["ratio_thr_censored"])),
              "match_ratio": None if s["match_ratio"] is None else
              {"variant": ">", "crossq": "<", None: ""}[s["match_censored"]] + f"{s['match_ratio']:.2f}"}
             for s in summary]
    print()
    print_table(table, ["env", "variant", "reached", "t_thr_s", "steps_thr", "ret_at_budget", "final_return",
                        "final_steps", "ms_per_env_step", "ratio_thr", "match_target", "match_ratio", "verdict"])
    print("\nt_thr_s: mean wall-clock s to the threshold ('>': not every seed reached it; its whole run counted);"
          "\nret_at_budget: eval return at the time budget; ms_per_env_step: run wall-clock / env steps;"
          "\nratio_thr: t_thr_s / CrossQ's; match_ratio: wall-clock for the variant to reach its own mean final"
          "\nreturn (match_target) / for CrossQ to reach it ('>' lower bound, '<' upper bound). Claim: 2-7x.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = "cuda" if args.suite == "gpu" else "cpu"
    tasks, variants, jobs = plan(args)
    if args.dry_run:
        print("\n".join(" ".join(j.cmd[1:]) for j in jobs))
        return
    failed, machine = run_all(jobs, args, device)
    report(tasks, variants, jobs, failed, machine, args, device)


if __name__ == "__main__":
    main()
