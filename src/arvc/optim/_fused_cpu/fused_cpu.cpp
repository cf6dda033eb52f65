// arvc's fused CPU optimizer steps (AdaBelief/AdaBeliefV2, AnyPrecisionAdamW, RAdam, schedule-free
// AdamW/RAdam).
//
// Why a hand-written kernel: an optimizer step is memory-bound. The foreach path reads and writes every
// buffer once per torch op (8-12 passes over memory); this kernel makes one pass: each element of the
// parameter, gradient and state is loaded once, updated in registers and stored once, and all tensors
// of a step are processed in one parallel region (at::parallel_for over fixed-size chunks).
//
// The arithmetic mirrors the single-tensor Python reference op for op (same float32 operations in the
// same order; no FMA contraction: built with -ffp-contract=off), and stochastic rounding uses the same
// counter-based hash as arvc.optim._rounding, so the paths agree to float32 rounding — up to torch's own
// vectorized lerp_/add_(alpha=) using fused multiply-adds, which moves the reference's last bit.
//
// Registered as torch ops (torch.ops.arvc_fused.*) so no pybind11 headers are needed: builds in seconds.
// They are called through arvc.optim._fused_cpu_steps, which checks their arguments and computes each
// step's scalar table (arvc.optim._fused_args, the same for the Triton kernels).
// The schemas mark what each op writes (Tensor(a!)[]), and arvc.optim._fused registers fake
// implementations, so torch.compile can trace a step that calls them.

#include <torch/library.h>

#include "adabelief.h"
#include "any_precision_adamw.h"
#include "denormals.h"
#include "radam.h"
#include "schedule_free.h"

using namespace arvc_fused;

namespace {

// The op takes the Kahan buffers that exist as a plain list plus, per parameter, the index of its buffer
// in that list (-1: none): torch.compile can trace an op that writes a Tensor[] but not a Tensor?[].
void any_precision_adamw_op(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList compensations,
                            at::IntArrayRef compensation_of, at::TensorList steps, const at::Tensor& scalars,
                            const at::Tensor& keys, bool low_weight, bool stochastic_rounding) {
  c10::List<std::optional<Tensor>> optional_compensations;
  for (const int64_t index : compensation_of) {
    optional_compensations.push_back(index < 0 ? std::optional<Tensor>() : std::optional<Tensor>(compensations[index]));
  }
  any_precision_adamw_(params, grads, exp_avgs, exp_avg_sqs, optional_compensations, steps, scalars, keys,
                       low_weight, stochastic_rounding);
}

}  // namespace

TORCH_LIBRARY(arvc_fused, m) {
  m.def(
      "adabelief_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_vars, "
      "Tensor(d!)[] max_exp_avg_vars, Tensor(e!)[] steps, Tensor scalars, bool amsgrad, bool zero_beta1) -> ()");
  m.def(
      "any_precision_adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] compensations, int[] compensation_of, Tensor(e!)[] steps, Tensor scalars, Tensor keys, "
      "bool low_weight, "
      "bool stochastic_rounding) -> ()");
  m.def(
      "radam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] steps, Tensor scalars, bool low_weight, bool coupled, bool maximize) -> ()");
  m.def(
      "schedule_free_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg_sqs, Tensor(c!)[] zs, "
      "Tensor scalars, bool decay, bool maximize) -> ()");
  // Not optimizer steps: set / restore denormal flushing on every intra-op thread (see optim/denormals.py).
  m.def("set_flush_denormal_all(bool on) -> int[]", set_flush_denormal_all);
  m.def("restore_flush_denormal_all(int[] previous) -> ()", restore_flush_denormal_all);
}

// The CPU implementations, registered for the CPU key only (not as composite kernels), so the fake
// implementations registered from Python are what torch.compile traces.
TORCH_LIBRARY_IMPL(arvc_fused, CPU, m) {
  m.impl("adabelief_", adabelief_);
  m.impl("any_precision_adamw_", any_precision_adamw_op);
  m.impl("radam_", radam_);
  m.impl("schedule_free_", schedule_free_);
}
