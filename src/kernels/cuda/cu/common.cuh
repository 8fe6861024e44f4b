// Helpers every kernel file may use: NVRTC compiles each .cu file with this text in front of it
// (src/kernels/cuda/sources.rs). No #include: NVRTC gets no include path, and everything here is a builtin.
//
// −∞ (NVRTC defines no INFINITY without the math headers).
#define NEG_INF __int_as_float(0xff800000)

// Launch convention of the row-wise kernels: one block per row, blockDim.x a multiple of 32 and at most 1024.

// The sum of `v` over the block; every thread gets it. `scratch`: 32 values of shared memory, free to reuse
// after the call. Summed in a fixed tree order: the same bits for the same launch shape.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // scratch may still be read by a previous call's last step
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : T(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The maximum of `v` over the block; every thread gets it. `scratch` as for block_sum.
__device__ float block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
