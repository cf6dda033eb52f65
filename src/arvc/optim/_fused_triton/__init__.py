"""arvc's fused GPU optimizer steps, in Triton: the CPU kernels' ops (torch.ops.arvc_fused.*) with the same
signatures and semantics, for CUDA tensors; one launch per (device, storage dtypes) group.

Imported only when a fused step runs on a GPU (or by the tests, under TRITON_INTERPRET=1 on CPU tensors):
triton comes with torch's CUDA wheels and is not needed anywhere else.
"""

from arvc.optim._fused_triton.adabelief import adabelief_
from arvc.optim._fused_triton.any_precision_adamw import any_precision_adamw_
from arvc.optim._fused_triton.radam import radam_

__all__ = ["adabelief_", "any_precision_adamw_", "radam_"]
