// The CUDA C that src/kernels/cuda/cu/ uses, for g++: put in front of each kernel program (common.cuh + its .cu,
// as NVRTC gets it) so that the emulator (threads.cpp) can run the kernels on the CPU. Each CUDA thread of a block
// is a fiber; __syncthreads and the warp shuffles switch between them, blocks run one after another, so
// `__shared__` is a function-local static (one block's shared memory at a time).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }

namespace emu {
// The thread of the block the running fiber is, and the launch it belongs to (threads.cpp sets them before a
// fiber resumes).
extern uint3 thread_idx;
extern uint3 block_idx;
extern dim3 block_dim;
extern dim3 grid_dim;
// Waits for every thread of the block (threads.cpp).
void syncthreads();
// The warp's exchange: each lane in `mask` offers `bits` and gets the bits of lane `lane ^ lane_mask` (within
// segments of `width` lanes) once every lane in `mask` has offered (threads.cpp).
uint64_t shuffle_xor(unsigned mask, uint64_t bits, int lane_mask, int width);
// The warp's exchange of `bytes` bytes per lane: each lane in `mask` offers `mine` and, once every such lane has
// offered, gets all 32 lanes' offers in `all` (lane after lane; lanes outside the mask as zeros) (threads.cpp).
void warp_exchange(unsigned mask, const void* mine, void* all, size_t bytes);

// A kernel's arguments as cuLaunchKernel passes them (an array of pointers to each value), unpacked by the kernel's
// own parameter types: `trampoline<kernel>` is what the driver calls.
template <typename... A, size_t... I>
void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <typename... A>
constexpr size_t arity(void (*)(A...)) {
    return sizeof...(A);
}
template <auto F>
void trampoline(void** args) {
    call_with(F, args, std::make_index_sequence<arity(F)>{});
}

// The values behind cuLaunchKernel's argument pointers, copied by the kernel's parameter types: what a graph keeps
// of a launch captured into it (CUDA copies the values at capture; the caller's may be gone by a replay).
using ArgBytes = std::vector<std::vector<char>>;
template <typename... A>
ArgBytes copy_args_of(void (*)(A...), void** args) {
    ArgBytes out;
    size_t i = 0;
    ((out.emplace_back(static_cast<const char*>(args[i]),
                       static_cast<const char*>(args[i]) + sizeof(std::remove_cv_t<std::remove_reference_t<A>>)),
      ++i),
     ...);
    return out;
}
template <auto F>
ArgBytes copy_args(void** args) {
    return copy_args_of(F, args);
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
// Helpers are defined in every program (common.cuh in front of each): internal linkage keeps them apart.
#define __device__ static inline
// Every kernel's shared arrays in one section, which threads.cpp fills with 0xff bytes before each block: a GPU's
// shared memory holds leftovers, so a value read before the block wrote it must not look like zero (or like the
// previous block's). (g++ ignores the attribute inside function templates: tests/common/cuda_emulator.rs moves
// those arrays into the section after compiling.)
#define __shared__ static __attribute__((section("emu_shared")))
#define __align__(n) __attribute__((aligned(n)))
// A kernel's most threads per block, which bounds its registers on a GPU: nothing to emulate.
#define __launch_bounds__(...)

inline void __syncthreads() { emu::syncthreads(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffle moves at most 64 bits");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    bits = emu::shuffle_xor(mask, bits, lane_mask, width);
    T out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

// Lane src_lane's value (within this lane's segment of `width` lanes), from the warp's exchange. The kernels call it
// with every lane of the warp in mask.
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    T all[32];
    emu::warp_exchange(mask, &v, all, sizeof v);
    const unsigned lane = (emu::thread_idx.x + emu::block_dim.x * (emu::thread_idx.y + emu::block_dim.y *
                                                                   emu::thread_idx.z)) & 31;
    return all[lane / width * width + src_lane % width];
}

// Bit j set when lane j of the warp (among those in mask) passes a true predicate: the lanes' predicates
// exchanged as the warp's shuffles are.
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    const int mine = predicate != 0;
    int all[32];
    emu::warp_exchange(mask, &mine, all, sizeof mine);
    unsigned bits = 0;
    for (unsigned j = 0; j < 32; ++j)
        if ((mask >> j & 1) && all[j]) bits |= 1u << j;
    return bits;
}

// The one PTX instruction the kernels use (common.cuh wraps it for NVRTC): mma.sync.aligned.m16n8k16.row.col.f32.
// bf16.bf16.f32, d (16×8, f32) += a (16×16, bf16) · b (16×8, bf16), with the fragments laid out over the warp's
// lanes as the PTX ISA documents them ("Matrix Fragments for mma.m16n8k16 with floating point type"): with
// g = lane / 4 and t = lane % 4, a[0] holds a(g, 2t..2t+1), a[1] a(g+8, 2t..), a[2] a(g, 2t+8..), a[3] a(g+8, 2t+8..);
// b[0] holds b(2t..2t+1, g), b[1] b(2t+8.., g); d[0..1] are d(g, 2t..2t+1), d[2..3] d(g+8, 2t..); the lower half of a
// 32-bit register is the lower index. The products are exact in f32; summed over k in order, then added to d.
inline void mma_bf16_16x8x16(float* d, const unsigned* a, const unsigned* b) {
    struct Fragments {
        unsigned a[4], b[2];
    };
    const Fragments mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
    Fragments all[32];
    emu::warp_exchange(0xffffffffu, &mine, all, sizeof mine);
    const auto value = [](unsigned reg, int half) {
        const unsigned bits = (half ? reg >> 16 : reg & 0xffffu) << 16;
        float v;
        std::memcpy(&v, &bits, sizeof v);
        return v;
    };
    const auto a_at = [&](int r, int k) {
        return value(all[4 * (r % 8) + (k % 8) / 2].a[(r >= 8) + 2 * (k >= 8)], k % 2);
    };
    const auto b_at = [&](int k, int n) { return value(all[4 * n + (k % 8) / 2].b[k >= 8], k % 2); };
    const int lane = int(emu::thread_idx.x + emu::block_dim.x * (emu::thread_idx.y + emu::block_dim.y * emu::thread_idx.z)) % 32;
    const int g = lane / 4, t = lane % 4;
    for (int c = 0; c < 4; ++c) {
        const int r = g + 8 * (c / 2), n = 2 * t + c % 2;
        float sum = 0.f;
        for (int k = 0; k < 16; ++k) sum += a_at(r, k) * b_at(k, n);
        d[c] += sum;
    }
}

// Round-to-nearest arithmetic that the compiler must not fuse (g++ contracts nothing without -ffp-contract=fast).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }

inline unsigned __float_as_uint(float v) {
    unsigned u;
    std::memcpy(&u, &v, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}
inline float __int_as_float(int i) {
    float v;
    std::memcpy(&v, &i, sizeof v);
    return v;
}

// CUDA's integer min and max (its math headers overload them for every integer type).
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
    return a > b ? a : b;
}
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
    return a < b ? a : b;
}
