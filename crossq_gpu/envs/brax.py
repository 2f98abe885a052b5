"""Brax envs (and any env with Brax's reset(key) / step(state, action) interface) as a VecEnv.

Our own jitted, vmapped reset/step around the raw env: an episode-step counter for the time
limit (truncation, kept apart from the env's own `done` = termination) and an auto-reset that
returns the true final observation, both with jnp.where so the step is one XLA program.
Finished episodes restart from a pool of reset states that is renewed a little every step,
as Brax's AutoResetWrapper restarts from stored states, rather than resetting every env.
Tensors cross between JAX and torch through DLPack without a copy.

Stream order on CUDA, without a host sync: the DLPack handshake orders the streams both ways.
jax.dlpack.from_dlpack(action) passes JAX's stream to torch's __dlpack__, which records an
event on torch's current stream and makes JAX's stream wait on it, so JAX never reads an action
torch is still writing; torch.from_dlpack(output) makes torch's stream wait for JAX's output,
so by the time step() returns, torch's stream is ordered after the whole JAX step, including
its read of the action. The action handed over is a fresh tensor (the clamp in step()), so an
in-place write or a CUDA-graph replay into the caller's tensor cannot change what JAX reads.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import io
import os
import pkgutil
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from crossq_gpu.envs.base import unknown_env

if TYPE_CHECKING:
    import jax

BACKENDS = ("generalized", "mjx", "spring", "positional")
DEFAULT_EPISODE_LENGTH = 1000
# Brax's own test stub (host callbacks counting calls), not a task.
_NOT_TASKS = {"fast"}


# XLA's CPU runtime in jaxlib 0.10 can hang in the first batched reset of a large env (ant at
# 512 envs or more): every XLA thread waits for work and the caller for a result that never
# comes. With YNNPACK fusions (the default) 6 of 6 tries hung; with them off, 4 of 13; with them
# and the concurrency-optimised scheduler off in XLA_FLAGS, none of 21. XLA reads
# these flags from XLA_FLAGS when JAX starts its first backend, so they are set before that.
# Both are known to every jaxlib that pyproject allows (0.10.2 up to 0.13, where XLA aborts on an
# unknown flag: check them before raising that cap).
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",
                 "--xla_cpu_enable_concurrency_optimized_scheduler=false")


def jax_has_gpu_plugin() -> bool:
    """Whether a JAX CUDA or ROCm plugin is installed, found without starting JAX."""
    try:
        import jax_plugins
    except ImportError:
        return False
    return any(m.name.startswith(("xla_cuda", "xla_rocm")) for m in pkgutil.iter_modules(jax_plugins.__path__))


def set_cpu_xla_flags() -> None:
    """Put CPU_XLA_FLAGS at the front of XLA_FLAGS where JAX will step the envs on the CPU
    (JAX_PLATFORMS=cpu, or no GPU plugin) and has not started a backend yet; a flag the user set
    is left as it is. If JAX started before, the flags cannot take effect any more: say so once."""
    if os.environ.get("JAX_PLATFORMS", "").strip() != "cpu" and jax_has_gpu_plugin():
        return
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
    if not missing:
        return
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            warnings.warn("JAX started before crossq_gpu could set XLA_FLAGS: a batched reset of a large env "
                          "on the CPU may hang. Start the process with XLA_FLAGS='" + " ".join(CPU_XLA_FLAGS)
                          + "' to avoid it.", RuntimeWarning, stacklevel=3)
            return
    # First: XLA stops reading XLA_FLAGS at the first token that is not a flag, and drops the rest.
    os.environ["XLA_FLAGS"] = " ".join([*missing, flags]).strip()


def set_offscreen_gl() -> None:
    """MUJOCO_GL=egl where there is no display, the user chose nothing and libEGL is installed:
    MuJoCo reads it once, when first imported, and without it cannot render off a display.
    Where EGL is missing it is left unset, since an EGL backend without the library breaks
    MuJoCo's import itself."""
    if os.environ.get("DISPLAY") or "MUJOCO_GL" in os.environ or ctypes.util.find_library("EGL") is None:
        return
    os.environ["MUJOCO_GL"] = "egl"


@cache
def jax_module() -> Any:
    """Import and configure JAX once: CPU flags, no pre-allocation, explicit precision, persistent cache.

    The CPU flags (CPU_XLA_FLAGS) and XLA_PYTHON_CLIENT_PREALLOCATE must be set before JAX
    starts a backend; without the latter JAX takes 75 % of the GPU that torch also needs.
    Matmul precision "highest" (full float32: physics under TF32 drifts) unless
    JAX_DEFAULT_MATMUL_PRECISION says otherwise. The compile cache lives in
    $CROSSQ_GPU_JAX_CACHE (empty string: off), default ~/.cache/crossq_gpu/jax.
    """
    set_cpu_xla_flags()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if "JAX_DEFAULT_MATMUL_PRECISION" not in os.environ:
        jax.config.update("jax_default_matmul_precision", "highest")
    cache_dir = os.environ.get("CROSSQ_GPU_JAX_CACHE",
                               str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                   / "crossq_gpu" / "jax"))
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return jax


