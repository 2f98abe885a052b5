"""One training run: the loop env → buffer → update → metrics, its checkpoints and resume.

Everything that is the run's state (networks, BRN statistics, optimizers, log α, buffer,
env, counters, RNG, metric windows) is built in `Run` and saved by `Run.checkpoint`, which
is exactly what `--resume` restores.

Under `torchrun --nproc-per-node K` every rank runs this loop on its own envs and buffer
(`distributed.py`): env steps and --total-steps count all ranks' envs, rank 0 writes the
metrics, evaluations and the one checkpoint, which holds each rank's envs, RNG and buffer.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossq_gpu import distributed
from crossq_gpu.buffer import make_buffer
from crossq_gpu.capture import GraphedCall
from crossq_gpu.checkpoint import CheckpointError, save_checkpoint
from crossq_gpu.config import Config, ConfigError, to_dict
from crossq_gpu.distributed import Ranks
from crossq_gpu.envs import AsyncVecEnv, VecEnv, make_env
from crossq_gpu.evaluate import evaluate
from crossq_gpu.metrics import EpisodeReturns, MetricsWindow, MetricsWriter, progress_bar
from crossq_gpu.networks import Agent, build_agent
from crossq_gpu.policy import EnvSpec
from crossq_gpu.update import Update, set_matmul_precision


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN/Inf loss, a checkpoint that cannot be written); the message
    names the step and the last good checkpoint."""


@dataclass
class Counters:
    env_steps: int = 0
    vector_steps: int = 0
    wall_s: float = 0.0
    evals: int = 0


