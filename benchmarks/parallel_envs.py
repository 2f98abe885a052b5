"""Many envs against few, under the auto regime: `python -m benchmarks.parallel_envs`.

Every run is the learner in its own subprocess with `--preset auto`, so the settings that
depend on num_envs (batch, updates per vector step, BRN warmup, α₀) are the ones a user
gets. Runs are sized by gradient steps, the same number at every num_envs: on a GPU a
gradient step at batch 16k costs only a few times one at 256, and stepping thousands of
envs is cheap, so return per gradient step at large batch is what stands in for GPU
wall-clock on a CPU. Wall-clock, env steps/s and updates/s are reported beside it.

Two parts, the first run first:
- target: CrossQ on halfcheetah at 128 envs for `--target-grad-steps` (default 5,000);
- sweep: CrossQ and SAC on halfcheetah and ant (which terminates) at 1 … 1,024 envs for
  `--grad-steps` each.
`--gpu` runs the GPU sizes instead (ant and humanoid at 4,096 and 8,192 envs, on CUDA).
Runs go `--jobs` at a time, one torch and one XLA thread each; a run already finished with
the same command (benchmarks/runs/parallel_envs/<run>/run.json) is reused. Writes
benchmarks/results/<--results>_<device>.json (rewritten after every run), a PNG of
return against gradient steps, env steps and wall-clock, and prints a table and the targets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from benchmarks import time_to_return
from benchmarks.common import print_table, save_png, write_json
from crossq_gpu import configure
from crossq_gpu.config import Config

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = ROOT / "benchmarks" / "runs" / "parallel_envs"
EVALS_PER_RUN = 10
TARGET = {"env": "halfcheetah", "num_envs": 128, "return": 9000.0, "max_batch": 16_384, "max_drop": 0.2}
# Changes to the auto regime tried on the target's env and size (`--levers`), as --set overrides;
# "rule" is the plain rule, run beside them with the same seeds and length.
LEVERS: dict[str, list[str]] = {
    "rule": [],
    "gamma_0.97": ["agent.algorithm.gamma=0.97"],
    "gamma_0.95": ["agent.algorithm.gamma=0.95"],
    "replay_ratio_64": ["agent.algorithm.training_iter=4"],  # 4 updates per vector step (64 at batch 2,048)
    "policy_delay_1": ["agent.algorithm.policy_delay=1"],
    "brn_momentum_0.1": ["agent.critic_net.batch_renorm.momentum=0.1"],
    "critic_512": ["agent.critic_net.hidden=[512,512]"],
    "alpha0_1": ["agent.algorithm.alpha_init=1.0"],
    "overlap": ["run.overlap=true"],  # the env steps while the updates run; they miss its transitions
    "lr_3e-3": ["agent.critic_net.optim.lr=0.003", "agent.net.optim.lr=0.003"],  # Adam's step for actor and critics
    "batch_4096": ["agent.memory.batch_size=4096"],  # the rule's 2 updates per vector step: replay ratio 64
    "weight_norm": ["agent.critic_net.weight_norm=true"],  # CrossQ+WN
    "brn_warmup_0": ["agent.critic_net.batch_renorm.warmup_steps=0"],  # renormalise from the first step
    # 25 % of the run the rule plans at 128 envs on a CPU (10,000 gradient steps), not its 10 %
    "brn_warmup_2500": ["agent.critic_net.batch_renorm.warmup_steps=2500"],
    "actor_lr_3e-4": ["agent.net.optim.lr=0.0003"],  # the policy moves a third as fast; the critics as before
    # both, with the longest warmup the rule may take (a 20 % share of its 10,000 planned steps)
    "actor_lr_3e-4+brn_warmup_2000": ["agent.net.optim.lr=0.0003", "agent.critic_net.batch_renorm.warmup_steps=2000"],
    "n_step_3": ["agent.algorithm.n_step=3"],  # three-step TD targets: reward flows back three times as fast
    # half the usual −|A|: α keeps the policy wider, to explore past a slow gait
    "target_entropy_-3": ["agent.algorithm.target_entropy=-3.0"],
}


@dataclass
class Spec:
    """One learner run: what it trains and how long."""

    part: str
    env: str
    num_envs: int
    algo: str
    seed: int
    grad_steps: int
    device: str
    lever: str = "rule"

    @property
    def name(self) -> str:
        lever = "" if self.lever == "rule" else f"-{self.lever}"
        return f"{self.part}-{self.env}-{self.num_envs}-{self.algo}{lever}-{self.seed}"


def regime(spec: Spec) -> Config:
    """The config the learner will resolve for `spec`, its lever's overrides included."""
    cfg, _ = configure.build_config("auto", spec.device == "cuda", overrides=LEVERS[spec.lever],
                                    flags={"env.name": spec.env, "env.num_envs": spec.num_envs})
    return cfg


