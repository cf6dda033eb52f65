// arvc's fused CPU optimizer steps (AdaBelief/AdaBeliefV2, AnyPrecisionAdamW, RAdam).
//
// Why a hand-written kernel: an optimizer step is memory-bound. The foreach path reads and writes every
// buffer once per torch op (8-12 passes over memory); this kernel makes one pass: each element of the
// parameter, gradient and state is loaded once, updated in registers and stored once, and all tensors
// of a step are processed in one parallel region (at::parallel_for over fixed-size chunks).
//
// The arithmetic mirrors the single-tensor Python reference op for op (same float32 operations in the
// same order; no FMA contraction: built with -ffp-contract=off), and stochastic rounding uses the same
// counter-based hash as arvc.optim._functional, so the paths agree to float32 rounding.
//
// Registered as torch ops (torch.ops.arvc_fused.*) so no pybind11 headers are needed: builds in seconds.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

// Small helpers must be inlined into the element loops, or those loops do not vectorize.
#define ARVC_INLINE inline __attribute__((always_inline))

namespace {

using at::Tensor;
using c10::ScalarType;

constexpr int64_t kChunk = 1 << 15;  // elements per parallel work item
constexpr int64_t kBlock = 1024;     // elements per register/L1 block inside a chunk

// --- counter-based random bits (same as arvc.optim._functional.rounding_seed / random_bits) -----------
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint32_t rounding_key(int64_t seed, int64_t param_index, int64_t step, int64_t buffer_id) {
  uint64_t x = splitmix64(static_cast<uint64_t>(seed));
  x = splitmix64(x ^ static_cast<uint64_t>(param_index));
  x = splitmix64(x ^ static_cast<uint64_t>(step));
  x = splitmix64(x ^ static_cast<uint64_t>(buffer_id));
  return static_cast<uint32_t>(x & 0x7FFFFFFFFFFFFFFFull);  // low 32 bits of the 63-bit seed
}

ARVC_INLINE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x45d9f3bu;
  x ^= x >> 16;
  x *= 0x45d9f3bu;
  x ^= x >> 16;
  return x;
}

ARVC_INLINE uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

ARVC_INLINE float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// --- typed loads and stores of one block --------------------------------------------------------------
// bf16 is handled as raw bits with branch-free conversions, so the compiler vectorizes these loops.
ARVC_INLINE float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

ARVC_INLINE uint16_t bf16_nearest(float f) {  // c10's round_to_nearest_even (what tensor.copy_ does)
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

inline const uint16_t* bf16_bits(const Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.const_data_ptr<c10::BFloat16>());
}

inline uint16_t* bf16_bits_mut(const Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.data_ptr<c10::BFloat16>());
}

void load_any(const Tensor& t, int64_t offset, int64_t n, float* __restrict__ dst) {
  switch (t.scalar_type()) {
    case ScalarType::BFloat16: {
      const uint16_t* __restrict__ src = bf16_bits(t) + offset;
      for (int64_t j = 0; j < n; ++j) dst[j] = bf16_to_float(src[j]);
      return;
    }
    case ScalarType::Half: {
      const c10::Half* __restrict__ src = t.const_data_ptr<c10::Half>() + offset;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
      return;
    }
    default:
      std::memcpy(dst, t.const_data_ptr<float>() + offset, n * sizeof(float));
  }
}

void store_nearest(const float* __restrict__ src, int64_t n, const Tensor& t, int64_t offset) {
  switch (t.scalar_type()) {
    case ScalarType::BFloat16: {
      uint16_t* __restrict__ dst = bf16_bits_mut(t) + offset;
      for (int64_t j = 0; j < n; ++j) dst[j] = bf16_nearest(src[j]);
      return;
    }
    case ScalarType::Half: {
      c10::Half* __restrict__ dst = t.data_ptr<c10::Half>() + offset;
      for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<c10::Half>(src[j]);
      return;
    }
    default:
      std::memcpy(t.data_ptr<float>() + offset, src, n * sizeof(float));
  }
}

