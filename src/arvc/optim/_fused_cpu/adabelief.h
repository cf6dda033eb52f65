// AdaBelief / AdaBeliefV2 (arvc.optim.adabelief's single-tensor loop, in one pass).
#pragma once

#include "common.h"

namespace arvc_fused {

// --- AdaBelief / AdaBeliefV2 (BeliefScalars: arvc.optim._fused_args.ADABELIEF) ------------------------

template <bool AMSGRAD, bool ZERO_BETA1>
void adabelief_block(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                     float* __restrict__ s, float* __restrict__ smax, int64_t n, const BeliefScalars& k) {
  // Scalars copied to locals: stores through the float pointers cannot alias them, so the loop vectorizes.
  const float decay = k.decay, beta1 = k.beta1, one_minus_beta1 = k.one_minus_beta1, beta2 = k.beta2,
              one_minus_beta2 = k.one_minus_beta2, eps = k.eps, bias_correction2_sqrt = k.bias_correction2_sqrt,
              step_size = k.step_size;
  for (int64_t j = 0; j < n; ++j) {
    const float param = p[j] * decay;
    float residual, momentum;
    if (ZERO_BETA1) {
      residual = g[j] - m[j];  // against the previous momentum (see adabelief.py)
      momentum = g[j];
    } else {
      momentum = m[j] * beta1;
      momentum = momentum + one_minus_beta1 * g[j];
      residual = g[j] - momentum;
    }
    float belief = s[j] * beta2;
    belief = belief + one_minus_beta2 * residual * residual;
    belief = belief + eps;
    m[j] = momentum;
    s[j] = belief;
    if (AMSGRAD) {
      const float previous = smax[j];  // torch.maximum: a NaN on either side wins (std::max would drop it)
      belief = std::isnan(previous) ? previous : (previous > belief ? previous : belief);
      smax[j] = belief;
    }
    const float denom = std::sqrt(belief) / bias_correction2_sqrt + eps;
    p[j] = param + step_size * (momentum / denom);
  }
}

// Checked, and the scalars computed, by arvc.optim._fused_args; `zero_beta1` likewise decided there.
void adabelief_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_vars, at::TensorList max_exp_avg_vars, at::TensorList steps,
                const Tensor& scalar_table, bool amsgrad, bool zero_beta1) {
  const std::vector<BeliefScalars> scalars = scalar_rows<BeliefScalars>(scalar_table, params.size());
  const std::vector<Chunk> chunks = make_chunks(params);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    alignas(64) float p_scratch[kBlock], g_scratch[kBlock];
    for (int64_t c = first; c < last; ++c) {
      const Chunk& chunk = chunks[c];
      const Tensor& param = params[chunk.tensor];
      const Tensor& grad = grads[chunk.tensor];
      const BeliefScalars& k = scalars[chunk.tensor];
      float* m_all = exp_avgs[chunk.tensor].data_ptr<float>();
      float* s_all = exp_avg_vars[chunk.tensor].data_ptr<float>();
      float* smax_all = amsgrad ? max_exp_avg_vars[chunk.tensor].data_ptr<float>() : nullptr;
      for (int64_t b = chunk.begin; b < chunk.end; b += kBlock) {
        const int64_t n = std::min(kBlock, chunk.end - b);
        float* p = block_of(param, b, n, p_scratch);
        const float* g = block_of(grad, b, n, g_scratch);
        float* smax = amsgrad ? smax_all + b : nullptr;
        if (amsgrad) {
          if (zero_beta1) adabelief_block<true, true>(p, g, m_all + b, s_all + b, smax, n, k);
          else adabelief_block<true, false>(p, g, m_all + b, s_all + b, smax, n, k);
        } else {
          if (zero_beta1) adabelief_block<false, true>(p, g, m_all + b, s_all + b, smax, n, k);
          else adabelief_block<false, false>(p, g, m_all + b, s_all + b, smax, n, k);
        }
        if (p == p_scratch) store_nearest(p, n, param, b);
      }
    }
  });
  commit_steps(steps);
}

}  // namespace arvc_fused
