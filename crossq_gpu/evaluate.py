"""Deterministic evaluation, and `python -m crossq_gpu.evaluate DIR|checkpoint.pt`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Protocol

import torch

from crossq_gpu.checkpoint import CheckpointError
from crossq_gpu.config import ConfigError, from_dict
from crossq_gpu.envs import VecEnv, make_env
from crossq_gpu.envs.brax import set_offscreen_gl
from crossq_gpu.networks import Agent, build_agent
from crossq_gpu.policy import load_policy


class Actor(Protocol):
    """An Agent or a loaded Policy: actions as VecEnv.step takes them."""

    def act(self, obs: torch.Tensor, deterministic: bool = ...) -> torch.Tensor: ...


def _check_time_limit(env: VecEnv, steps: int) -> None:
    """An episode still running `steps` steps in, at or past the env's own `max_episode_steps`:
    an env that breaks its time limit would keep an evaluation looping forever."""
    limit = env.max_episode_steps
    if limit is not None and steps >= limit:
        raise ValueError(f"{type(env).__name__}: an episode is still running after {steps} steps, but the env's "
                         f"max_episode_steps is {limit}: step() must return truncated=True at its time limit")


@torch.no_grad()
def evaluate(agent: Actor, env: VecEnv, seed: int) -> tuple[float, float, int]:
    """Mean and std of the return of the first episode of each of env's num_envs envs."""
    obs = env.reset(seed=seed)
    returns = torch.zeros(env.num_envs, device=env.device)
    running = torch.ones(env.num_envs, dtype=torch.bool, device=env.device)
    steps = 0
    while bool(running.any()):  # evaluation is not the hot loop: one sync per step is fine
        _check_time_limit(env, steps)
        obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
        steps += 1
        returns += reward * running
        running &= ~(terminated | truncated)
    std = returns.std(unbiased=False) if env.num_envs > 1 else torch.zeros(())
    return float(returns.mean()), float(std), env.num_envs


def record_video(agent: Actor, env: VecEnv, seed: int, path: Path) -> None:
    """One deterministic episode of a one-env `env` with a render() (Gymnasium with
    render_mode="rgb_array", Brax, Playground) to a video file: the start and every step up to
    the episode's end; the auto-reset state that follows it is left out."""
    import imageio.v2 as imageio

    obs = env.reset(seed=seed)
    frames = [env.render()]
    while True:
        _check_time_limit(env, len(frames) - 1)
        obs, _, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
        if bool((terminated | truncated).any()):
            break
        frames.append(env.render())
    imageio.mimsave(path, frames, fps=env.render_fps)


def load_agent(payload: dict, env: VecEnv) -> Agent:
    """The whole Agent of a checkpoint payload, critics too (load_policy gives the actor alone)."""
    cfg = from_dict(payload["config"])
    agent = build_agent(cfg, env.obs_dim, env.act_dim, env.num_actions).to(env.device)
    agent.load_state_dict(payload["agent"])
    return agent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossq_gpu.evaluate",
                                description="Run the deterministic policy of a checkpoint.")
    p.add_argument("checkpoint", help="run folder or checkpoint.pt")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--video", metavar="FILE", help="also record one episode, e.g. out.mp4 (without a display, "
                   "MuJoCo draws offscreen through EGL where it is installed, unless MUJOCO_GL says otherwise)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error("--episodes must be >= 1")
    if args.video:
        set_offscreen_gl()  # before anything imports MuJoCo
    try:
        policy = load_policy(args.checkpoint, args.device)
        cfg = policy.config
        env = make_env(cfg.env.name, args.episodes, torch.device(args.device), seed=args.seed,
                       backend=cfg.env.backend, episode_length=cfg.env.episode_length)
        mean, std, episodes = evaluate(policy, env, seed=args.seed)
        if args.video:
            gym = {"render_mode": "rgb_array"} if cfg.env.name.startswith("gym:") else {}
            video_env = make_env(cfg.env.name, 1, torch.device(args.device), seed=args.seed,
                                 backend=cfg.env.backend, episode_length=cfg.env.episode_length, **gym)
            record_video(policy, video_env, args.seed, Path(args.video))
    except (CheckpointError, ConfigError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"return_mean": mean, "return_std": std, "episodes": episodes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