// bf16 is the top half of an fp32 word: add 16 random bits below it and truncate. Non-finite values,
// and finite ones that would round up to inf, are rounded to nearest instead (as the reference).
void store_stochastic_bf16(const float* __restrict__ src, int64_t n, uint16_t* __restrict__ dst, int64_t base,
                           uint32_t key) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = float_bits(src[j]);
    const uint32_t noise = mix32(static_cast<uint32_t>(base + j) ^ key) & 0xFFFFu;
    const uint32_t rounded = (u + noise) & 0xFFFF0000u;
    const bool finite = (u & 0x7F800000u) != 0x7F800000u && (rounded & 0x7F800000u) != 0x7F800000u;
    dst[j] = finite ? static_cast<uint16_t>(rounded >> 16) : bf16_nearest(src[j]);
  }
}

// fp16: pick between the nearest value and its neighbour on the far side of src, with probability
// proportional to the distance (the reference does this with torch.nextafter).
void store_stochastic_half(const float* src, int64_t n, c10::Half* dst, int64_t base, uint32_t key) {
  for (int64_t j = 0; j < n; ++j) {
    const float value = src[j];
    const c10::Half nearest = static_cast<c10::Half>(value);
    const float nearest_f = static_cast<float>(nearest);
    dst[j] = nearest;
    if (!std::isfinite(nearest_f)) continue;
    const float residual = value - nearest_f;
    const uint16_t h = nearest.x;
    uint16_t next;
    if ((h & 0x7FFFu) == 0) {
      next = residual >= 0.0f ? 0x0001u : 0x8001u;
    } else if (((h & 0x8000u) == 0) == (residual >= 0.0f)) {
      next = h + 1;  // away from zero
    } else {
      next = h - 1;  // toward zero
    }
    const c10::Half neighbour(next, c10::Half::from_bits());
    const float neighbour_f = static_cast<float>(neighbour);
    if (!std::isfinite(neighbour_f)) continue;
    const float gap = std::abs(neighbour_f - nearest_f);
    const float probability = gap > 0.0f ? std::abs(residual) / gap : 0.0f;
    const uint32_t bits = mix32(static_cast<uint32_t>(base + j) ^ key);
    const float uniform = static_cast<float>(bits >> 8) * 5.9604644775390625e-08f;  // 2^-24
    if (uniform < probability) dst[j] = neighbour;
  }
}

void store_rounded(const float* src, int64_t n, const Tensor& t, int64_t offset, bool stochastic,
                   uint32_t key) {
  if (stochastic && t.scalar_type() == ScalarType::BFloat16) {
    store_stochastic_bf16(src, n, bf16_bits_mut(t) + offset, offset, key);
  } else if (stochastic && t.scalar_type() == ScalarType::Half) {
    store_stochastic_half(src, n, t.data_ptr<c10::Half>() + offset, offset, key);
  } else {
    store_nearest(src, n, t, offset);
  }
}

// A float32 view of a block: the tensor's own memory when it is float32, else a scratch copy.
inline float* block_of(const Tensor& t, int64_t offset, int64_t n, float* scratch) {
  if (t.scalar_type() == ScalarType::Float) return t.data_ptr<float>() + offset;
  load_any(t, offset, n, scratch);
  return scratch;
}

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

std::vector<Chunk> make_chunks(at::TensorList params) {
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < static_cast<int64_t>(params.size()); ++i) {
    const int64_t numel = params[i].numel();
    for (int64_t begin = 0; begin < numel; begin += kChunk) {
      chunks.push_back({i, begin, std::min(numel, begin + kChunk)});
    }
  }
  return chunks;
}

