"""Batch Renormalization for CrossQ critics: torch reference, fused Triton kernel, modules."""

from crossq_gpu.kernels.batch_renorm import BatchRenorm1d, LazyBatchRenorm1d, batch_renorm
from crossq_gpu.kernels.reference import BrnParams

__all__ = ["BatchRenorm1d", "BrnParams", "LazyBatchRenorm1d", "batch_renorm"]
