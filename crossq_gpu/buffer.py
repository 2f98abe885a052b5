"""Device-resident replay buffers: uniform `ReplayBuffer`, proportional `PrioritizedReplay`.

Storage is preallocated once; the write pointer, the fill level and (for PER) the sum tree,
max priority and β counter are device tensors. `add`, `sample` and `update_priorities` only
launch kernels — no `.item()`, no Python branch on a tensor value, no data-dependent shapes —
so they run inside `torch.compile(fullgraph=True)` and CUDA-graph capture, and sampling
draws from the default torch generator (reproducible with `torch.manual_seed`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import psutil
import torch
from torch import Tensor

from crossq_gpu.config import MemoryConfig

# Fraction of the free memory a buffer may claim: the networks, the env and the allocator need the rest.
_MEMORY_HEADROOM = 0.9
# Upper bound of the raw integer draw reduced modulo `size`; the modulo bias is size / 2**62.
_RAND_HIGH = 2**62


class BufferTooLarge(ValueError):
    """The requested `memory.max_size` does not fit in free device memory (host RAM on CPU)."""


class Batch(NamedTuple):
    """One sampled minibatch. A NamedTuple so that it passes through `torch.compile` as a pytree."""

    obs: Tensor  # [B, obs_dim] float32
    action: Tensor  # [B, *action_shape] (float32 continuous, int64 discrete)
    reward: Tensor  # [B] float32
    next_obs: Tensor  # [B, obs_dim] float32
    terminated: Tensor  # [B] float32; 1.0 only for true terminals, never truncations
    weights: Tensor | None  # [B] importance weights (PrioritizedReplay) or None (uniform)
    indices: Tensor  # [B] int64 slots sampled, handed back to `update_priorities`
    discount: Tensor | None = None  # [B] γ^m of an m-step return's bootstrap; None: one step, γ


def free_memory_bytes(device: torch.device) -> int:
    """Bytes a new allocation on `device` can use: free CUDA memory plus this process's cached
    but unused blocks, or available host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return psutil.virtual_memory().available


