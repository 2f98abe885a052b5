"""Environments behind one protocol (docs/design.md §3): Brax/MJX on the accelerator, Gymnasium on the CPU.

All JAX code of the project lives in this package, imported only when a Brax or Playground
env is made.
"""

from crossq_gpu.envs.base import AsyncVecEnv, UnknownEnvError, VecEnv, known_envs, make_env

__all__ = ["AsyncVecEnv", "UnknownEnvError", "VecEnv", "known_envs", "make_env"]
