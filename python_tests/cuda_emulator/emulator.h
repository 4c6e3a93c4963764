// A CPU stand-in for the parts of the CUDA execution model pyfastseq's kernels use, so that their
// logic can be tested on machines without a GPU (see test_cuda_emulated.py). A launch runs its
// blocks one after another, and a block's threads as fibers (ucontext) on the calling thread:
// __syncthreads, the warp shuffles and votes are real rendezvous, shared memory is one copy per
// kernel (`static`), atomics need no lock. One launch at a time per process. It checks what the
// kernels compute, not how fast, nor anything of the device's memory model beyond barriers. Built
// with AddressSanitizer, it also checks every global and shared memory access, as compute-sanitizer
// would.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <ucontext.h>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMULATOR_ASAN 1
#else
#define CUDA_EMULATOR_ASAN 0
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

inline dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace cuda_emulator {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 << 10;

// One emulated GPU thread: a fiber with its own stack, switched to by the block's scheduler.
struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
  unsigned index = 0;
  bool done = false;
};

struct Scheduler {
  ucontext_t context;
  Fiber* running = nullptr;
  uint64_t progress = 0;  // barrier releases and finished fibers: a round without any is a deadlock
  const void* stack_bottom = nullptr;  // the launching thread's stack, for AddressSanitizer
  size_t stack_size = 0;
};

inline Scheduler scheduler;

// Stack switches are announced to AddressSanitizer (when the kernels are built with it), so that
// it checks each fiber's frames against that fiber's stack.
inline void entered_fiber() {
#if CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler.stack_bottom, &scheduler.stack_size);
#endif
}

inline void leaving_fiber_for_good() {
#if CUDA_EMULATOR_ASAN
  __sanitizer_start_switch_fiber(nullptr, scheduler.stack_bottom, scheduler.stack_size);
#endif
}

// From the scheduler into fiber f, until it yields or finishes.
inline void resume(Fiber& f) {
#if CUDA_EMULATOR_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, f.stack.get(), kStackBytes);
#endif
  swapcontext(&scheduler.context, &f.context);
#if CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

// From the running fiber back to the scheduler, until it is resumed.
inline void yield() {
#if CUDA_EMULATOR_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, scheduler.stack_bottom, scheduler.stack_size);
#endif
  swapcontext(&scheduler.running->context, &scheduler.context);
#if CUDA_EMULATOR_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, &scheduler.stack_bottom, &scheduler.stack_size);
#endif
}

// A reusable barrier for a group whose members may leave (exit the kernel) early, as exited GPU
// threads stop counting towards __syncthreads.
class Barrier {
 public:
  explicit Barrier(int members) : members_(members) {}

  void wait() {
    const uint64_t generation = generation_;
    if (++arrived_ == members_) return release();
    while (generation_ == generation) yield();
  }

  void leave() {
    if (--members_ > 0 && arrived_ == members_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    ++generation_;
    ++scheduler.progress;
  }

  int members_, arrived_ = 0;
  uint64_t generation_ = 0;
};

struct Block {
  explicit Block(int threads) : all(threads), slot(threads) {
    for (int w = 0; w * kWarp < threads; ++w) warps.emplace_back(new Barrier(std::min(kWarp, threads - w * kWarp)));
  }
  Barrier all;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<uint64_t> slot;  // one exchange word per thread
};

inline Block* current_block = nullptr;

inline Barrier& my_warp() { return *current_block->warps[threadIdx.x / kWarp]; }

template <class T>
uint64_t bits_of(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "exchange words hold 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  return bits;
}

template <class T>
T value_of(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// Every thread of `group` posts a word; then each reads what `read` picks; then all move on.
template <class Read>
uint64_t exchange(Barrier& group, uint64_t word, Read read) {
  current_block->slot[threadIdx.x] = word;
  group.wait();
  const uint64_t out = read(current_block->slot);
  group.wait();
  return out;
}

template <class Body>
struct Launch {
  Body* body;
  Block* block;
  Fiber* fiber;
  static void run(int lo, int hi) {  // makecontext passes int arguments: the Launch* in two halves
    const auto* self = reinterpret_cast<Launch*>((static_cast<uintptr_t>(static_cast<unsigned>(hi)) << 32) |
                                                 static_cast<unsigned>(lo));
    entered_fiber();
    (*self->body)();
    self->block->all.leave();
    my_warp().leave();
    self->fiber->done = true;
    ++scheduler.progress;
    leaving_fiber_for_good();
  }  // returns to uc_link, the scheduler
};

inline uint64_t launches_so_far = 0;

// Runs body() as each thread of each block (1-D blocks: the kernels use no other), the blocks one
// after another, in an order shuffled afresh for each launch (a GPU runs them in any order, and a
// kernel whose blocks hand work to each other, like the beam step's merge, must not depend on
// it). A block's threads run one at a time, each until it waits at a barrier or finishes;
// successive rounds go in opposite orders, so a read that misses a barrier after another thread's
// write sees the old value in one of them. Deterministic (the shuffles follow a fixed sequence),
// and a barrier that some thread never reaches aborts instead of hanging.
template <class Body>
void launch(dim3 grid, dim3 block, Body body) {
  gridDim = grid;
  blockDim = block;
  const int threads = static_cast<int>(block.x);
  std::vector<Fiber> team(threads);
  std::vector<dim3> order;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) order.emplace_back(bx, by, bz);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(launches_so_far++));
  for (const dim3& at : order) {
    const unsigned bx = at.x, by = at.y, bz = at.z;
    Block shared(threads);
    current_block = &shared;
    blockIdx = dim3(bx, by, bz);
    std::vector<Launch<Body>> launches(threads);
    for (int t = 0; t < threads; ++t) {
      Fiber& f = team[t];
      f.index = static_cast<unsigned>(t);
      f.done = false;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &scheduler.context;
      launches[t] = {&body, &shared, &f};
      const auto address = reinterpret_cast<uintptr_t>(&launches[t]);
      makecontext(&f.context, reinterpret_cast<void (*)()>(&Launch<Body>::run), 2,
                  static_cast<int>(address & 0xffffffffu), static_cast<int>(address >> 32));
    }
    for (int round = 0, left = threads; left > 0; ++round) {
      const uint64_t before = scheduler.progress;
      left = 0;
      for (int k = 0; k < threads; ++k) {
        Fiber& f = team[round % 2 ? threads - 1 - k : k];
        if (f.done) continue;
        threadIdx = dim3(f.index);
        scheduler.running = &f;
        resume(f);
        left += !f.done;
      }
      if (left > 0 && scheduler.progress == before) {
        std::fprintf(stderr, "cuda emulator: block (%u, %u, %u) is stuck at a barrier that some thread "
                     "never reaches (a divergent __syncthreads or __syncwarp?)\n", bx, by, bz);
        std::abort();
      }
    }
  }
}

}  // namespace cuda_emulator

