// AdaBelief / AdaBeliefV2 (arvc.optim.adabelief's single-tensor loop, in one pass).
#pragma once

#include "common.h"

namespace arvc_fused {

// --- AdaBelief / AdaBeliefV2 ----------------------------------------------------------------------------
struct BeliefScalars {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction2_sqrt, step_size;
};

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

void adabelief_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_vars, at::TensorList max_exp_avg_vars, at::TensorList steps,
                bool amsgrad, double lr, double beta1, double beta2, double eps, double weight_decay) {
  const size_t count = params.size();
  TORCH_CHECK(grads.size() == count && exp_avgs.size() == count && exp_avg_vars.size() == count &&
                  steps.size() == count && (!amsgrad || max_exp_avg_vars.size() == count),
              "arvc fused AdaBelief: tensor lists differ in length");
  std::vector<Tensor> grads_laid_out(count);
  std::vector<BeliefScalars> scalars(count);
  for (size_t i = 0; i < count; ++i) {
    const Tensor& param = params[i];
    check_param(param);
    check_tensor(param, param, "parameter");
    check_tensor(grads[i], param, "gradient", false);
    for (const Tensor* buffer : {&exp_avgs[i], &exp_avg_vars[i]}) {
      check_tensor(*buffer, param, "state");
      TORCH_CHECK(buffer->scalar_type() == ScalarType::Float, "arvc fused AdaBelief: state must be float32");
    }
    if (amsgrad) {
      check_tensor(max_exp_avg_vars[i], param, "state");
      // Checked here, before any step counter moves: an error must leave the state as it was.
      TORCH_CHECK(max_exp_avg_vars[i].scalar_type() == ScalarType::Float,
                  "arvc fused AdaBelief: state must be float32");
    }
    grads_laid_out[i] = matching_grad(grads[i], param);
    const double step = static_cast<double>(next_step(steps[i]));
    scalars[i] = {static_cast<float>(1.0 - lr * weight_decay),
                  static_cast<float>(beta1),
                  static_cast<float>(1.0 - beta1),
                  static_cast<float>(beta2),
                  static_cast<float>(1.0 - beta2),
                  static_cast<float>(eps),
                  static_cast<float>(std::sqrt(1.0 - std::pow(beta2, step))),
                  static_cast<float>(-lr / (1.0 - std::pow(beta1, step)))};
  }
  const std::vector<Chunk> chunks = make_chunks(params);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    alignas(64) float p_scratch[kBlock], g_scratch[kBlock];
    for (int64_t c = first; c < last; ++c) {
      const Chunk& chunk = chunks[c];
      const Tensor& param = params[chunk.tensor];
      const Tensor& grad = grads_laid_out[chunk.tensor];
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
          if (k.beta1 == 0.0f) adabelief_block<true, true>(p, g, m_all + b, s_all + b, smax, n, k);
          else adabelief_block<true, false>(p, g, m_all + b, s_all + b, smax, n, k);
        } else {
          if (k.beta1 == 0.0f) adabelief_block<false, true>(p, g, m_all + b, s_all + b, smax, n, k);
          else adabelief_block<false, false>(p, g, m_all + b, s_all + b, smax, n, k);
        }
        if (p == p_scratch) store_nearest(p, n, param, b);
      }
    }
  });
  commit_steps(steps);  // after the update: an error before it leaves every counter as it was
}

}  // namespace arvc_fused
