"""Batch Renormalization for CrossQ critics: torch reference, fused Triton kernel, modules."""

from crossq_gpu.kernels.batch_renorm import BatchRenorm1d, LazyBatchRenorm1d, batch_renorm

__all__ = ["BatchRenorm1d", "LazyBatchRenorm1d", "batch_renorm"]
