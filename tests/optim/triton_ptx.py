"""Compile arvc's Triton kernels for NVIDIA GPUs from Turing (sm_75, RTX 20xx) to Blackwell (sm_100,
sm_120: B200, RTX 50xx) without a GPU and report what the code does (run by test_fused_triton.py in a
subprocess; prints one JSON object: {"reports": [...], "unsupported": {target: why}}). Each report: the
approximate instructions found (div/sqrt/rsqrt/ex2/lg2/sin/cos .approx), flush-to-zero, float fma,
vectorised global loads, and cuobjdump's resource usage (registers, local memory and stack = spills).

What is compiled (CI has 2 cores, so beyond the first line a representative subset; ~1 s a compile):
* every variant below, aligned and with GradScaler's scale, for sm_75, 80, 86, 89 and 90 (35 compiles);
* Blackwell, where the installed triton can target it: one variant per kernel, the widest (AdaBelief
  bf16 + AMSGrad, RAdam, AnyPrecisionAdamW fp16 + Kahan + stochastic rounding, schedule-free with
  weight decay), for sm_100 and sm_120;
* the other layouts, for sm_86: `ALIGNED=False` (a tensor not on a 16-byte boundary: no vector loads
  are expected there) and `HAS_SCALE=False` (no GradScaler), each for AdaBelief fp32, RAdam,
  AnyPrecisionAdamW bf16 + Kahan + stochastic rounding and schedule-free.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from arvc.optim._fused_triton.adabelief import _adabelief_kernel
from arvc.optim._fused_triton.any_precision_adamw import _any_precision_adamw_kernel
from arvc.optim._fused_triton.radam import _radam_kernel
from arvc.optim._fused_triton.schedule_free import _schedule_free_kernel

# Turing, Ampere (A100; RTX 30xx), Ada (RTX 40xx), Hopper: the consumer cards arvc's users train on and
# the datacenter ones. Pascal/Volta (sm_61/70) compiled clean too when tried by hand (2026-12-04).
TARGETS = (75, 80, 86, 89, 90)
BLACKWELL = (100, 120)  # B200/GB200, RTX 50xx
OTHER_LAYOUTS_TARGET = 86
COMMON = {"ALIGNED": True, "BLOCK": 1024, "HAS_SCALE": True}
VARIANTS = [
    (_adabelief_kernel, "fp32", {"AMSGRAD": False, "ZERO_BETA1": False, "P_KIND": 0, "G_KIND": 0}),
    (_adabelief_kernel, "bf16 amsgrad", {"AMSGRAD": True, "ZERO_BETA1": False, "P_KIND": 1, "G_KIND": 1}),
    (_radam_kernel, "fp32", {"LOW_WEIGHT": True, "COUPLED_DECAY": False, "MAXIMIZE": False}),
    (_any_precision_adamw_kernel, "fp32", {"P_KIND": 0, "G_KIND": 0, "M_KIND": 0, "V_KIND": 0, "C_KIND": -1}),
    (
        _any_precision_adamw_kernel,
        "bf16 kahan sr",
        {"P_KIND": 1, "G_KIND": 1, "M_KIND": 1, "V_KIND": 1, "C_KIND": 1},
    ),
    (
        _any_precision_adamw_kernel,
        "fp16 kahan sr",
        {"P_KIND": 2, "G_KIND": 2, "M_KIND": 2, "V_KIND": 2, "C_KIND": 2},
    ),
    (_schedule_free_kernel, "fp32 decay", {"DECAY": True, "MAXIMIZE": False}),
]
FLOAT_TABLES = ("scalars", "scale", "found_inf")  # float32 pointers; the other tables are int64
APPROXIMATE = re.compile(r"\b(?:div|sqrt|rsqrt|rcp|ex2|lg2|sin|cos|tanh)\.approx[.\w]*")
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def jobs():
    """(kernel, variant, constants, target) for every compile (see the module docstring)."""
    listed = [(k, v, c, t) for k, v, c in VARIANTS for t in TARGETS]
    widest = [VARIANTS[1], VARIANTS[2], VARIANTS[5], VARIANTS[6]]
    listed += [(k, v, c, t) for k, v, c in widest for t in BLACKWELL]
    subset = [VARIANTS[0], VARIANTS[2], VARIANTS[4], VARIANTS[6]]
    for extra, label in (({"ALIGNED": False}, "unaligned"), ({"HAS_SCALE": False}, "no scale")):
        listed += [(k, f"{v} {label}", {**c, **extra}, OTHER_LAYOUTS_TARGET) for k, v, c in subset]
    return listed


def report(kernel, variant, constants, target):
    names = list(kernel.arg_names)
    constants = {**COMMON, **constants}
    if kernel is _any_precision_adamw_kernel:
        constants = {"LOW_WEIGHT": True, "STOCHASTIC": True, **constants}
    signature = {
        name: "constexpr" if name in constants else ("*fp32" if name in FLOAT_TABLES else "*i64")
        for name in names
    }
    source = ASTSource(
        fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constants.items()}
    )
    compiled = triton.compile(
        source, target=GPUTarget("cuda", target, 32), options={"enable_fp_fusion": False}
    )
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run(
            [CUOBJDUMP, "--dump-resource-usage", path], capture_output=True, text=True
        ).stdout
    resources = next((line.strip() for line in usage.splitlines() if "REG:" in line), "")
    field = dict(re.findall(r"(\w+):(\d+)", resources))
    return {
        "kernel": kernel.__name__,
        "variant": variant,
        "target": target,
        "aligned": constants["ALIGNED"],
        "has_scale": constants["HAS_SCALE"],
        "approximate": sorted(set(APPROXIMATE.findall(ptx))),
        "ftz": ".ftz" in ptx,
        "fma": bool(re.search(r"\bfma\.rn\.f32\b", ptx)),
        "vector_loads": len(re.findall(r"\bld\.global(?:\.\w+)*\.v[248]\b", ptx)),
        "registers": int(field.get("REG", -1)),
        "local_bytes": int(field.get("LOCAL", -1)),
        "stack_bytes": int(field.get("STACK", -1)),
        "resources": resources,
    }


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("triton_ptx.py compiles real kernels: run it without TRITON_INTERPRET=1")
    reports, unsupported = [], {}
    for kernel, variant, constants, target in jobs():
        if target in unsupported:
            continue
        try:
            reports.append(report(kernel, variant, constants, target))
        except Exception as error:  # a target this triton cannot compile for (older ptxas): say so
            if target not in BLACKWELL:
                raise
            lines = str(error).strip().splitlines() or [""]
            unsupported[target] = f"{type(error).__name__}: {lines[0][:300]} (triton {triton.__version__})"
    print(json.dumps({"reports": reports, "unsupported": unsupported}, indent=1))
