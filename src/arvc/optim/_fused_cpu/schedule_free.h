// Schedule-free AdamW / RAdam (arvc.optim.adamw_schedulefree's single-tensor loop, in one pass).
#pragma once

#include <array>
#include <utility>

#include "common.h"

namespace arvc_fused {

// --- Schedule-free (float32 tensors; ScheduleFreeScalars: arvc.optim._fused_args.SCHEDULE_FREE) ----------
// Per element, in the reference's order: v <- v*beta2 + (1 - beta2)*g*g; the step u = g / (sqrt(v/bc2) + eps)
// (or g itself at RAdam's start), plus weight_decay*y (the old y); y <- lerp(y, z, ckp1) + y_step*u;
// z <- z - lr*u.

template <bool ADAPTIVE, bool LOW_WEIGHT, bool DECAY, bool MAXIMIZE>
void schedule_free_range(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v,
                         float* __restrict__ z, int64_t begin, int64_t end, const ScheduleFreeScalars& k) {
  // Scalars copied to locals: stores through the float pointers cannot alias them, so the loop vectorizes.
  const float beta2 = k.beta2, one_minus_beta2 = k.one_minus_beta2, bias_correction2 = k.bias_correction2,
              eps = k.eps, weight_decay = k.weight_decay, ckp1 = k.ckp1, y_step = k.y_step, lr = k.lr;
  for (int64_t j = begin; j < end; ++j) {
    const float grad = MAXIMIZE ? -g[j] : g[j];
    const float y = p[j];
    const float z_old = z[j];
    float variance = v[j] * beta2;
    variance = variance + one_minus_beta2 * grad * grad;
    v[j] = variance;
    float step = grad;
    if (ADAPTIVE) {
      const float denom = std::sqrt(variance / bias_correction2) + eps;
      step = grad / denom;
    }
    if (DECAY) step = step + weight_decay * y;
    const float moved = LOW_WEIGHT ? y + ckp1 * (z_old - y) : z_old - (z_old - y) * (1.0f - ckp1);
    p[j] = moved + y_step * step;
    z[j] = z_old - lr * step;
  }
}

using ScheduleFreeRange = void (*)(float*, const float*, float*, float*, int64_t, int64_t,
                                   const ScheduleFreeScalars&);

// Every variant, indexed by ADAPTIVE*8 + LOW_WEIGHT*4 + DECAY*2 + MAXIMIZE.
template <size_t... I>
constexpr std::array<ScheduleFreeRange, sizeof...(I)> schedule_free_variants(std::index_sequence<I...>) {
  return {{&schedule_free_range<(I & 8) != 0, (I & 4) != 0, (I & 2) != 0, (I & 1) != 0>...}};
}

// Checked, and the scalars computed (the group's ckp1, lr, bias correction: the optimizer's own numbers),
// by arvc.optim._fused_args; `decay` (weight_decay != 0) likewise decided there. No step counters: the
// schedule-free step count is the param group's.
void schedule_free_(at::TensorList params, at::TensorList grads, at::TensorList exp_avg_sqs, at::TensorList zs,
                    const Tensor& scalar_table, bool decay, bool maximize) {
  static constexpr auto variants = schedule_free_variants(std::make_index_sequence<16>());
  const std::vector<ScheduleFreeScalars> scalars = scalar_rows<ScheduleFreeScalars>(scalar_table, params.size());
  const std::vector<Chunk> chunks = make_chunks(params);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const Chunk& chunk = chunks[c];
      const ScheduleFreeScalars& k = scalars[chunk.tensor];
      const size_t variant = (k.adaptive != 0.0f ? 8 : 0) + (k.low_weight != 0.0f ? 4 : 0) + (decay ? 2 : 0) +
                             (maximize ? 1 : 0);
      variants[variant](params[chunk.tensor].data_ptr<float>(), grads[chunk.tensor].const_data_ptr<float>(),
                        exp_avg_sqs[chunk.tensor].data_ptr<float>(), zs[chunk.tensor].data_ptr<float>(),
                        chunk.begin, chunk.end, k);
    }
  });
}

}  // namespace arvc_fused
