// AnyPrecisionAdamW (arvc.optim.anyprecision_adamw's single-tensor loop, in one pass).
#pragma once

#include "common.h"

namespace arvc_fused {

constexpr int kMomentum = 0, kVariance = 1;  // lanes of the rounding hash (anyprecision_adamw.py)

// --- AnyPrecisionAdamW ----------------------------------------------------------------------------------
// One tensor's step: its row of the scalar table (AdamScalars: arvc.optim._fused_args.ANY_PRECISION_ADAMW)
// and its stochastic-rounding key (arvc.optim._fused_args.rounding_keys).
struct AdamStep : AdamScalars {
  uint32_t rounding_key;
};

// The common storage layouts (float32 or bfloat16 parameters, float32 or bfloat16 moments, bfloat16
// Kahan buffer) in one loop: every element is loaded once, updated in registers, stored once.
struct Float32Storage {
  using raw = float;
  static ARVC_INLINE float load(float x) { return x; }
};

struct BFloat16Storage {
  using raw = uint16_t;
  static ARVC_INLINE float load(uint16_t x) { return bf16_to_float(x); }
};

ARVC_INLINE uint16_t bf16_stochastic(float value, uint32_t random) {
  const uint32_t u = float_bits(value);
  const uint32_t rounded = (u + (random & 0xFFFFu)) & 0xFFFF0000u;
  const bool finite = (u & 0x7F800000u) != 0x7F800000u && (rounded & 0x7F800000u) != 0x7F800000u;
  return finite ? static_cast<uint16_t>(rounded >> 16) : bf16_nearest(value);
}

// The bf16 stores without their rare special cases (NaN/inf inputs, a finite value rounding up to inf):
// they cost as much as the rest of the update, so the loop below uses these, flags a block where a
// special case could have occurred, and redoes that block's stores carefully from float32 copies.
// A block needs the careful redo if any value's exponent is all ones (inf/NaN): the flag keeps the largest
// exponent field seen (a max is cheaper in the loop than compare-and-or).
constexpr uint32_t kExponent = 0x7F800000u;

ARVC_INLINE void note_exponent(uint32_t bits, uint32_t& flag) { flag = std::max(flag, bits & kExponent); }

ARVC_INLINE uint16_t bf16_nearest_finite(uint32_t u) {
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

template <class Storage, bool STOCHASTIC>
ARVC_INLINE void store_fast(typename Storage::raw* dst, float value, uint32_t noise, uint32_t& flag) {
  if constexpr (std::is_same_v<Storage, Float32Storage>) {
    *dst = value;
  } else if constexpr (STOCHASTIC) {
    const uint32_t u = float_bits(value);
    const uint32_t rounded = (u + noise) & 0xFFFF0000u;
    note_exponent(u, flag);
    note_exponent(rounded, flag);
    *dst = static_cast<uint16_t>(rounded >> 16);
  } else {
    const uint32_t u = float_bits(value);
    note_exponent(u, flag);
    *dst = bf16_nearest_finite(u);
  }
}

template <class Storage, bool STOCHASTIC>
ARVC_INLINE void store_careful(typename Storage::raw* dst, float value, uint32_t noise) {
  if constexpr (std::is_same_v<Storage, Float32Storage>) {
    *dst = value;
  } else if constexpr (STOCHASTIC) {
    *dst = bf16_stochastic(value, noise);
  } else {
    *dst = bf16_nearest(value);
  }
}

template <class Param, class State, bool KAHAN, bool STOCHASTIC, bool LOW_WEIGHT>
void adamw_range(typename Param::raw* __restrict__ p, const typename Param::raw* __restrict__ g,
                 typename State::raw* __restrict__ m, typename State::raw* __restrict__ v,
                 uint16_t* __restrict__ c, int64_t begin, int64_t end, const AdamStep& k) {
  constexpr bool kLowParam = !std::is_same_v<Param, Float32Storage>;
  constexpr bool kLowState = !std::is_same_v<State, Float32Storage>;
  const float w = k.lerp_weight, decay = k.decay, beta2 = k.beta2, one_minus_beta2 = k.one_minus_beta2,
              eps = k.eps, bias_correction2_sqrt = k.bias_correction2_sqrt, step_size = k.step_size;
  const uint32_t key = k.rounding_key;
  alignas(64) float m_kept[kBlock], v_kept[kBlock], master_kept[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t e = std::min(end, b + kBlock);
    uint32_t flag = 0;
    for (int64_t j = b; j < e; ++j) {
      const float grad = Param::load(g[j]);
      const float m_old = State::load(m[j]);
      const float momentum = LOW_WEIGHT ? m_old + w * (grad - m_old) : grad - (grad - m_old) * (1.0f - w);
      float variance = State::load(v[j]) * beta2;
      variance = variance + one_minus_beta2 * grad * grad;
      const uint32_t bits = STOCHASTIC ? mix32(static_cast<uint32_t>(j) ^ key) : 0u;
      store_fast<State, STOCHASTIC>(&m[j], momentum, bf16_noise(bits, kMomentum), flag);
      store_fast<State, STOCHASTIC>(&v[j], variance, bf16_noise(bits, kVariance), flag);
      const float denom = std::sqrt(variance) / bias_correction2_sqrt + eps;
      float master = Param::load(p[j]);
      if constexpr (KAHAN) master = master + bf16_to_float(c[j]);
      master = master * decay;
      master = master + step_size * (momentum / denom);
      if constexpr (kLowState) {
        m_kept[j - b] = momentum;
        v_kept[j - b] = variance;
      }
      if constexpr (!kLowParam) {
        p[j] = master;
      } else {
        master_kept[j - b] = master;
        const uint32_t u = float_bits(master);
        const uint16_t rounded = bf16_nearest_finite(u);
        note_exponent(u, flag);
        p[j] = rounded;
        // The residual is NaN only if the master value is inf/NaN (noted above); a finite master that
        // rounds to inf leaves -inf, which both roundings store alike.
        if constexpr (KAHAN) c[j] = bf16_nearest_finite(float_bits(master - bf16_to_float(rounded)));
      }
    }
    if (!(kLowParam || kLowState) || flag != kExponent) continue;
    for (int64_t j = b; j < e; ++j) {  // rare: redo this block's stores with every special case handled
      const uint32_t bits = STOCHASTIC ? mix32(static_cast<uint32_t>(j) ^ key) : 0u;
      if constexpr (kLowState) {
        store_careful<State, STOCHASTIC>(&m[j], m_kept[j - b], bf16_noise(bits, kMomentum));
        store_careful<State, STOCHASTIC>(&v[j], v_kept[j - b], bf16_noise(bits, kVariance));
      }
      if constexpr (kLowParam) {
        const float master = master_kept[j - b];
        p[j] = bf16_nearest(master);
        if constexpr (KAHAN) c[j] = bf16_nearest(master - bf16_to_float(p[j]));
      }
    }
  }
}

template <class T>
inline typename T::raw* raw_ptr(const Tensor& t) {
  if constexpr (std::is_same_v<T, Float32Storage>) {
    return t.data_ptr<float>();
  } else {
    return bf16_bits_mut(t);
  }
}

template <class Param, class State, bool KAHAN>
void adamw_chunk_typed(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                       const Tensor& c, int64_t begin, int64_t end, const AdamStep& k, bool low,
                       bool stochastic) {
  auto* p = raw_ptr<Param>(param);
  auto* g = raw_ptr<Param>(grad);
  auto* mp = raw_ptr<State>(m);
  auto* vp = raw_ptr<State>(v);
  uint16_t* cp = KAHAN ? bf16_bits_mut(c) : nullptr;
  if (stochastic && low) adamw_range<Param, State, KAHAN, true, true>(p, g, mp, vp, cp, begin, end, k);
  else if (stochastic) adamw_range<Param, State, KAHAN, true, false>(p, g, mp, vp, cp, begin, end, k);
  else if (low) adamw_range<Param, State, KAHAN, false, true>(p, g, mp, vp, cp, begin, end, k);
  else adamw_range<Param, State, KAHAN, false, false>(p, g, mp, vp, cp, begin, end, k);
}

// Runs the one-loop kernel when the layout is a common one; false means "use the blocked path".
bool adamw_chunk_fast(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                      const Tensor& c, int64_t begin, int64_t end, const AdamStep& k, bool low,
                      bool stochastic) {
  const auto pt = param.scalar_type(), mt = m.scalar_type(), vt = v.scalar_type();
  const bool kahan = c.defined();
  if (mt != vt || (kahan && c.scalar_type() != ScalarType::BFloat16)) return false;
  const bool state_f32 = mt == ScalarType::Float, state_bf16 = mt == ScalarType::BFloat16;
  if (pt == ScalarType::Float && state_f32) {
    adamw_chunk_typed<Float32Storage, Float32Storage, false>(param, grad, m, v, c, begin, end, k, low, stochastic);
  } else if (pt == ScalarType::Float && state_bf16) {
    adamw_chunk_typed<Float32Storage, BFloat16Storage, false>(param, grad, m, v, c, begin, end, k, low, stochastic);
  } else if (pt == ScalarType::BFloat16 && state_f32 && kahan) {
    adamw_chunk_typed<BFloat16Storage, Float32Storage, true>(param, grad, m, v, c, begin, end, k, low, stochastic);
  } else if (pt == ScalarType::BFloat16 && state_f32) {
    adamw_chunk_typed<BFloat16Storage, Float32Storage, false>(param, grad, m, v, c, begin, end, k, low, stochastic);
  } else if (pt == ScalarType::BFloat16 && state_bf16 && kahan) {
    adamw_chunk_typed<BFloat16Storage, BFloat16Storage, true>(param, grad, m, v, c, begin, end, k, low, stochastic);
  } else if (pt == ScalarType::BFloat16 && state_bf16) {
    adamw_chunk_typed<BFloat16Storage, BFloat16Storage, false>(param, grad, m, v, c, begin, end, k, low, stochastic);
  } else {
    return false;
  }
  return true;
}


// Checked, and the scalars and keys computed, by arvc.optim._fused_args; `low_weight` likewise decided there.
void any_precision_adamw_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                          at::TensorList exp_avg_sqs, const c10::List<std::optional<Tensor>>& compensations,
                          at::TensorList steps, const Tensor& scalar_table, const Tensor& rounding_keys, bool low_weight,
                          bool stochastic_rounding) {
  const size_t count = params.size();
  const std::vector<AdamScalars> rows = scalar_rows<AdamScalars>(scalar_table, count);
  TORCH_CHECK(rounding_keys.scalar_type() == ScalarType::Long && rounding_keys.numel() == static_cast<int64_t>(count) &&
                  rounding_keys.is_contiguous(),
              "arvc fused AnyPrecisionAdamW: one int64 rounding key per tensor");
  const int64_t* keys = rounding_keys.const_data_ptr<int64_t>();
  std::vector<AdamStep> scalars(count);
  std::vector<Tensor> kahan(count);
  for (size_t i = 0; i < count; ++i) {
    static_cast<AdamScalars&>(scalars[i]) = rows[i];
    scalars[i].rounding_key = static_cast<uint32_t>(keys[i]);
    const std::optional<Tensor> compensation = compensations.get(i);
    if (compensation.has_value() && compensation->defined()) kahan[i] = *compensation;
  }
  const std::vector<Chunk> chunks = make_chunks(params);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    alignas(64) float p_scratch[kBlock], g_scratch[kBlock], m_scratch[kBlock], v_scratch[kBlock],
        c_scratch[kBlock];
    for (int64_t c = first; c < last; ++c) {
      const Chunk& chunk = chunks[c];
      const Tensor& param = params[chunk.tensor];
      const Tensor& exp_avg = exp_avgs[chunk.tensor];
      const Tensor& exp_avg_sq = exp_avg_sqs[chunk.tensor];
      const Tensor& compensation = kahan[chunk.tensor];
      const AdamStep& k = scalars[chunk.tensor];
      const bool low_precision_param = param.scalar_type() != ScalarType::Float;
      if (adamw_chunk_fast(param, grads[chunk.tensor], exp_avg, exp_avg_sq, compensation, chunk.begin,
                           chunk.end, k, low_weight, stochastic_rounding)) {
        continue;
      }
      // Other layouts (float16 anywhere, mixed moment dtypes): blocks through float32 scratch.
      for (int64_t b = chunk.begin; b < chunk.end; b += kBlock) {
        const int64_t n = std::min(kBlock, chunk.end - b);
        float* p = block_of(param, b, n, p_scratch);
        const float* g = block_of(grads[chunk.tensor], b, n, g_scratch);
        float* m = block_of(exp_avg, b, n, m_scratch);
        float* v = block_of(exp_avg_sq, b, n, v_scratch);
        if (compensation.defined()) {
          load_any(compensation, b, n, c_scratch);
          for (int64_t j = 0; j < n; ++j) p[j] = p[j] + c_scratch[j];
        }
        // The one-pass loop itself, on the float32 views of this block.
        using F32 = Float32Storage;
        if (low_weight) adamw_range<F32, F32, false, false, true>(p, g, m, v, nullptr, 0, n, k);
        else adamw_range<F32, F32, false, false, false>(p, g, m, v, nullptr, 0, n, k);
        if (m == m_scratch) store_rounded(m, n, exp_avg, b, stochastic_rounding, k.rounding_key, kMomentum);
        if (v == v_scratch) store_rounded(v, n, exp_avg_sq, b, stochastic_rounding, k.rounding_key, kVariance);
        if (low_precision_param) {
          store_nearest(p, n, param, b);
          if (compensation.defined()) {
            // What rounding the parameter dropped is carried into the next step.
            load_any(param, b, n, c_scratch);
            for (int64_t j = 0; j < n; ++j) c_scratch[j] = p[j] - c_scratch[j];
            store_nearest(c_scratch, n, compensation, b);
          }
        }
      }
    }
  });
  commit_steps(steps);
}

}  // namespace arvc_fused