// Elements are visited in memory order, so state must be laid out exactly like its parameter; a gradient
// that is not gets a laid-out copy (matching_grad).
void check_tensor(const Tensor& t, const Tensor& param, const char* what, bool same_layout = true) {
  TORCH_CHECK(t.device().is_cpu(), "arvc fused step: ", what, " must be on the CPU");
  TORCH_CHECK(t.numel() == param.numel(), "arvc fused step: ", what, " has ", t.numel(),
              " elements, its parameter ", param.numel());
  TORCH_CHECK(!same_layout || t.strides() == param.strides(), "arvc fused step: ", what,
              " must have its parameter's memory layout (strides ", t.strides(), " vs ", param.strides(), ")");
  const auto type = t.scalar_type();
  TORCH_CHECK(type == ScalarType::Float || type == ScalarType::BFloat16 || type == ScalarType::Half,
              "arvc fused step: ", what, " must be float32, bfloat16 or float16, got ", type);
}

void check_param(const Tensor& param) {
  TORCH_CHECK(param.is_non_overlapping_and_dense(),
              "arvc fused step: parameters must be dense tensors (no gaps or overlaps)");
}

// A gradient laid out like its parameter (a copy only when the layouts differ).
Tensor matching_grad(const Tensor& grad, const Tensor& param) {
  if (grad.strides() == param.strides()) return grad;
  return at::empty_like(param, grad.options()).copy_(grad);
}

int64_t advance_step(const Tensor& step) {
  TORCH_CHECK(step.device().is_cpu() && step.scalar_type() == ScalarType::Float && step.numel() == 1,
              "arvc fused step: step counters must be float32 scalars on the CPU");
  float* value = step.data_ptr<float>();
  *value += 1.0f;
  return static_cast<int64_t>(*value);
}

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
      belief = std::max(smax[j], belief);
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
    if (amsgrad) check_tensor(max_exp_avg_vars[i], param, "state");
    grads_laid_out[i] = matching_grad(grads[i], param);
    const double step = static_cast<double>(advance_step(steps[i]));
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
}

// --- AnyPrecisionAdamW ----------------------------------------------------------------------------------
struct AdamScalars {
  float decay, lerp_weight, beta2, one_minus_beta2, eps, bias_correction2_sqrt, step_size;
  uint32_t momentum_key, variance_key;
};

template <bool LOW_WEIGHT>
void adamw_block(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                 float* __restrict__ v, int64_t n, const AdamScalars& k) {
  const float w = k.lerp_weight, decay = k.decay, beta2 = k.beta2, one_minus_beta2 = k.one_minus_beta2,
              eps = k.eps, bias_correction2_sqrt = k.bias_correction2_sqrt, step_size = k.step_size;
  for (int64_t j = 0; j < n; ++j) {
    // torch.lerp's two formulas, chosen by the weight, so the result matches it exactly.
    const float momentum = LOW_WEIGHT ? m[j] + w * (g[j] - m[j]) : g[j] - (g[j] - m[j]) * (1.0f - w);
    float variance = v[j] * beta2;
    variance = variance + one_minus_beta2 * g[j] * g[j];
    m[j] = momentum;
    v[j] = variance;
    const float denom = std::sqrt(variance) / bias_correction2_sqrt + eps;
    const float param = p[j] * decay;
    p[j] = param + step_size * (momentum / denom);
  }
}

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

template <class Storage, bool STOCHASTIC>
ARVC_INLINE void store_one(typename Storage::raw* dst, float value, uint32_t index, uint32_t key) {
  if constexpr (std::is_same_v<Storage, Float32Storage>) {
    *dst = value;
  } else if constexpr (STOCHASTIC) {
    *dst = bf16_stochastic(value, mix32(index ^ key));
  } else {
    *dst = bf16_nearest(value);
  }
}