class Run:
    """One training run (one rank's part of it, under torchrun): builds every piece and owns the loop."""

    def __init__(self, cfg: Config, out_dir: Path, device: torch.device, ranks: Ranks = Ranks(),
                 env_maker: Callable[..., VecEnv] | None = None) -> None:
        """env_maker: make_env without the name (the user's own env object); default: by cfg.env.name."""
        self.cfg, self.out_dir, self.device, self.ranks = cfg, out_dir, device, ranks
        run = cfg.run
        torch.manual_seed(run.seed)
        set_matmul_precision(device)
        self.make_env = env_maker or functools.partial(make_env, cfg.env.name)
        self.env: VecEnv = self.make_env(cfg.env.num_envs, device, seed=run.seed + ranks.rank,
                                         backend=cfg.env.backend, episode_length=cfg.env.episode_length)
        self.discrete = self.env.num_actions is not None
        _check_action_pdtype(cfg, self.discrete)
        self.agent: Agent = build_agent(cfg, self.env.obs_dim, self.env.act_dim, self.env.num_actions).to(device)
        ranks.broadcast_(self.agent.state_dict().values())  # one set of weights, whatever each rank drew
        distributed.sync_batch_renorm(self.agent, ranks)
        if ranks.rank:  # each rank its own sampling and noise; rank 0 keeps a single process's stream
            torch.manual_seed(run.seed + ranks.rank)
        action_shape = () if self.discrete else (self.env.act_dim,)
        self.buffer = make_buffer(cfg.agent.memory, self.env.obs_dim, action_shape, cfg.env.num_envs, device,
                                  torch.int64 if self.discrete else torch.float32,
                                  n_step=cfg.agent.algorithm.n_step, gamma=cfg.agent.algorithm.gamma)
        self.update = Update(self.agent, self.buffer, cfg, device, ranks)
        self.window = MetricsWindow(device)
        self.returns = EpisodeReturns(cfg.env.num_envs, device)
        self.counters = Counters()
        self.obs = self.env.reset(seed=run.seed + ranks.rank)
        self.eval_env: VecEnv | None = None
        self.checkpoint_path = out_dir / "checkpoint.pt"
        self.last_checkpoint_step: int | None = None
        self._policy: GraphedCall | None = None

    # --- acting -------------------------------------------------------------------------

    def _random_action(self) -> torch.Tensor:
        n = self.cfg.env.num_envs
        if self.discrete:
            return torch.randint(self.env.num_actions, (n,), device=self.device)
        return torch.rand(n, self.env.act_dim, device=self.device) * 2.0 - 1.0

    def _act(self) -> torch.Tensor:
        if self.counters.env_steps < self.cfg.agent.algorithm.training_start_step:
            return self._random_action()
        if not (self.cfg.run.cuda_graphs and self.device.type == "cuda"):
            return self.agent.act(self.obs, deterministic=False)
        if self._policy is None:
            self._policy = GraphedCall(lambda obs: self.agent.act(obs, deterministic=False), state=[],
                                       static_inputs=(torch.zeros_like(self.obs),))
        # The graph's output is overwritten by the next replay; no copy here: the env makes its
        # own (Brax's clamp, Gymnasium's host copy) and the buffer copies it in before then.
        return self._policy(self.obs)

    # --- the loop -----------------------------------------------------------------------

    def train(self) -> bool:
        """Train to run.total_steps. Returns False if stopped early by Ctrl-C/SIGTERM.

        A stop request is honoured between steps, so the checkpoint it writes is
        consistent (never half an env step or half an update).
        """
        cfg, c, ranks = self.cfg, self.counters, self.ranks
        alg = cfg.agent.algorithm
        writer = MetricsWriter(self.out_dir, start_step=c.env_steps) if ranks.main else None
        if writer and writer.note:
            print(writer.note, flush=True)
        bar = progress_bar(cfg.run.total_steps, c.env_steps, show=ranks.main)
        last = (time.perf_counter(), c.env_steps, self.update.grad_steps)
        start_wall = time.perf_counter() - c.wall_s
        stop, stopped = [], False
        overlap = cfg.run.overlap and isinstance(self.env, AsyncVecEnv)
        handlers = {sig: signal.signal(sig, lambda *_: stop.append(True)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while c.env_steps < cfg.run.total_steps and not stopped:
                prev = c.env_steps
                action = self._act()
                due = (prev + cfg.env.num_envs * ranks.world >= alg.training_start_step
                       and (c.vector_steps + 1) % alg.training_frequency == 0)
                if overlap:  # the updates run while JAX steps, on the transitions stored so far
                    self.env.step_async(action)
                    self._updates(due)
                    next_obs, reward, terminated, truncated, info = self.env.step_wait()
                else:
                    next_obs, reward, terminated, truncated, info = self.env.step(action)
                self.buffer.add(self.obs, action, reward, info["final_obs"], terminated, truncated)
                self.returns.update(reward, terminated | truncated)
                self.obs = next_obs
                c.env_steps += cfg.env.num_envs * ranks.world
                c.vector_steps += 1
                if not overlap:
                    self._updates(due)
                c.wall_s = time.perf_counter() - start_wall
                bar.update(c.env_steps - prev)
                if _crossed(prev, c.env_steps, cfg.run.log_every):
                    last = self._log(writer, bar, last)
                if writer and cfg.run.eval_every and _crossed(prev, c.env_steps, cfg.run.eval_every):
                    self._evaluate(writer)
                if cfg.run.checkpoint_every and _crossed(prev, c.env_steps, cfg.run.checkpoint_every):
                    self.checkpoint()
                stopped = ranks.any(bool(stop))  # every rank stops after the same step
            if self.window.counts or c.env_steps % cfg.run.log_every:
                self._log(writer, bar, last)
            self.checkpoint()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            bar.close()
            if writer:
                writer.close()
        if stopped and ranks.main:
            print(f"\nstopped at env step {c.env_steps}; checkpoint written to {self.checkpoint_path}",
                  file=sys.stderr)
        return not stopped

    def _updates(self, due: bool) -> None:
        if due:
            for _ in range(self.cfg.agent.algorithm.training_iter):
                self.window.add(self.update.step(), self.update.grad_steps)

    def _log(self, writer: MetricsWriter | None, bar: Any, last: tuple[float, int, int]) -> tuple[float, int, int]:
        """Every rank reduces its window (a collective); rank 0 writes the row."""
        self._check_finite()
        c, now = self.counters, time.perf_counter()
        t0, steps0, grads0 = last
        elapsed = max(now - t0, 1e-9)
        means = self.window.read(self.ranks.all_sum)
        row = {"kind": "train", "env_steps": c.env_steps, "grad_steps": self.update.grad_steps,
               "wall_s": round(c.wall_s, 3), "sps": (c.env_steps - steps0) / elapsed,
               "ups": (self.update.grad_steps - grads0) / elapsed,
               "return_mean": self.returns.read(self.ranks.all_sum), **means}
        if writer is None:
            return now, c.env_steps, self.update.grad_steps
        writer.write(row)
        ret = row["return_mean"]
        bar.set_postfix(sps=f"{row['sps']:.0f}", ups=f"{row['ups']:.0f}",
                        ret="-" if ret is None else f"{ret:.1f}", refresh=False)
        return now, c.env_steps, self.update.grad_steps

    def _evaluate(self, writer: MetricsWriter) -> None:
        cfg, c = self.cfg, self.counters
        if self.eval_env is None:
            self.eval_env = self.make_env(cfg.run.eval_episodes, self.device, seed=cfg.run.seed + 1,
                                          backend=cfg.env.backend, episode_length=cfg.env.episode_length)
        c.evals += 1
        if self.device.type == "cuda":  # JAX may reuse buffers that torch has only queued reads of
            torch.cuda.current_stream(self.device).synchronize()
        mean, std, episodes = evaluate(self.agent, self.eval_env, seed=cfg.run.seed + 1000 * c.evals)
        writer.write({"kind": "eval", "env_steps": c.env_steps, "wall_s": round(c.wall_s, 3),
                      "return_mean": mean, "return_std": std, "episodes": episodes})

    def _check_finite(self) -> None:
        """Raise TrainingError on every rank if any rank saw a NaN/Inf loss."""
        local = self.window.nonfinite_step()
        step = self.ranks.min(sys.maxsize if local is None else local)
        if step != sys.maxsize:
            raise TrainingError(f"NaN/Inf loss at gradient step {step} (before env step "
                                f"{self.counters.env_steps}); training stopped; {self._last_good()}")

    def _last_good(self) -> str:
        if self.last_checkpoint_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {self.checkpoint_path} (env step {self.last_checkpoint_step})"

    # --- checkpoints --------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Save everything needed to continue exactly; never over a good one with NaNs.

        The weights and optimizers are the same on every rank; the envs, RNG, metric windows
        and buffer are each rank's own, gathered into `ranks` so that one file holds the run.
        """
        self._check_finite()
        local = {
            "obs": self.obs,
            "env": self.env.state_dict(),
            "returns": self.returns.state_dict(),
            "window": self.window.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
        }
        if self.cfg.run.save_buffer:
            local["buffer"] = self.buffer.state_dict()
        every_rank = self.ranks.gather(local)
        failed = None
        if self.ranks.main:
            try:
                save_checkpoint({"config": to_dict(self.cfg), "env_spec": EnvSpec.of(self.env).to_dict(),
                                 "agent": self.agent.state_dict(),
                                 "update": self.update.state_dict(), "counters": vars(self.counters).copy(),
                                 "world_size": self.ranks.world, "ranks": every_rank}, self.checkpoint_path)
            except OSError as exc:  # a full disk, a lost permission: the previous file is intact
                failed = (f"cannot write the checkpoint at env step {self.counters.env_steps} "
                          f"({exc.strerror or exc}); training stopped; {self._last_good()}")
        if self.ranks.any(failed is not None):  # every rank stops together
            raise TrainingError(failed or "rank 0 could not write the checkpoint")
        self.last_checkpoint_step = self.counters.env_steps

    def restore(self, payload: dict[str, Any]) -> None:
        written_by = payload.get("world_size")
        if written_by != self.ranks.world:
            raise CheckpointError(f"the checkpoint was written by {written_by} process(es) and this run has "
                                  f"{self.ranks.world}: resume with the same torchrun --nproc-per-node")
        try:
            local = payload["ranks"][self.ranks.rank]
            self.agent.load_state_dict(payload["agent"])
            self.update.load_state_dict(payload["update"])
            self.counters = Counters(**payload["counters"])
            self.obs = local["obs"].to(self.device)
            self.env.load_state_dict(local["env"])
            self.returns.load_state_dict(local["returns"])
            self.window.load_state_dict(local["window"])
            if "buffer" in local:
                self.buffer.load_state_dict(local["buffer"])
            torch.set_rng_state(local["rng"]["torch"])
            if local["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(local["rng"]["cuda"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not match this run ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]})") from None
        if "buffer" not in local and self.counters.env_steps > 0 and self.ranks.main:
            print("note: the checkpoint holds no replay buffer (--save-buffer); it refills from now on",
                  file=sys.stderr)
        step = self.counters.env_steps
        lowest, highest = self.ranks.min(step), -self.ranks.min(-step)
        if lowest != highest:
            raise CheckpointError(f"the ranks read checkpoints of env steps {lowest} to {highest}: "
                                  "every rank must resume from the same checkpoint.pt")
        self.last_checkpoint_step = step


def _check_action_pdtype(cfg: Config, discrete: bool) -> None:
    """The action distribution is the env's to decide; a configured one must agree with it."""
    chosen, derived = cfg.agent.algorithm.action_pdtype, "Categorical" if discrete else "Normal"
    if chosen not in ("auto", derived):
        raise ConfigError(f"agent.algorithm.action_pdtype={chosen}, but env {cfg.env.name} has "
                          f"{'discrete' if discrete else 'continuous'} actions ({derived}); leave it auto")


def _crossed(before: int, after: int, every: int) -> bool:
    return after // every > before // every