# What importing Brax prints or warns that says nothing to a user of this project: MJX's
# optional Warp backend is absent on purpose, and Brax's notice about its maintenance.
_IMPORT_NOISE = ("Failed to import warp", "Failed to import mujoco_warp")
_BRAX_NOTICE = "Brax System, piplines and environments are not actively being maintained"


@cache
def brax_envs() -> Any:
    """`brax.envs`, imported once with its import-time noise kept out of the terminal."""
    jax_module()
    warnings.filterwarnings("ignore", message=_BRAX_NOTICE, category=UserWarning)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        from brax import envs
    for line in printed.getvalue().splitlines():  # anything else it printed still shows
        if line.strip() and not line.startswith(_IMPORT_NOISE):
            print(line)
    return envs


def brax_env_names() -> list[str]:
    return sorted(n for n in brax_envs()._envs if n not in _NOT_TASKS)


def jax_to_torch(x: jax.Array, device: torch.device) -> torch.Tensor:
    """Zero-copy when JAX and torch share the device; a copy only when JAX fell back to the CPU."""
    t = torch.from_dlpack(x)
    return t if t.device == device else t.to(device)


def torch_to_jax(t: torch.Tensor) -> jax.Array:
    """Zero-copy (a contiguous tensor stays where it is; see the module note on streams)."""
    return jax_module().dlpack.from_dlpack(t.contiguous())


_warned_no_gpu = False


def jax_device_for(device: torch.device) -> jax.Device:
    """JAX's device matching torch's; the CPU, with one loud warning, when JAX has no GPU."""
    global _warned_no_gpu
    jax = jax_module()
    if device.type != "cuda":
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("cuda")
    except RuntimeError:
        gpus = []
    if gpus:
        return gpus[device.index if device.index is not None else torch.cuda.current_device()]
    if not _warned_no_gpu:
        _warned_no_gpu = True
        warnings.warn("torch is on CUDA but JAX has no GPU backend (jax.devices() = "
                      f"{jax.devices()}): Brax will step on the CPU and copy every step to the GPU, "
                      "orders of magnitude slower. Install the JAX CUDA plugin matching jax "
                      f"{jax.__version__}: pip install 'crossq-gpu[gpu]'", RuntimeWarning, stacklevel=3)
    return jax.devices("cpu")[0]


class Carry(NamedTuple):
    """Everything the batched env carries between steps (leaves [N, ...] but pool, slot and key)."""

    state: Any  # the raw env's State, batched
    steps: jax.Array  # [N] int32, steps into the current episode
    pool: Any  # [P] fresh reset States that finished episodes restart from
    slot: jax.Array  # int32, the next pool entry to refresh
    key: jax.Array  # PRNG key for pool draws and refreshes