inline void __syncthreads() { cuda_emulator::current_block->all.wait(); }

inline int __syncthreads_or(int predicate) {
  using namespace cuda_emulator;
  return static_cast<int>(exchange(current_block->all, predicate != 0, [](const std::vector<uint64_t>& slot) {
    uint64_t any = 0;
    for (uint64_t word : slot) any |= word;
    return any;
  }));
}

inline void __syncwarp(unsigned = 0xffffffffu) { cuda_emulator::my_warp().wait(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  using namespace cuda_emulator;
  const int partner = static_cast<int>(threadIdx.x) ^ lane_mask;
  return value_of<T>(exchange(my_warp(), bits_of(v), [&](const std::vector<uint64_t>& slot) { return slot[partner]; }));
}

inline int __any_sync(unsigned, int predicate) {
  using namespace cuda_emulator;
  const int first = static_cast<int>(threadIdx.x) / kWarp * kWarp;
  return static_cast<int>(exchange(my_warp(), predicate != 0, [&](const std::vector<uint64_t>& slot) {
    uint64_t any = 0;
    for (int lane = first; lane < first + kWarp && lane < static_cast<int>(slot.size()); ++lane) any |= slot[lane];
    return any;
  }));
}

inline unsigned __ballot_sync(unsigned, int predicate) {
  using namespace cuda_emulator;
  const int first = static_cast<int>(threadIdx.x) / kWarp * kWarp;
  return static_cast<unsigned>(exchange(my_warp(), predicate != 0, [&](const std::vector<uint64_t>& slot) {
    uint64_t ballot = 0;
    for (int lane = first; lane < first + kWarp && lane < static_cast<int>(slot.size()); ++lane)
      ballot |= (slot[lane] != 0 ? uint64_t{1} : 0) << (lane - first);
    return ballot;
  }));
}

inline int __popc(unsigned bits) { return __builtin_popcount(bits); }

// Blocks run one after another, and a thread's writes are seen at once: no fence or cache to pass.
inline void __threadfence() {}
template <class T>
T __ldcg(const T* address) {
  return *address;
}

// Fibers switch only at barriers, so a read-modify-write is atomic as it stands.
template <class T, class Update>
T atomic_update(T* address, Update update) {
  const T old = *address;
  *address = update(old);
  return old;
}

template <class T, class U>
T atomicAdd(T* address, U value) {
  return atomic_update(address, [&](T old) { return static_cast<T>(old + static_cast<T>(value)); });
}

template <class T, class U>
T atomicMin(T* address, U value) {
  return atomic_update(address, [&](T old) { return std::min(old, static_cast<T>(value)); });
}

template <class T, class U>
T atomicMax(T* address, U value) {
  return atomic_update(address, [&](T old) { return std::max(old, static_cast<T>(value)); });
}

template <class A, class B>
std::common_type_t<A, B> max(A a, B b) {
  return a > b ? a : b;
}
template <class A, class B>
std::common_type_t<A, B> min(A a, B b) {
  return a < b ? a : b;
}

inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __float_as_uint(float x) { return cuda_emulator::value_of<unsigned>(cuda_emulator::bits_of(x)); }
inline float __uint_as_float(unsigned x) { return cuda_emulator::value_of<float>(cuda_emulator::bits_of(x)); }
using std::isfinite;
using std::isnan;
