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
#define __shared__ static

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

// Round-to-nearest arithmetic that the compiler must not fuse (g++ contracts nothing without -ffp-contract=fast).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }

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
