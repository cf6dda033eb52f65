// Flush-to-zero / denormals-are-zero on every intra-op thread, not only the calling one.
//
// torch.set_flush_denormal sets the MXCSR register of the thread that calls it; the OpenMP workers that
// run torch's parallel loops keep theirs, so with 2 threads half of a large tensor keeps its denormals
// and results depend on the thread count. These ops set (and restore) the FTZ|DAZ bits on the calling
// thread and on each worker of the intra-op pool: at::parallel_for over get_num_threads() items with
// grain 1 hands item i to worker i. x86 only: elsewhere they return an empty list (the Python side then
// falls back to torch.set_flush_denormal).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define ARVC_HAS_MXCSR 1
#endif

namespace arvc_fused {

#ifdef ARVC_HAS_MXCSR
constexpr unsigned kFlushBits = 0x8040u;  // FTZ (bit 15) | DAZ (bit 6)

inline int64_t swap_flush_bits(int64_t bits) {
  const unsigned csr = _mm_getcsr();
  _mm_setcsr((csr & ~kFlushBits) | (static_cast<unsigned>(bits) & kFlushBits));
  return static_cast<int64_t>(csr & kFlushBits);
}
#endif

// Sets FTZ|DAZ on (or off) everywhere; returns the previous bits: [calling thread, worker 0, 1, ...].
inline std::vector<int64_t> set_flush_denormal_all(bool on) {
#ifdef ARVC_HAS_MXCSR
  const int64_t bits = on ? kFlushBits : 0;
  const int64_t workers = at::get_num_threads();
  std::vector<int64_t> previous(workers + 1, 0);
  previous[0] = swap_flush_bits(bits);
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) previous[i + 1] = swap_flush_bits(bits);
  });
  return previous;
#else
  (void)on;
  return {};
#endif
}

// Restores what set_flush_denormal_all returned (workers first: the caller is worker 0 of the pool too).
inline void restore_flush_denormal_all(c10::IntArrayRef previous) {
#ifdef ARVC_HAS_MXCSR
  if (previous.empty()) return;
  const int64_t workers = static_cast<int64_t>(previous.size()) - 1;
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) swap_flush_bits(previous[i + 1]);
  });
  swap_flush_bits(previous[0]);
#else
  (void)previous;
#endif
}

}  // namespace arvc_fused