template <class Param, class State, bool KAHAN, bool STOCHASTIC, bool LOW_WEIGHT>
void adamw_range(typename Param::raw* __restrict__ p, const typename Param::raw* __restrict__ g,
                 typename State::raw* __restrict__ m, typename State::raw* __restrict__ v,
                 uint16_t* __restrict__ c, int64_t begin, int64_t end, const AdamScalars& k) {
  const float w = k.lerp_weight, decay = k.decay, beta2 = k.beta2, one_minus_beta2 = k.one_minus_beta2,
              eps = k.eps, bias_correction2_sqrt = k.bias_correction2_sqrt, step_size = k.step_size;
  const uint32_t momentum_key = k.momentum_key, variance_key = k.variance_key;
  for (int64_t j = begin; j < end; ++j) {
    const float grad = Param::load(g[j]);
    const float m_old = State::load(m[j]);
    const float momentum = LOW_WEIGHT ? m_old + w * (grad - m_old) : grad - (grad - m_old) * (1.0f - w);
    float variance = State::load(v[j]) * beta2;
    variance = variance + one_minus_beta2 * grad * grad;
    store_one<State, STOCHASTIC>(&m[j], momentum, static_cast<uint32_t>(j), momentum_key);
    store_one<State, STOCHASTIC>(&v[j], variance, static_cast<uint32_t>(j), variance_key);
    const float denom = std::sqrt(variance) / bias_correction2_sqrt + eps;
    float master = Param::load(p[j]);
    if constexpr (KAHAN) master = master + bf16_to_float(c[j]);
    master = master * decay;
    master = master + step_size * (momentum / denom);
    if constexpr (std::is_same_v<Param, Float32Storage>) {
      p[j] = master;
    } else {
      const uint16_t rounded = bf16_nearest(master);
      p[j] = rounded;
      if constexpr (KAHAN) c[j] = bf16_nearest(master - bf16_to_float(rounded));
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
                       const Tensor& c, int64_t begin, int64_t end, const AdamScalars& k, bool stochastic) {
  auto* p = raw_ptr<Param>(param);
  auto* g = raw_ptr<Param>(grad);
  auto* mp = raw_ptr<State>(m);
  auto* vp = raw_ptr<State>(v);
  uint16_t* cp = KAHAN ? bf16_bits_mut(c) : nullptr;
  const bool low = k.lerp_weight < 0.5f;
  if (stochastic && low) adamw_range<Param, State, KAHAN, true, true>(p, g, mp, vp, cp, begin, end, k);
  else if (stochastic) adamw_range<Param, State, KAHAN, true, false>(p, g, mp, vp, cp, begin, end, k);
  else if (low) adamw_range<Param, State, KAHAN, false, true>(p, g, mp, vp, cp, begin, end, k);
  else adamw_range<Param, State, KAHAN, false, false>(p, g, mp, vp, cp, begin, end, k);
}

// Runs the one-loop kernel when the layout is a common one; false means "use the blocked path".
bool adamw_chunk_fast(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                      const Tensor& c, int64_t begin, int64_t end, const AdamScalars& k, bool stochastic) {
  const auto pt = param.scalar_type(), mt = m.scalar_type(), vt = v.scalar_type();
  const bool kahan = c.defined();
  if (mt != vt || (kahan && c.scalar_type() != ScalarType::BFloat16)) return false;
  const bool state_f32 = mt == ScalarType::Float, state_bf16 = mt == ScalarType::BFloat16;
  if (pt == ScalarType::Float && state_f32) {
    adamw_chunk_typed<Float32Storage, Float32Storage, false>(param, grad, m, v, c, begin, end, k, stochastic);
  } else if (pt == ScalarType::Float && state_bf16) {
    adamw_chunk_typed<Float32Storage, BFloat16Storage, false>(param, grad, m, v, c, begin, end, k, stochastic);
  } else if (pt == ScalarType::BFloat16 && state_f32 && kahan) {
    adamw_chunk_typed<BFloat16Storage, Float32Storage, true>(param, grad, m, v, c, begin, end, k, stochastic);
  } else if (pt == ScalarType::BFloat16 && state_f32) {
    adamw_chunk_typed<BFloat16Storage, Float32Storage, false>(param, grad, m, v, c, begin, end, k, stochastic);
  } else if (pt == ScalarType::BFloat16 && state_bf16 && kahan) {
    adamw_chunk_typed<BFloat16Storage, BFloat16Storage, true>(param, grad, m, v, c, begin, end, k, stochastic);
  } else if (pt == ScalarType::BFloat16 && state_bf16) {
    adamw_chunk_typed<BFloat16Storage, BFloat16Storage, false>(param, grad, m, v, c, begin, end, k, stochastic);
  } else {
    return false;
  }
  return true;
}

constexpr int64_t kMomentum = 0, kVariance = 1;  // buffer ids of the rounding seed (anyprecision_adamw.py)

void any_precision_adamw_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                          at::TensorList exp_avg_sqs, const c10::List<std::optional<Tensor>>& compensations,
                          at::TensorList steps, at::IntArrayRef param_indices, double lr, double beta1,
                          double beta2, double eps, double weight_decay, int64_t seed,
                          bool stochastic_rounding) {
  const size_t count = params.size();
  TORCH_CHECK(grads.size() == count && exp_avgs.size() == count && exp_avg_sqs.size() == count &&
                  compensations.size() == count && steps.size() == count && param_indices.size() == count,
              "arvc fused AnyPrecisionAdamW: tensor lists differ in length");
  std::vector<Tensor> grads_laid_out(count), kahan(count);
  std::vector<AdamScalars> scalars(count);
  for (size_t i = 0; i < count; ++i) {
    const Tensor& param = params[i];
    check_param(param);
    check_tensor(param, param, "parameter");
    check_tensor(grads[i], param, "gradient", false);
    check_tensor(exp_avgs[i], param, "exp_avg");
    check_tensor(exp_avg_sqs[i], param, "exp_avg_sq");
    const std::optional<Tensor> compensation = compensations.get(i);
    if (compensation.has_value() && compensation->defined()) {
      check_tensor(*compensation, param, "compensation");
      TORCH_CHECK(param.scalar_type() != ScalarType::Float,
                  "arvc fused AnyPrecisionAdamW: float32 parameters have no compensation buffer");
      kahan[i] = *compensation;
    }
    grads_laid_out[i] = matching_grad(grads[i], param);
    const int64_t step = advance_step(steps[i]);
    const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
    scalars[i] = {static_cast<float>(1.0 - lr * weight_decay),
                  static_cast<float>(1.0 - beta1),
                  static_cast<float>(beta2),
                  static_cast<float>(1.0 - beta2),
                  static_cast<float>(eps),
                  static_cast<float>(std::pow(1.0 - std::pow(beta2, static_cast<double>(step)), 0.5)),
                  static_cast<float>(-(lr / bias_correction1)),
                  rounding_key(seed, param_indices[i], step, kMomentum),
                  rounding_key(seed, param_indices[i], step, kVariance)};
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
      const AdamScalars& k = scalars[chunk.tensor];
      const bool low_precision_param = param.scalar_type() != ScalarType::Float;
      if (adamw_chunk_fast(param, grads_laid_out[chunk.tensor], exp_avg, exp_avg_sq, compensation, chunk.begin,
                           chunk.end, k, stochastic_rounding)) {
        continue;
      }
      // Other layouts (float16 anywhere, mixed moment dtypes): blocks through float32 scratch.
      for (int64_t b = chunk.begin; b < chunk.end; b += kBlock) {
        const int64_t n = std::min(kBlock, chunk.end - b);
        float* p = block_of(param, b, n, p_scratch);
        const float* g = block_of(grads_laid_out[chunk.tensor], b, n, g_scratch);
        float* m = block_of(exp_avg, b, n, m_scratch);
        float* v = block_of(exp_avg_sq, b, n, v_scratch);
        if (compensation.defined()) {
          load_any(compensation, b, n, c_scratch);
          for (int64_t j = 0; j < n; ++j) p[j] = p[j] + c_scratch[j];
        }
        if (k.lerp_weight < 0.5f) adamw_block<true>(p, g, m, v, n, k);
        else adamw_block<false>(p, g, m, v, n, k);
        if (m == m_scratch) store_rounded(m, n, exp_avg, b, stochastic_rounding, k.momentum_key);
        if (v == v_scratch) store_rounded(v, n, exp_avg_sq, b, stochastic_rounding, k.variance_key);
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
}

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
    const double step = static_cast<double>(advance_step(steps[i]));
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
}

}  // namespace

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
}
