// arvc's fused CPU optimizer steps (AdaBelief/AdaBeliefV2, AnyPrecisionAdamW, RAdam).
//
// Why a hand-written kernel: an optimizer step is memory-bound. The foreach path reads and writes every
// buffer once per torch op (8-12 passes over memory); this kernel makes one pass: each element of the
// parameter, gradient and state is loaded once, updated in registers and stored once, and all tensors
// of a step are processed in one parallel region (at::parallel_for over fixed-size chunks).
//
// The arithmetic mirrors the single-tensor Python reference op for op (same float32 operations in the
// same order; no FMA contraction: built with -ffp-contract=off), and stochastic rounding uses the same
// counter-based hash as arvc.optim._functional, so the paths agree to float32 rounding — up to torch's own
// vectorized lerp_/add_(alpha=) using fused multiply-adds, which moves the reference's last bit.
//
// Registered as torch ops (torch.ops.arvc_fused.*) so no pybind11 headers are needed: builds in seconds.

#include <torch/library.h>

#include "adabelief.h"
#include "any_precision_adamw.h"
#include "denormals.h"
#include "radam.h"

using namespace arvc_fused;

TORCH_LIBRARY(arvc_fused, m) {
  m.def(
      "adabelief_(Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_vars, "
      "Tensor[] max_exp_avg_vars, Tensor[] steps, bool amsgrad, float lr, float beta1, float beta2, "
      "float eps, float weight_decay) -> ()",
      adabelief_);
  m.def(
      "any_precision_adamw_(Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
      "Tensor?[] compensations, Tensor[] steps, int[] param_indices, float lr, float beta1, float beta2, "
      "float eps, float weight_decay, int seed, bool stochastic_rounding) -> ()",
      any_precision_adamw_);
  m.def(
      "radam_(Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, Tensor[] steps, "
      "float lr, float beta1, float beta2, float eps, float weight_decay, bool decoupled_weight_decay, "
      "bool maximize) -> ()",
      radam_);
  m.def("set_flush_denormal_all(bool on) -> int[]", set_flush_denormal_all);
  m.def("restore_flush_denormal_all(int[] previous) -> ()", restore_flush_denormal_all);
}