def reset_pool_sizes(num_envs: int) -> tuple[int, int]:
    """(pool size, pool entries refreshed per step): a pool as large as the batch, renewed
    over 64 steps, so the start states stay as varied as fresh resets at 1/64 of their cost."""
    return num_envs, -(-num_envs // 64)


class JaxVecEnv:
    """`num_envs` copies of a raw JAX env, stepped by one jitted program per call.

    `env` needs reset(key) -> State and step(State, action) -> State, State having obs [obs_dim],
    reward and done (float, 1 = terminated), plus observation_size and action_size.
    `ctrl_range` [act_dim, 2]: the bounds [-1, 1] is scaled onto.
    """

    def __init__(self, env: Any, num_envs: int, device: torch.device, seed: int, episode_length: int,
                 ctrl_range: np.ndarray, name: str) -> None:
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        jax = jax_module()
        self.name = name
        self.env = env
        self.num_envs = num_envs
        self.obs_dim = int(env.observation_size)
        self.act_dim: int | None = int(env.action_size)
        self.num_actions: int | None = None
        self.max_episode_steps: int | None = episode_length
        self.action_low, self.action_high = ctrl_range[:, 0], ctrl_range[:, 1]
        self.device = torch.device(device)
        self.seed = seed
        self.jax_device = jax_device_for(self.device)
        # Where actions must be for JAX: the CPU when JAX has no GPU (a copy, warned about).
        self._action_device = torch.device("cpu") if self.jax_device.platform == "cpu" else self.device
        self._carry: Carry | None = None
        self._view: tuple[Any, Any, int] | None = None  # render(): MuJoCo's renderer, its data, the camera
        self._pending: tuple[jax.Array, ...] | None = None
        self._action: torch.Tensor | None = None
        self._reset = jax.jit(_batched_reset(env, num_envs))
        self._step = jax.jit(_batched_step(env, num_envs, episode_length, ctrl_range))

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """PRNGKey(seed) split once per env: the same seed gives the same trajectories."""
        jax = jax_module()
        key = jax.device_put(jax.random.PRNGKey(self.seed if seed is None else seed), self.jax_device)
        self._carry, obs = self._reset(key)
        self._pending = self._action = None
        return jax_to_torch(obs, self.device)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor, dict[str, torch.Tensor]]:
        self.step_async(action)
        return self.step_wait()

    def step_async(self, action: torch.Tensor) -> None:
        """Dispatch the step and return before it ran, so torch work queued next overlaps it."""
        if self._carry is None:
            raise RuntimeError("call reset() before step()")
        if self._pending is not None:
            raise RuntimeError("step_async() twice without step_wait()")
        # clamp: the [-1, 1] contract, float32 (fixed dtype: no recompile) and a fresh tensor,
        # kept alive until step_wait() so its memory is not reused while JAX may still read it.
        self._action = torch.clamp(action.detach().to(self._action_device, torch.float32), -1.0, 1.0)
        self._carry, self._pending = self._step(self._carry, torch_to_jax(self._action))

    def step_wait(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The dispatched step's results; torch's stream is ordered after it from here on."""
        if self._pending is None:
            raise RuntimeError("step_wait() without step_async()")
        (obs, reward, terminated, truncated, final_obs), self._pending = self._pending, None
        d = self.device
        out = (jax_to_torch(obs, d), jax_to_torch(reward, d), jax_to_torch(terminated, d),
               jax_to_torch(truncated, d), {"final_obs": jax_to_torch(final_obs, d)})
        self._action = None
        return out

    def state_dict(self) -> dict[str, Any]:
        """The whole carry (physics states, step counters, key) as CPU tensors: exact resume."""
        if self._carry is None:
            raise RuntimeError("call reset() before state_dict()")
        jax = jax_module()
        leaves = [np.asarray(x) for x in jax.tree.leaves(self._carry)]
        return {"name": self.name, "num_envs": self.num_envs,
                "leaves": [torch.from_numpy(x.astype(np.int64) if x.dtype == np.uint32 else x.copy())
                           for x in leaves]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Needs a reset() first, which fixes the tree structure and dtypes to load into."""
        if self._carry is None:
            raise RuntimeError("call reset() before load_state_dict()")
        if state["name"] != self.name or state["num_envs"] != self.num_envs:
            raise ValueError(f"env state is for {state['num_envs']} x {state['name']}, "
                             f"not {self.num_envs} x {self.name}")
        jax = jax_module()
        template, treedef = jax.tree.flatten(self._carry)
        if [tuple(x.shape) for x in template] != [tuple(t.shape) for t in state["leaves"]]:
            raise ValueError(f"env state does not match the state layout of {self.name} "
                             "(another backend or env version?)")
        self._carry = jax.tree.unflatten(treedef, [
            jax.device_put(np.asarray(t.numpy(), dtype=x.dtype), self.jax_device)
            for x, t in zip(template, state["leaves"], strict=True)])

    @property
    def render_fps(self) -> int:
        """Frames per second of a video at the env's own speed (one frame per control step)."""
        return max(1, round(1.0 / float(self.env.dt)))

    def render(self) -> np.ndarray:
        """Env 0's current frame [240, 320, 3] uint8 (Brax's default size), drawn by MuJoCo's
        renderer through the model's `track` camera where it has one (Brax's locomotion envs
        do), else the free one.

        Without a display MuJoCo needs an offscreen GL chosen before it is imported:
        MUJOCO_GL=egl (or osmesa); `python -m crossq_gpu.evaluate --video` sets egl itself
        (set_offscreen_gl).
        """
        if self._carry is None:
            raise RuntimeError("call reset() before render()")
        import mujoco

        model = getattr(self.env, "mj_model", None) or getattr(getattr(self.env, "sys", None), "mj_model", None)
        if model is None:
            raise ValueError(f"{self.name} has no MuJoCo model to render")
        if self._view is None:
            # Mesa's software EGL loads its own LLVM, and loading Triton's after it crashes the
            # process (seen with Mesa's llvmpipe): so Triton, which the networks need, goes first.
            with contextlib.suppress(ImportError):
                import triton  # noqa: F401
            try:
                renderer = mujoco.Renderer(model, 240, 320)
            except (mujoco.FatalError, ImportError, RuntimeError) as exc:  # no context, no backend, no EGL device
                raise ValueError(f"MuJoCo could not open a GL context ({exc}); on a machine without a display, "
                                 "start the process with MUJOCO_GL=egl (or osmesa)") from None
            self._view = (renderer, mujoco.MjData(model), mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track"))
        renderer, data, camera = self._view
        state = self._carry.state
        physics = state.pipeline_state if hasattr(state, "pipeline_state") else state.data  # Brax | Playground
        first = jax_module().tree.map(lambda x: np.asarray(x[0]), physics)
        data.qpos, data.qvel = (first.qpos, first.qvel) if hasattr(first, "qpos") else (first.q, first.qd)
        mujoco.mj_forward(model, data)
        renderer.update_scene(data, camera=camera)  # -1: the free camera
        return renderer.render()

    def close(self) -> None:
        self._carry = None
        if self._view is not None:
            self._view[0].close()
            self._view = None


def _strong(tree: Any) -> Any:
    """Drop weak types: Brax's step returns weakly typed scalars where reset returned strong
    ones, and a carry whose types change between calls recompiles the step."""
    jax = jax_module()
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)


def _batched_reset(env: Any, num_envs: int) -> Any:
    jax = jax_module()
    jnp = jax.numpy

    pool_size, _ = reset_pool_sizes(num_envs)

    def reset(key: jax.Array) -> tuple[Carry, jax.Array]:
        key, sub, sub_pool = jax.random.split(key, 3)
        state = _strong(jax.vmap(env.reset)(jax.random.split(sub, num_envs)))
        pool = _strong(jax.vmap(env.reset)(jax.random.split(sub_pool, pool_size)))
        return Carry(state, jnp.zeros(num_envs, jnp.int32), pool, jnp.zeros((), jnp.int32), key), state.obs

    return reset


def _batched_step(env: Any, num_envs: int, episode_length: int, ctrl_range: np.ndarray) -> Any:
    jax = jax_module()
    jnp = jax.numpy
    low = jnp.asarray(ctrl_range[:, 0], jnp.float32)
    span = jnp.asarray(ctrl_range[:, 1] - ctrl_range[:, 0], jnp.float32)

    pool_size, refresh = reset_pool_sizes(num_envs)

    def step(carry: Carry, action: jax.Array) -> tuple[Carry, tuple[jax.Array, ...]]:
        state = _strong(jax.vmap(env.step)(carry.state, low + (action + 1.0) * 0.5 * span))
        steps = carry.steps + 1
        terminated = state.done > 0.5
        truncated = (steps >= episode_length) & ~terminated
        done = terminated | truncated
        # Finished episodes restart from a random pool entry, not from a reset of every env:
        # a reset costs about a physics step, and few envs finish on any one step.
        key, draw, renew = jax.random.split(carry.key, 3)
        picked = jax.random.randint(draw, (num_envs,), 0, pool_size)
        fresh = jax.tree.map(lambda p: p[picked], carry.pool)

        def pick(new: jax.Array, old: jax.Array) -> jax.Array:
            return jnp.where(done.reshape((num_envs,) + (1,) * (old.ndim - 1)), new.astype(old.dtype), old)

        nxt = jax.tree.map(pick, fresh, state)
        # Renew `refresh` pool entries per step, round robin, so no start state is reused for long.
        slots = (carry.slot + jnp.arange(refresh, dtype=jnp.int32)) % pool_size
        renewed = _strong(jax.vmap(env.reset)(jax.random.split(renew, refresh)))
        pool = jax.tree.map(lambda p, n: p.at[slots].set(n.astype(p.dtype)), carry.pool, renewed)
        out = (nxt.obs, state.reward.astype(jnp.float32), terminated, truncated, state.obs)
        slot = (carry.slot + refresh) % pool_size
        return Carry(nxt, jnp.where(done, 0, steps), pool, slot, key), out

    return step


def make_brax_env(name: str, num_envs: int, device: torch.device, seed: int = 0,
                  backend: str = "generalized", episode_length: int = DEFAULT_EPISODE_LENGTH,
                  **env_kwargs: Any) -> JaxVecEnv:
    """A Brax env by registry name; env_kwargs go to brax.envs.get_environment."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown Brax backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if name not in brax_env_names():
        raise unknown_env(name)
    env = brax_envs().get_environment(name, backend=backend, **env_kwargs)
    return JaxVecEnv(env, num_envs, device, seed, episode_length, ctrl_range_of(env.sys), name)


def ctrl_range_of(model: Any) -> np.ndarray:
    """[act_dim, 2] actuator bounds from an MJX/Brax model; [-1, 1] where not limited."""
    ranges = np.array(model.actuator_ctrlrange, dtype=np.float64).reshape(-1, 2)
    limited = np.asarray(model.actuator_ctrllimited, dtype=bool).reshape(-1)
    ranges[~limited] = (-1.0, 1.0)
    return ranges
