"""arvc's fused GPU optimizer steps, in Triton: the CPU ops (arvc.optim._fused_cpu_steps.*) with the same
signatures and semantics, for CUDA tensors; one launch per (device, storage dtypes) group.

Imported only when a fused step runs on a GPU (or by the tests, under TRITON_INTERPRET=1 on CPU tensors):
triton comes with torch's CUDA wheels and is not needed anywhere else. Its ops are the rows of
arvc.optim._fused_ops.FUSED_OPS: each `<op>` is taken from its module `<kernel>.py` here.
"""

import importlib

from arvc.optim._fused_ops import FUSED_OPS

for _op, _kernel in FUSED_OPS.items():
    globals()[_op] = getattr(importlib.import_module(f"{__name__}.{_kernel}"), _op)

__all__ = list(FUSED_OPS)
