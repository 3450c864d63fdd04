// CPU forward of gather_patches: the picked p x p patches of [B,C,H,W] images into [B,M,C*p*p] rows.
//
// Why it walks the source and not the destination: copying patch after patch reads p-element pieces one image row
// apart, C*p times per patch, too short a run for the hardware prefetcher, so every piece waits for memory (that
// version reached 44% of copy bandwidth). Here each task sweeps one image plane (b, c) top to bottom; every image
// row is read once, left to right, and its picked pieces go to their output rows. The picked pieces of the row
// kAheadRows ahead are prefetched, and only those: prefetching whole rows where a patch row is densely picked
// reads the unpicked half too, and took 1.1-1.2x as long in a standalone copy of this sweep.
// The prefetch must survive compilation: prefetch_row is forced inline, because out of line GCC judged it free
// of side effects and deleted every call (the kernel then ran at 5.5-6 ms instead of 3.6 ms at [256,3,224,224],
// p=16, M=98, 2 threads). The output rows are written a piece at a time, interleaved; for outputs beyond the
// caches the pieces are written with streaming (non-temporal) stores, which skip reading each output line before
// overwriting it and do not evict the image rows still to come (regular stores in this order took 1.5x to 3.7x
// as long). 64-byte AVX-512 streaming stores were tried in place of the 16-byte SSE2 ones: no faster (3.57 ms
// against 3.62 ms). Tasks (planes, or bands of a plane's patch rows when there are few planes) are handed out
// dynamically.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "patch_gather.h"