def command(spec: Spec) -> list[str]:
    """The learner, sized so that it makes `grad_steps` gradient steps, with EVALS_PER_RUN evals."""
    alg = regime(spec).agent.algorithm
    n = spec.num_envs
    vector_steps = math.ceil(spec.grad_steps / alg.training_iter) * alg.training_frequency
    every = math.ceil((math.ceil(alg.training_start_step / n) + vector_steps) / EVALS_PER_RUN)
    eval_every = every * n  # the last eval comes at the end of the run
    return [sys.executable, "-m", "crossq_gpu.learner", "--preset", "auto", "--env", spec.env,
            "--num-envs", str(n), "--algo", spec.algo, "--seed", str(spec.seed), "--device", spec.device,
            "--total-steps", str(EVALS_PER_RUN * eval_every), "--eval-every", str(eval_every),
            "--log-every", str(eval_every), "--eval-episodes", "5", "--checkpoint-every", "0",
            "--out", str(RUNS_DIR / spec.name)] + [a for kv in LEVERS[spec.lever] for a in ("--set", kv)]


def run(spec: Spec, budget_s: float) -> dict[str, Any]:
    """Run one learner to its gradient steps or `budget_s` (then SIGTERM: it stops cleanly;
    a while later, SIGKILL). A run that went to its end before with the same command is
    read back, not run again."""
    out = RUNS_DIR / spec.name
    cmd = command(spec)
    marker = out / "run.json"
    process = json.loads(marker.read_text())["process"] if finished(spec) else None
    if process is not None and not process["stopped_at_budget"]:
        print(f"reuse  {spec.name}", flush=True)
        return {**asdict(spec), **curve(out / "metrics.jsonl"), **process, **summary_of(spec)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    print(f"start  {spec.name}", flush=True)
    start = time.perf_counter()
    returncode, stopped, killed = time_to_return.run_learner(cmd, out, spec.device, lambda waited: waited > budget_s)
    elapsed = time.perf_counter() - start
    if killed:  # recorded with no curve, and run again next time
        print(f"killed {spec.name}: still running {time_to_return.KILL_GRACE_S:.0f} s after its budget's "
              f"SIGTERM (hung?); see {out / 'stdout.log'}", flush=True)
    elif returncode not in (0, 130, -signal.SIGTERM):
        raise RuntimeError(f"{' '.join(cmd)} failed ({returncode}); see {out / 'stdout.log'}")
    else:
        print(f"done   {spec.name} in {elapsed:.0f} s{' (time budget)' if stopped else ''}", flush=True)
    process = {"process_s": round(elapsed, 1), "stopped_at_budget": stopped}
    marker.write_text(json.dumps({"cmd": cmd, "process": process}, indent=2))
    return {**asdict(spec), **curve(out / "metrics.jsonl"), **process, **summary_of(spec)}


def finished(spec: Spec) -> bool:
    marker = RUNS_DIR / spec.name / "run.json"
    return marker.exists() and json.loads(marker.read_text())["cmd"] == command(spec)


def summary_of(spec: Spec) -> dict[str, Any]:
    cfg = regime(spec)
    return {"batch_size": cfg.agent.memory.batch_size, "regime": configure.describe_regime(cfg)}


def curve(metrics: Path) -> dict[str, Any]:
    """Eval returns with the env steps, gradient steps and wall-clock they came at, and the
    mean train-row throughput after the first row (which holds the compiles). A run stopped
    before its first row (killed, or hung in its first reset) has no curve."""
    text = metrics.read_text() if metrics.exists() else ""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    train = {r["env_steps"]: r for r in rows if r["kind"] == "train"}
    evals = [r for r in rows if r["kind"] == "eval"]
    points = [{"env_steps": e["env_steps"], "grad_steps": train[e["env_steps"]]["grad_steps"],
               "wall_s": e["wall_s"], "return": e["return_mean"]} for e in evals if e["env_steps"] in train]
    steady = [r for r in train.values() if r["grad_steps"] > 0][1:]
    return {"curve": points,
            "sps": statistics.mean(r["sps"] for r in steady) if steady else None,
            "ups": statistics.mean(r["ups"] for r in steady) if steady else None}


# --- reading the results ----------------------------------------------------------------


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (part, env, algo, num_envs): means over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["part"], r["env"], r["algo"], r["num_envs"], r["lever"]), []).append(r)
    out = []
    for (part, env, algo, n, lever), runs in sorted(groups.items()):
        finals = [r["curve"][-1]["return"] for r in runs if r["curve"]]
        bests = [max(p["return"] for p in r["curve"]) for r in runs if r["curve"]]
        last = [r["curve"][-1] for r in runs if r["curve"]]
        out.append({"part": part, "env": env, "algo": algo, "num_envs": n, "lever": lever, "seeds": len(runs),
                    "batch": runs[0]["batch_size"],
                    "grad_steps": statistics.mean(p["grad_steps"] for p in last) if last else None,
                    "env_steps": statistics.mean(p["env_steps"] for p in last) if last else None,
                    "final": statistics.mean(finals) if finals else None,
                    "best": statistics.mean(bests) if bests else None,
                    "wall_s": statistics.mean(p["wall_s"] for p in last) if last else None,
                    "sps": _mean(r["sps"] for r in runs), "ups": _mean(r["ups"] for r in runs)})
    return out