class ReplayBuffer:
    """Uniform ring buffer over `max_size` transitions, counted over all envs.

    A vector step of `num_envs` transitions goes to slots `(pos + arange(num_envs)) % max_size`
    in one indexed write per field, so once full the newest `max_size` transitions are kept.
    So an env's next transition after slot s is always in slot `(s + num_envs) % max_size`
    (whether or not num_envs divides max_size), and once it is written it outlives s.

    With `n_step` > 1, `sample` turns the one-step transitions into n-step ones as it draws
    them: rewards summed with discount `gamma` along the sampled transition's own env, up to
    `n_step` steps, stopping where the episode ended (terminated or truncated) and where
    nothing newer is stored yet; the bootstrap is the last step's `next_obs`, discounted by
    γ^m for the m steps taken. Computing this at sampling time keeps the storage one-step,
    so `n_step` needs only one more flag per transition.
    """

    def __init__(
        self,
        obs_dim: int,
        action_shape: tuple[int, ...],
        max_size: int,
        num_envs: int,
        device: torch.device | str,
        action_dtype: torch.dtype = torch.float32,
        *,
        n_step: int = 1,
        gamma: float = 1.0,
    ) -> None:
        if n_step < 1:
            raise ValueError(f"n_step={n_step} must be >= 1")
        if num_envs < 1 or max_size < num_envs:
            raise ValueError(
                f"memory.max_size={max_size} must be at least num_envs={num_envs}: "
                "one vector step is written at once"
            )
        self.device = torch.device(device)
        self.max_size = max_size
        self.num_envs = num_envs
        self.n_step, self.gamma = n_step, gamma
        self._check_fits(obs_dim, tuple(action_shape), action_dtype)
        self.obs = torch.zeros(max_size, obs_dim, device=self.device)
        self.action = torch.zeros(max_size, *action_shape, dtype=action_dtype, device=self.device)
        self.reward = torch.zeros(max_size, device=self.device)
        self.next_obs = torch.zeros(max_size, obs_dim, device=self.device)
        self.terminated = torch.zeros(max_size, device=self.device)
        # n-step only: the episode ended here (terminated or truncated), where a return must stop.
        self.ended = torch.zeros(max_size, dtype=torch.bool, device=self.device) if n_step > 1 else None
        self.pos = torch.zeros((), dtype=torch.int64, device=self.device)
        self.size = torch.zeros((), dtype=torch.int64, device=self.device)
        self._env_offsets = torch.arange(num_envs, device=self.device)

    @classmethod
    def nbytes(
        cls, obs_dim: int, action_shape: tuple[int, ...], max_size: int, action_dtype: torch.dtype = torch.float32,
        n_step: int = 1,
    ) -> int:
        """Bytes the storage of a `max_size` buffer takes (pure: allocates nothing)."""
        action_bytes = math.prod(action_shape) * torch.empty((), dtype=action_dtype).element_size()
        # obs + next_obs (float32), action, reward + terminated (float32), n-step's ended flag (bool)
        return max_size * (2 * obs_dim * 4 + action_bytes + 2 * 4 + (n_step > 1))

    def _check_fits(self, obs_dim: int, action_shape: tuple[int, ...], action_dtype: torch.dtype) -> None:
        def needs(size: int) -> int:
            return self.nbytes(obs_dim, action_shape, size, action_dtype, self.n_step)

        needed = needs(self.max_size)
        usable = int(free_memory_bytes(self.device) * _MEMORY_HEADROOM)
        if needed <= usable:
            return
        lo, hi = 0, self.max_size  # largest size that fits, by bisection (nbytes is monotone)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if needs(mid) <= usable else (lo, mid - 1)
        raise BufferTooLarge(
            f"memory.max_size={self.max_size} needs {needed / 2**30:.2f} GiB ({needed} bytes) on {self.device}, "
            f"but only {usable / 2**30:.2f} GiB is free after a {1 - _MEMORY_HEADROOM:.0%} headroom; "
            f"the largest memory.max_size that fits is {lo}"
        )

    def _next_slots(self) -> Tensor:
        return (self.pos + self._env_offsets) % self.max_size

    def add(self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor,
            truncated: Tensor | None = None) -> None:
        """Store one vector step; every argument has leading dim `num_envs`. `next_obs` must be the
        true final observation where an episode ended (not the auto-reset one). `truncated` is
        needed only for n-step returns, which must not run on into the next episode."""
        slots = self._next_slots()
        if self.ended is not None:
            if truncated is None:
                raise ValueError("an n-step buffer needs `truncated` in add(), to stop returns at episode ends")
            self.ended[slots] = (terminated.reshape(self.num_envs) != 0) | (truncated.reshape(self.num_envs) != 0)
        self.obs[slots] = obs.to(self.obs.dtype)
        self.action[slots] = action.to(self.action.dtype)
        self.reward[slots] = reward.reshape(self.num_envs).to(self.reward.dtype)
        self.next_obs[slots] = next_obs.to(self.next_obs.dtype)
        self.terminated[slots] = terminated.reshape(self.num_envs).to(self.terminated.dtype)
        self.pos.add_(self.num_envs).remainder_(self.max_size)
        self.size.add_(self.num_envs).clamp_(max=self.max_size)

    def _gather(self, indices: Tensor, weights: Tensor | None) -> Batch:
        # One step: the sampled slot is also the last one, and the loss uses γ itself.
        reward, last, discount = ((self.reward[indices], indices, None) if self.ended is None
                                  else self._n_step_return(indices))
        return Batch(self.obs[indices], self.action[indices], reward, self.next_obs[last], self.terminated[last],
                     weights, indices, discount)

    def _n_step_return(self, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The discounted reward sum from each `start` slot, the slot of its last step and γ^m.

        A static loop of `n_step` gathers: no data-dependent shapes, so it compiles and captures.
        """
        stored_after = (self.pos - 1 - start).remainder(self.max_size) // self.num_envs  # vector steps
        reward, last = self.reward[start], start
        steps = torch.ones_like(reward)
        going_on = ~self.ended[start]
        for k in range(1, self.n_step):
            slot = (start + k * self.num_envs) % self.max_size
            take = going_on & (stored_after >= k)
            reward = reward + torch.where(take, self.gamma**k * self.reward[slot], 0.0)
            last = torch.where(take, slot, last)
            steps = steps + take
            going_on = take & ~self.ended[slot]
        return reward, last, torch.pow(self.gamma, steps)

    def sample(self, batch_size: int) -> Batch:
        """Uniform over the `size` stored slots. An integer draw reduced modulo `size` rather
        than `rand() * size`: float32 `rand` has 24 random bits, which would make some slots of a
        large buffer twice as likely as others. Sampling an empty buffer returns slot 0."""
        raw = torch.randint(0, _RAND_HIGH, (batch_size,), device=self.device)
        return self._gather(raw % self.size.clamp(min=1), None)

    def mutable_tensors(self) -> list[Tensor]:
        """Tensors that `sample` and `update_priorities` change: what a CUDA-graph warm-up of the
        update must restore. None for uniform sampling; the storage is only written by `add`."""
        return []

    def state_dict(self) -> dict[str, Tensor]:
        """All buffer state as CPU tensors (for `checkpoint.pt` with `--save-buffer`)."""
        return {name: getattr(self, name).cpu() for name in self._state_names()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy a `state_dict` back in place, so tensors captured by a CUDA graph stay valid."""
        missing = set(self._state_names()) - set(state)
        if missing:
            raise ValueError(f"buffer state is missing {sorted(missing)}")
        for name in self._state_names():
            target: Tensor = getattr(self, name)
            if state[name].shape != target.shape:
                raise ValueError(
                    f"buffer state '{name}' has shape {tuple(state[name].shape)}, this buffer "
                    f"{tuple(target.shape)}: memory.max_size, num_envs or the env differ from the checkpoint"
                )
            target.copy_(state[name])

    def _state_names(self) -> tuple[str, ...]:
        n_step = ("ended",) if self.ended is not None else ()
        return ("obs", "action", "reward", "next_obs", "terminated", *n_step, "pos", "size")


class PrioritizedReplay(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016, https://arxiv.org/abs/1511.05952).

    Leaf i of a device sum tree holds p_i = (|δ_i| + eps)^α; new transitions get the largest
    priority seen so far. `sample` draws one target per stratum of the total mass and descends
    the tree level by level (a fixed number of levels, so the Python loop is static). IS weights
    w_i = (N·P(i))^-β are normalised by the largest weight *in the batch*; β rises linearly from
    `beta` to `beta_final` over `beta_steps` calls to `sample`, counted on the device.
    """

    def __init__(
        self,
        obs_dim: int,
        action_shape: tuple[int, ...],
        max_size: int,
        num_envs: int,
        device: torch.device | str,
        action_dtype: torch.dtype = torch.float32,
        *,
        n_step: int = 1,
        gamma: float = 1.0,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_final: float = 1.0,
        beta_steps: int = 100_000,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(obs_dim, action_shape, max_size, num_envs, device, action_dtype, n_step=n_step, gamma=gamma)
        self.alpha, self.beta0, self.beta_final, self.beta_steps, self.eps = alpha, beta, beta_final, beta_steps, eps
        self.capacity = self._capacity(max_size)
        self.depth = self.capacity.bit_length() - 1
        # Float64: the root sums up to 2**k leaves and a float32 descent would misroute targets.
        # Node 1 is the root, node n has children 2n and 2n+1, leaf i is node capacity + i.
        self.tree = torch.zeros(2 * self.capacity, dtype=torch.float64, device=self.device)
        # Shape [1], not []: torch.compile (2.13) drops in-place updates of 0-dim float64 CPU tensors.
        self.max_priority = torch.ones(1, dtype=torch.float64, device=self.device)
        self.sample_calls = torch.zeros((), dtype=torch.int64, device=self.device)

    @staticmethod
    def _capacity(max_size: int) -> int:
        return 1 << (max_size - 1).bit_length()

    @classmethod
    def nbytes(
        cls, obs_dim: int, action_shape: tuple[int, ...], max_size: int, action_dtype: torch.dtype = torch.float32,
        n_step: int = 1,
    ) -> int:
        """Storage plus the float64 sum tree of 2·capacity nodes."""
        return super().nbytes(obs_dim, action_shape, max_size, action_dtype, n_step) + 2 * cls._capacity(max_size) * 8

    def _set_priorities(self, slots: Tensor, priorities: Tensor) -> None:
        """Write leaves, then recompute each touched parent from its two children, level by level.
        A slot given twice keeps the larger priority: an order-free rule, so eager, compiled and
        graph-replayed runs agree; parents are rebuilt from the children, so repeats are harmless."""
        nodes = slots + self.capacity
        self.tree.scatter_reduce_(0, nodes, priorities, reduce="amax", include_self=False)
        for _ in range(self.depth):
            nodes = nodes // 2
            self.tree[nodes] = self.tree[2 * nodes] + self.tree[2 * nodes + 1]

    def add(self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor,
            truncated: Tensor | None = None) -> None:
        slots = self._next_slots()
        super().add(obs, action, reward, next_obs, terminated, truncated)
        self._set_priorities(slots, self.max_priority.expand(self.num_envs))

    def beta(self) -> Tensor:
        """β for the next `sample` call (device float32 scalar)."""
        progress = (self.sample_calls.float() / max(self.beta_steps, 1)).clamp(max=1.0)
        return self.beta0 + (self.beta_final - self.beta0) * progress

    def sample(self, batch_size: int) -> Batch:
        beta = self.beta()
        total = self.tree[1]
        strata = torch.arange(batch_size, device=self.device, dtype=torch.float64)
        target = (strata + torch.rand(batch_size, device=self.device, dtype=torch.float64)) * (total / batch_size)
        node = torch.ones(batch_size, dtype=torch.int64, device=self.device)
        for _ in range(self.depth):
            left = 2 * node
            left_mass = self.tree[left]
            go_right = target >= left_mass
            target = torch.where(go_right, target - left_mass, target)
            node = torch.where(go_right, left + 1, left)
        # Rounding can push a target past the last stored leaf; clamp it back onto stored slots.
        indices = torch.minimum(node - self.capacity, (self.size - 1).clamp(min=0))
        prob = self.tree[indices + self.capacity] / total
        weights = (self.size * prob).pow(-beta.double())
        weights = (weights / weights.max()).float()
        self.sample_calls.add_(1)
        return self._gather(indices, weights)

    def update_priorities(self, indices: Tensor, td_errors: Tensor) -> None:
        """Set p = (|δ| + eps)^α for the sampled `indices` ([B]) from their TD errors ([B])."""
        priorities = (td_errors.detach().abs().double().reshape(-1) + self.eps).pow(self.alpha)
        self._set_priorities(indices, priorities)
        self.max_priority.copy_(torch.maximum(self.max_priority, priorities.max()))

    def mutable_tensors(self) -> list[Tensor]:
        return [self.tree, self.max_priority, self.sample_calls]

    def _state_names(self) -> tuple[str, ...]:
        return (*super()._state_names(), "tree", "max_priority", "sample_calls")


# The buffer class for each `memory.name`; past this point code asks the buffer object, not the name.
BUFFERS: dict[str, type[ReplayBuffer]] = {"Replay": ReplayBuffer, "PrioritizedReplay": PrioritizedReplay}


def make_buffer(memory: MemoryConfig, obs_dim: int, action_shape: tuple[int, ...], num_envs: int,
                device: torch.device | str, action_dtype: torch.dtype = torch.float32, *,
                n_step: int = 1, gamma: float = 1.0) -> ReplayBuffer:
    """The buffer `memory` describes: its class, size and, for PrioritizedReplay, its settings;
    `n_step` and `gamma` are the algorithm's, for the returns `sample` builds."""
    if memory.name not in BUFFERS:
        raise ValueError(f"unknown memory.name {memory.name!r}; known: {', '.join(BUFFERS)}")
    cls = BUFFERS[memory.name]
    per = dataclasses.asdict(memory.prioritized) if issubclass(cls, PrioritizedReplay) else {}
    return cls(obs_dim, action_shape, memory.max_size, num_envs, device, action_dtype, n_step=n_step, gamma=gamma,
               **per)