namespace cgns {
namespace {

// Image rows between a row being copied and the row being prefetched.
constexpr int64_t kAheadRows = 8;
// Outputs at least this large (about one core's L2) are written with streaming stores. Smaller ones may still be
// in cache when their consumer reads them; larger ones are not, and a regular store would first read each output
// line (in this interleaved order that made the whole gather 1.5x slower already at a 2.4 MB output).
constexpr int64_t kStreamBytes = int64_t{1} << 20;
// Parallel tasks per thread wanted when there are fewer image planes than that (planes are then split in bands).
constexpr int64_t kTasksPerThread = 4;
constexpr int64_t kLineBytes = 64;

// Copies one piece of p elements (usually one cache line); inlined, a memcpy call per piece costs more.
template <typename scalar_t>
inline void copy_piece(scalar_t* to, const scalar_t* from, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) to[j] = from[j];
}

// The same with streaming stores; `to` is 16-byte aligned and n * sizeof(scalar_t) a multiple of 64.
template <typename scalar_t>
inline void stream_piece(scalar_t* to, const scalar_t* from, int64_t n) {
#if defined(__SSE2__)
  const int64_t chunks = n * static_cast<int64_t>(sizeof(scalar_t)) / 16;
  for (int64_t j = 0; j < chunks; ++j)
    _mm_stream_si128(reinterpret_cast<__m128i*>(to) + j, _mm_loadu_si128(reinterpret_cast<const __m128i*>(from) + j));
#else
  copy_piece(to, from, n);
#endif
}

// The picks of one patch row of one sample, in source order: first image column of each picked patch and the
// output row it goes to. A patch picked twice appears twice.
template <typename scalar_t>
struct RowPicks {
  std::vector<int64_t> column;
  std::vector<scalar_t*> target;
  int64_t count = 0;
};

template <typename scalar_t>
class PatchGather {
 public:
  PatchGather(const at::Tensor& images, const at::Tensor& index, int64_t patch, at::Tensor& out)
      : batch_(index.size(0)), picked_(index.size(1)), channels_(images.size(1)), height_(images.size(2)),
        width_(images.size(3)), patch_(patch), grid_h_(height_ / patch), grid_w_(width_ / patch),
        src_(images.data_ptr<scalar_t>()), idx_(index.data_ptr<int64_t>()), dst_(out.data_ptr<scalar_t>()),
        order_(batch_ * picked_) {
    const int64_t piece_bytes = patch * static_cast<int64_t>(sizeof(scalar_t));
    stream_ = static_cast<int64_t>(out.nbytes()) >= kStreamBytes && piece_bytes % kLineBytes == 0 &&
              reinterpret_cast<uintptr_t>(dst_) % kLineBytes == 0;
#if !defined(__SSE2__)
    stream_ = false;
#endif

    // Source order of each sample's picks: positions m sorted by (patch number, m).
    at::parallel_for(0, batch_, 16, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t* patch_of = idx_ + b * picked_;
        int64_t* order = order_.data() + b * picked_;
        for (int64_t m = 0; m < picked_; ++m) order[m] = m;
        std::sort(order, order + picked_, [patch_of](int64_t x, int64_t y) {
          return patch_of[x] < patch_of[y] || (patch_of[x] == patch_of[y] && x < y);
        });
      }
    });
  }

  void run() {
    const int64_t planes = batch_ * channels_;
    const int threads = at::get_num_threads();
    const int64_t wanted = kTasksPerThread * threads;
    const int64_t bands = std::min(grid_h_, std::max<int64_t>(1, (wanted + planes - 1) / planes));
    const int64_t num_tasks = planes * bands;
    // Dynamic scheduling (not at::parallel_for's equal static chunks): on a shared machine a thread whose core is
    // busy takes fewer planes instead of making the others wait for it. No ATen calls inside the region.
#pragma omp parallel num_threads(threads) if (threads > 1 && num_tasks > 1 && !at::in_parallel_region())
    {
      RowPicks<scalar_t> current, next;
      current.column.resize(picked_), current.target.resize(picked_);
      next.column.resize(picked_), next.target.resize(picked_);
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < num_tasks; ++task) {
        const int64_t plane = task / bands, band = task % bands;
        sweep(plane, grid_h_ * band / bands, grid_h_ * (band + 1) / bands, current, next);
      }
#if defined(__SSE2__)
      if (stream_) _mm_sfence();  // streaming stores are weakly ordered: publish them before the region ends
#endif
    }
  }

 private:
  void find_picks(int64_t b, int64_t py, RowPicks<scalar_t>& picks) const {
    const int64_t* patch_of = idx_ + b * picked_;
    const int64_t* sorted = order_.data() + b * picked_;
    const int64_t* end = sorted + picked_;
    const int64_t* it = std::lower_bound(sorted, end, py * grid_w_,
                                         [patch_of](int64_t m, int64_t bound) { return patch_of[m] < bound; });
    picks.count = 0;
    for (; it != end && patch_of[*it] < (py + 1) * grid_w_; ++it, ++picks.count) {
      picks.column[picks.count] = (patch_of[*it] - py * grid_w_) * patch_;
      picks.target[picks.count] = dst_ + (b * picked_ + *it) * channels_ * patch_ * patch_;
    }
  }

  // Always inlined: out of line, GCC finds the function free of side effects (a prefetch has none it models)
  // and deletes every call to it; the shipped kernel then ran with no prefetch at all.
  __attribute__((always_inline)) inline void prefetch_row(const scalar_t* row, const RowPicks<scalar_t>& picks) const {
    constexpr int64_t line = kLineBytes / sizeof(scalar_t);
    // One prefetch per line the piece touches (a piece that starts mid-line straddles one more).
    const bool straddles = (reinterpret_cast<uintptr_t>(row) % kLineBytes != 0) || patch_ % line != 0;
    for (int64_t j = 0; j < picks.count; ++j) {
      const scalar_t* piece = row + picks.column[j];
      for (int64_t x = 0; x < patch_; x += line) __builtin_prefetch(piece + x);
      if (straddles) __builtin_prefetch(piece + patch_ - 1);
    }
  }

  // Patch rows [py0, py1) of image plane `plane` = b * C + c.
  void sweep(int64_t plane, int64_t py0, int64_t py1, RowPicks<scalar_t>& current, RowPicks<scalar_t>& next) const {
    const int64_t b = plane / channels_, c = plane % channels_;
    const int64_t ahead = std::min(kAheadRows, patch_);  // stays within the next patch row
    const scalar_t* pixels = src_ + plane * height_ * width_;
    if (py0 < py1) find_picks(b, py0, next);
    for (int64_t py = py0; py < py1; ++py) {
      std::swap(current, next);
      next.count = 0;
      if (py + 1 < grid_h_) find_picks(b, py + 1, next);  // also past py1: the band below is often this thread's next task
      if (current.count == 0) continue;  // nothing picked in this patch row: its pixels are never read
      for (int64_t i = 0; i < patch_; ++i) {
        const int64_t row_ahead = py * patch_ + i + ahead;
        if (i + ahead < patch_) {
          prefetch_row(pixels + row_ahead * width_, current);
        } else if (next.count > 0) {
          prefetch_row(pixels + row_ahead * width_, next);
        }
        const scalar_t* row = pixels + (py * patch_ + i) * width_;
        const int64_t offset = (c * patch_ + i) * patch_;  // of this piece inside an output row (C, p, p)
        if (stream_) {
          for (int64_t j = 0; j < current.count; ++j)
            stream_piece(current.target[j] + offset, row + current.column[j], patch_);
        } else {
          for (int64_t j = 0; j < current.count; ++j)
            copy_piece(current.target[j] + offset, row + current.column[j], patch_);
        }
      }
    }
  }

  const int64_t batch_, picked_, channels_, height_, width_, patch_, grid_h_, grid_w_;
  const scalar_t* src_;
  const int64_t* idx_;
  scalar_t* dst_;
  std::vector<int64_t> order_;  // [B,M]: each sample's pick positions m in source order
  bool stream_ = false;
};

}  // namespace

void image_patch_gather_cpu(const at::Tensor& images, const at::Tensor& index, int64_t patch, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "gather_patches_cpu",
                                  [&] { PatchGather<scalar_t>(images, index, patch, out).run(); });
}

}  // namespace cgns