def _mean(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def targets(rows: list[dict[str, Any]], lines: list[dict[str, Any]]) -> list[str]:
    """The regime's targets as met / missed / not measured."""
    verdicts = []
    runs = [r for r in rows if r["part"] == "target" and r["curve"]]
    if runs:
        ok = []
        for r in runs:
            returns = [p["return"] for p in r["curve"]]
            best_at = returns.index(max(returns))
            drop = 1 - min(returns[best_at:]) / max(returns) if max(returns) > 0 else 1.0
            ok.append(max(returns) >= TARGET["return"] and drop <= TARGET["max_drop"]
                      and r["batch_size"] <= TARGET["max_batch"])
            verdicts.append(f"  seed {r['seed']}: best {max(returns):.0f} at {r['curve'][best_at]['grad_steps']} "
                            f"gradient steps, largest fall after it {100 * drop:.0f} %")
        verdicts.insert(0, f"{'met' if all(ok) else 'missed'}: {TARGET['env']} at {TARGET['num_envs']} envs "
                           f">= {TARGET['return']:.0f} within the run, never falling > "
                           f"{100 * TARGET['max_drop']:.0f} % after its best, every seed")
    else:
        verdicts.append("not measured: the halfcheetah-128 target run")
    for env, algo in sorted({(r["env"], r["algo"]) for r in rows if r["part"] == "sweep"}):
        curves = {n: [r["curve"] for r in rows if r["part"] == "sweep" and r["env"] == env
                      and r["algo"] == algo and r["num_envs"] == n and r["curve"]] for n in (1, 16, 256)}
        order = [n for n in (1, 16, 256) if curves[n]]
        if len(order) < 2:
            verdicts.append(f"not measured: {env} {algo} 1 <= 16 <= 256 envs")
            continue
        # Equal gradient steps: as far as every size's every seed got (a run may stop at its budget).
        g = min(c[-1]["grad_steps"] for n in order for c in curves[n])
        at = {n: statistics.mean(return_at(c, g) for c in curves[n]) for n in order}
        ok = all(at[a] <= at[b] for a, b in zip(order, order[1:]))
        verdicts.append(f"{'met' if ok else 'missed'}: {env} {algo} at {g} gradient steps, "
                        + " <= ".join(f"{n} envs {at[n]:.0f}" for n in order))
    return verdicts


def return_at(curve: list[dict[str, Any]], grad_steps: int) -> float:
    """The eval return nearest `grad_steps`. Runs of equal length evaluate on grids that
    differ by a few percent; the last eval at or before it could be a tenth of a run early."""
    return min(curve, key=lambda p: abs(p["grad_steps"] - grad_steps))["return"]


def plot(rows: list[dict[str, Any]], device: torch.device, name: str) -> None:
    """One row of panels per env (sizes, solid CrossQ, dashed SAC), and one for the levers."""
    panels = [(env, [r for r in rows if r["env"] == env and r["part"] != "lever"])
              for env in sorted({r["env"] for r in rows if r["part"] != "lever"})]
    if any(r["part"] == "lever" for r in rows):
        panels.append((f"{TARGET['env']} levers", [r for r in rows if r["part"] == "lever"]))
    fig = Figure(figsize=(15, 4 * len(panels)))
    axes = fig.subplots(len(panels), 3, squeeze=False)
    sizes = sorted({r["num_envs"] for r in rows})
    levers = list(LEVERS)
    for row_axes, (title, group) in zip(axes, panels):
        first_seed = min((r["seed"] for r in group), default=0)
        for ax, x, label in zip(row_axes, ("grad_steps", "env_steps", "wall_s"),
                                ("gradient steps", "env steps", "wall-clock (s)")):
            for r in group:
                if not r["curve"]:
                    continue
                lever = r["part"] == "lever"
                color = f"C{levers.index(r['lever']) if lever else sizes.index(r['num_envs'])}"
                legend = r["lever"] if lever else f"{r['algo']} {r['num_envs']} envs"
                ax.plot([p[x] for p in r["curve"]], [p["return"] for p in r["curve"]],
                        color=color, ls="-" if r["algo"] == "crossq" else "--",
                        lw=2 if r["part"] == "target" else 1, alpha=0.8,
                        label=legend if r["seed"] == first_seed else None)
            ax.set_xlabel(label)
            ax.set_ylabel(f"{title} eval return")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
    fig.suptitle("--preset auto at each num_envs (solid CrossQ, dashed SAC; thick: the 128-env target run)")
    save_png(fig, name, device)


# --- plan -------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[tuple[Spec, float]]:
    specs: list[tuple[Spec, float]] = []
    if args.gpu:
        for env in args.envs:
            for n in args.num_envs:
                for algo in args.algos:
                    for seed in args.seeds:
                        specs.append((Spec("sweep", env, n, algo, seed, args.grad_steps, args.device), args.budget_s))
        return specs
    for lever in args.levers:
        specs += [(Spec("lever", TARGET["env"], TARGET["num_envs"], "crossq", seed, args.lever_grad_steps,
                        args.device, lever), args.target_budget_s) for seed in args.seeds]
    if args.target_grad_steps:
        specs += [(Spec("target", TARGET["env"], TARGET["num_envs"], "crossq", seed, args.target_grad_steps,
                        args.device), args.target_budget_s) for seed in args.seeds]
    for env in [] if args.no_sweep else args.envs:
        for algo in args.algos:
            for n in args.num_envs:
                specs += [(Spec("sweep", env, n, algo, seed, args.grad_steps, args.device), args.budget_s)
                          for seed in args.seeds]
    return specs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="the GPU sizes: ant and humanoid at 4,096 and 8,192 envs")
    p.add_argument("--envs", nargs="+")
    p.add_argument("--num-envs", type=int, nargs="+")
    p.add_argument("--algos", nargs="+", default=["crossq", "sac"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--grad-steps", type=int, help="gradient steps of each sweep run (CPU 1,000; GPU 20,000)")
    p.add_argument("--target-grad-steps", type=int, default=5000, help="of the halfcheetah-128 run (0: skip)")
    p.add_argument("--levers", nargs="*", default=[], choices=list(LEVERS),
                   help="changes to the rule to try on the target's env and size (run first)")
    p.add_argument("--lever-grad-steps", type=int, default=3000, help="of each --levers run")
    p.add_argument("--results", default="parallel_envs",
                   help="name of the JSON/PNG under benchmarks/results/ (one per part run apart)")
    p.add_argument("--no-sweep", action="store_true", help="run only the target and the levers")
    p.add_argument("--budget-s", type=float, default=600, help="wall-clock cap of one sweep run")
    p.add_argument("--target-budget-s", type=float, default=2400, help="wall-clock cap of one target run")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (CPU: one per core)")
    p.add_argument("--report", action="store_true",
                   help="run nothing: rebuild the JSON, plot and table from the planned runs that finished")
    args = p.parse_args(argv)
    args.device = "cuda" if args.gpu else "cpu"
    args.envs = args.envs or (["ant", "humanoid"] if args.gpu else ["halfcheetah", "ant"])
    args.num_envs = args.num_envs or ([4096, 8192] if args.gpu else [1, 16, 64, 256, 1024])
    args.grad_steps = args.grad_steps or (20_000 if args.gpu else 1000)
    if args.gpu:
        args.jobs = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    specs = plan(args)
    if args.report:
        specs = [(spec, budget) for spec, budget in specs if finished(spec)]
    rows: list[dict[str, Any]] = []
    meta = {"grad_steps": args.grad_steps, "target_grad_steps": args.target_grad_steps, "seeds": args.seeds,
            "jobs": args.jobs, "threads_per_run": 1 if args.device == "cpu" else None,
            "rule": configure.MANY_ENVS}

    def report() -> list[dict[str, Any]]:
        lines = summary(rows)
        write_json(args.results, device, rows, summary=lines, targets=targets(rows, lines), **meta)
        return lines

    with ThreadPoolExecutor(args.jobs) as pool:
        for result in pool.map(lambda sb: run(*sb), specs):
            rows.append(result)
            report()
    lines = report()
    if rows:
        plot(rows, device, args.results)
    print_table(lines, ["part", "env", "algo", "num_envs", "lever", "seeds", "batch", "grad_steps", "env_steps",
                        "final", "best", "wall_s", "sps", "ups"])
    print("\n".join(targets(rows, lines)))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
