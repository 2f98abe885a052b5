"""One Stable-Baselines3 run writing our learner's eval rows, for `time_to_return --compare`.

    python -m benchmarks.sb3_runner --algo sac|crossq --env Pendulum-v1 --steps 8000 --seed 0 --out DIR

SB3 SAC with the library's defaults, sb3-contrib CrossQ with its defaults but 256×256
critics (our `cpu` preset's width; its default is 2048×2048); both on the CPU with one torch
thread, `learning_starts` random steps like our `training_start_step`. Every `eval_every`
env steps: deterministic returns of `eval_episodes` episodes on a separate env, written to
DIR/metrics.jsonl as `{"kind": "eval", env_steps, wall_s, return_mean, return_std,
episodes}` (wall_s from the start of learning, evaluation time included, as in the learner).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy


class EvalRows(BaseCallback):
    """Deterministic evaluation every `every` env steps, appended to metrics.jsonl."""

    def __init__(self, env_id: str, every: int, episodes: int, seed: int, path: Path) -> None:
        super().__init__()
        self.eval_env = gym.make(env_id)
        self.eval_env.reset(seed=seed + 1)
        self.every, self.episodes, self.file = every, episodes, path.open("w")
        self.start = time.perf_counter()

    def _write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            returns, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.episodes,
                                         deterministic=True, return_episode_rewards=True)
            self._write({"kind": "eval", "env_steps": self.num_timesteps,
                         "wall_s": round(time.perf_counter() - self.start, 3),
                         "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                         "episodes": self.episodes})
        elif self.num_timesteps % 500 == 0:  # lets the benchmark see the clock between evals
            self._write({"kind": "train", "env_steps": self.num_timesteps,
                         "wall_s": round(time.perf_counter() - self.start, 3)})
        return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=["sac", "crossq"], required=True)
    p.add_argument("--env", required=True, help="Gymnasium id, e.g. Pendulum-v1")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"learning_starts": args.learning_starts, "seed": args.seed, "device": "cpu"}
    if args.algo == "sac":
        model = SAC("MlpPolicy", args.env, **common)
    else:
        from sb3_contrib import CrossQ

        model = CrossQ("MlpPolicy", args.env, policy_kwargs={"net_arch": {"pi": [256, 256], "qf": [256, 256]}},
                       **common)
    callback = EvalRows(args.env, args.eval_every, args.eval_episodes, args.seed, args.out / "metrics.jsonl")
    model.learn(total_timesteps=args.steps, callback=callback)


if __name__ == "__main__":
    main()
