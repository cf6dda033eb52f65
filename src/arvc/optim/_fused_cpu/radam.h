// RAdam (torch.optim.RAdam's single-tensor loop, in one pass).
#pragma once

#include "common.h"

namespace arvc_fused {

// --- RAdam (torch.optim.RAdam's update, float32 parameters) ---------------------------------------------
struct RAdamScalars {
  float decay, weight_decay, lerp_weight, beta2, one_minus_beta2, eps, bias_correction1, lr, bias_correction2_sqrt,
      rect;
  bool rectified;
};

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

void radam_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
            at::TensorList steps, double lr, double beta1, double beta2, double eps, double weight_decay,
            bool decoupled_weight_decay, bool maximize) {
  const size_t count = params.size();
  TORCH_CHECK(grads.size() == count && exp_avgs.size() == count && exp_avg_sqs.size() == count &&
                  steps.size() == count,
              "arvc fused RAdam: tensor lists differ in length");
  std::vector<Tensor> grads_laid_out(count);
  std::vector<RAdamScalars> scalars(count);
  // A weight decay of 0 changes nothing in either form; torch skips it, and so does the decoupled form here.
  const bool coupled = weight_decay != 0.0 && !decoupled_weight_decay;
  for (size_t i = 0; i < count; ++i) {
    const Tensor& param = params[i];
    check_param(param);
    for (const Tensor* t : {&param, &grads[i], &exp_avgs[i], &exp_avg_sqs[i]}) {
      check_tensor(*t, param, "tensor", t != &grads[i]);
      TORCH_CHECK(t->scalar_type() == ScalarType::Float, "arvc fused RAdam: float32 tensors only");
    }
    grads_laid_out[i] = matching_grad(grads[i], param);
    const double step = static_cast<double>(next_step(steps[i]));
    // The scalars exactly as torch.optim.radam computes them in Python (double precision).
    const double bias_correction1 = 1.0 - std::pow(beta1, step);
    const double bias_correction2 = 1.0 - std::pow(beta2, step);
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * step * std::pow(beta2, step) / bias_correction2;
    const bool rectified = rho_t > 5.0;
    const double rect =
        rectified ? std::pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5)
                  : 1.0;
    scalars[i] = {static_cast<float>(weight_decay != 0.0 ? 1.0 - lr * weight_decay : 1.0),
                  static_cast<float>(weight_decay),
                  static_cast<float>(1.0 - beta1),
                  static_cast<float>(beta2),
                  static_cast<float>(1.0 - beta2),
                  static_cast<float>(eps),
                  static_cast<float>(bias_correction1),
                  static_cast<float>(lr),
                  static_cast<float>(std::pow(bias_correction2, 0.5)),
                  static_cast<float>(rect),
                  rectified};
  }
  const std::vector<Chunk> chunks = make_chunks(params);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const Chunk& chunk = chunks[c];
      const RAdamScalars& k = scalars[chunk.tensor];
      float* p = params[chunk.tensor].data_ptr<float>();
      const float* g = grads_laid_out[chunk.tensor].const_data_ptr<float>();
      float* m = exp_avgs[chunk.tensor].data_ptr<float>();
      float* v = exp_avg_sqs[chunk.tensor].data_ptr<float>();
      const bool low = k.lerp_weight < 0.5f;
      if (low && k.rectified) radam_dispatch<true, true>(p, g, m, v, chunk.begin, chunk.end, k, coupled, maximize);
      else if (low) radam_dispatch<true, false>(p, g, m, v, chunk.begin, chunk.end, k, coupled, maximize);
      else if (k.rectified) radam_dispatch<false, true>(p, g, m, v, chunk.begin, chunk.end, k, coupled, maximize);
      else radam_dispatch<false, false>(p, g, m, v, chunk.begin, chunk.end, k, coupled, maximize);
    }
  });
  commit_steps(steps);  // after the update: an error before it leaves every counter as it was
}

}  // namespace arvc_fused
