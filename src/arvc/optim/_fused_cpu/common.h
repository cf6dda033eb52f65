// Shared by arvc's fused CPU kernels: the rounding hash, typed loads/stores, chunking, argument checks.
#pragma once

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

namespace arvc_fused {

using at::Tensor;
using c10::ScalarType;

constexpr int64_t kChunk = 1 << 15;  // elements per parallel work item
constexpr int64_t kBlock = 1024;     // elements per register/L1 block inside a chunk

// --- counter-based random bits (same as arvc.optim._rounding.rounding_seed / random_bits) -----------
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint32_t rounding_key(int64_t seed, int64_t param_index, int64_t step) {
  uint64_t x = splitmix64(static_cast<uint64_t>(seed));
  x = splitmix64(x ^ static_cast<uint64_t>(param_index));
  x = splitmix64(x ^ static_cast<uint64_t>(step));
  x = splitmix64(x ^ 0ull);  // buffer id 0: both moments share the hash, in different lanes
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

// One hash per element serves both moments of a parameter: lane 0 (momentum) and lane 1 (variance)
// take different bits of it (arvc.optim._rounding.stochastic_round_ does the same).
ARVC_INLINE uint32_t bf16_noise(uint32_t bits, int lane) { return lane ? bits >> 16 : bits & 0xFFFFu; }

ARVC_INLINE uint32_t half_bits(uint32_t bits, int lane) { return lane ? mix32(bits) : bits; }

// bf16 is the top half of an fp32 word: add 16 random bits below it and truncate. Non-finite values,
// and finite ones that would round up to inf, are rounded to nearest instead (as the reference).
void store_stochastic_bf16(const float* __restrict__ src, int64_t n, uint16_t* __restrict__ dst, int64_t base,
                           uint32_t key, int lane) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t u = float_bits(src[j]);
    const uint32_t noise = bf16_noise(mix32(static_cast<uint32_t>(base + j) ^ key), lane);
    const uint32_t rounded = (u + noise) & 0xFFFF0000u;
    const bool finite = (u & 0x7F800000u) != 0x7F800000u && (rounded & 0x7F800000u) != 0x7F800000u;
    dst[j] = finite ? static_cast<uint16_t>(rounded >> 16) : bf16_nearest(src[j]);
  }
}

// fp16: pick between the nearest value and its neighbour on the far side of src, with probability
// proportional to the distance (the reference does this with torch.nextafter).
void store_stochastic_half(const float* src, int64_t n, c10::Half* dst, int64_t base, uint32_t key, int lane) {
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
    const uint32_t bits = half_bits(mix32(static_cast<uint32_t>(base + j) ^ key), lane);
    const float uniform = static_cast<float>(bits >> 8) * 5.9604644775390625e-08f;  // 2^-24
    if (uniform < probability) dst[j] = neighbour;
  }
}

void store_rounded(const float* src, int64_t n, const Tensor& t, int64_t offset, bool stochastic, uint32_t key,
                   int lane) {
  if (stochastic && t.scalar_type() == ScalarType::BFloat16) {
    store_stochastic_bf16(src, n, bf16_bits_mut(t) + offset, offset, key, lane);
  } else if (stochastic && t.scalar_type() == ScalarType::Half) {
    store_stochastic_half(src, n, t.data_ptr<c10::Half>() + offset, offset, key, lane);
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

// The step each parameter is about to take. Counters are only read while the arguments are checked and
// advanced by commit_steps once the update has run, so an error (a refused check, a failed allocation)
// leaves the optimizer untouched.
int64_t next_step(const Tensor& step) {
  TORCH_CHECK(step.device().is_cpu() && step.scalar_type() == ScalarType::Float && step.numel() == 1,
              "arvc fused step: step counters must be float32 scalars on the CPU");
  return static_cast<int64_t>(*step.const_data_ptr<float>() + 1.0f);
}

void commit_steps(at::TensorList steps) {
  for (const Tensor& step : steps) *step.data_ptr<float>() += 1.0f;
}

}  // namespace arvc_fused
