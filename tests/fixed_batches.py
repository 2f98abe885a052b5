"""A stand-in replay buffer that hands `Update` a given sequence of batches, for exact comparisons."""

from collections.abc import Iterable

from crossq_gpu.buffer import Batch


class FixedBatches:
    """`sample()` returns the next of `batches`, whatever batch size is asked for."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self._feed = iter(batches)

    def sample(self, batch_size: int) -> Batch:
        return next(self._feed)
