// RAdam (torch.optim.RAdam's single-tensor loop, in one pass).
#pragma once

#include "common.h"

namespace arvc_fused {

// --- RAdam (torch.optim.RAdam's update, float32 parameters; RAdamScalars: arvc.optim._fused_args.RADAM) ---

template <bool LOW_WEIGHT, bool RECTIFIED, bool COUPLED_DECAY, bool MAXIMIZE>
void radam_range(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                 int64_t begin, int64_t end, const RAdamScalars& k) {
  const float decay = k.decay, weight_decay = k.weight_decay, w = k.lerp_weight, beta2 = k.beta2,
              one_minus_beta2 = k.one_minus_beta2, eps = k.eps, bias_correction1 = k.bias_correction1, lr = k.lr,
              bias_correction2_sqrt = k.bias_correction2_sqrt, rect = k.rect;
  for (int64_t j = begin; j < end; ++j) {
    float grad = MAXIMIZE ? -g[j] : g[j];
    float param = p[j];
    if (COUPLED_DECAY) {
      grad = grad + weight_decay * param;
    } else {
      param = param * decay;
    }
    const float momentum = LOW_WEIGHT ? m[j] + w * (grad - m[j]) : grad - (grad - m[j]) * (1.0f - w);
    float variance = v[j] * beta2;
    variance = variance + one_minus_beta2 * grad * grad;
    m[j] = momentum;
    v[j] = variance;
    const float corrected = momentum / bias_correction1;
    if (RECTIFIED) {
      const float adaptive = bias_correction2_sqrt / (std::sqrt(variance) + eps);
      p[j] = param - corrected * lr * adaptive * rect;
    } else {
      p[j] = param - corrected * lr;
    }
  }
}

template <bool LOW_WEIGHT, bool RECTIFIED>
void radam_dispatch(float* p, const float* g, float* m, float* v, int64_t begin, int64_t end, const RAdamScalars& k,
                    bool coupled, bool maximize) {
  if (coupled && maximize) radam_range<LOW_WEIGHT, RECTIFIED, true, true>(p, g, m, v, begin, end, k);
  else if (coupled) radam_range<LOW_WEIGHT, RECTIFIED, true, false>(p, g, m, v, begin, end, k);
  else if (maximize) radam_range<LOW_WEIGHT, RECTIFIED, false, true>(p, g, m, v, begin, end, k);
  else radam_range<LOW_WEIGHT, RECTIFIED, false, false>(p, g, m, v, begin, end, k);
}

// Checked, and the scalars computed (torch.optim.radam's, in double precision), by arvc.optim._fused_args;
// `low_weight`, `coupled` (L2 weight decay) likewise decided there.
void radam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
            at::TensorList steps, const Tensor& scalar_table, bool low_weight, bool coupled, bool maximize) {
  const std::vector<RAdamScalars> scalars = scalar_rows<RAdamScalars>(scalar_table, params.size());
  const std::vector<Chunk> chunks = make_chunks(params);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const Chunk& chunk = chunks[c];
      const RAdamScalars& k = scalars[chunk.tensor];
      float* p = params[chunk.tensor].data_ptr<float>();
      const float* g = grads[chunk.tensor].const_data_ptr<float>();
      float* m = exp_avgs[chunk.tensor].data_ptr<float>();
      float* v = exp_avg_sqs[chunk.tensor].data_ptr<float>();
      const bool rectified = k.rectified != 0.0f;
      if (low_weight && rectified) radam_dispatch<true, true>(p, g, m, v, chunk.begin, chunk.end, k, coupled, maximize);
      else if (low_weight) radam_dispatch<true, false>(p, g, m, v, chunk.begin, chunk.end, k, coupled, maximize);
      else if (rectified) radam_dispatch<false, true>(p, g, m, v, chunk.begin, chunk.end, k, coupled, maximize);
      else radam_dispatch<false, false>(p, g, m, v, chunk.begin, chunk.end, k, coupled, maximize);
    }
  });
  commit_steps(steps);
}

}  // namespace arvc_fused
