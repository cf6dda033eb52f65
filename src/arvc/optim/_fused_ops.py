"""The declared table of arvc's fused ops. It imports nothing of arvc: the CPU side (arvc.optim._fused)
and the Triton package (arvc.optim._fused_triton) both read it."""

from types import MappingProxyType

__all__ = ["FUSED_OPS"]

# The fused ops, one row each: the op's name (torch.ops.arvc_fused.<name> on CPU, registered in
# _fused_cpu/fused_cpu.cpp from _fused_cpu/<kernel>.h and called through arvc.optim._fused_cpu_steps.<name>;
# the same name in arvc.optim._fused_triton.<kernel> for CUDA; both checked and given their per-step
# scalar table by arvc.optim._fused_args) -> <kernel>. The fake (meta) registrations and the Triton
# package are built from this table; tests/optim/test_fused.py checks the C++ library registers exactly these.
FUSED_OPS = MappingProxyType(
    {
        "adabelief_": "adabelief",
        "any_precision_adamw_": "any_precision_adamw",
        "radam_": "radam",
        "schedule_free_": "schedule_free",
    }
)
