// Helpers every kernel file may use: NVRTC compiles each .cu file with this text in front of it
// (src/kernels/cuda/sources.rs). No #include: NVRTC gets no include path, and everything here is a builtin.
//
// −∞ (NVRTC defines no INFINITY without the math headers).
#define NEG_INF __int_as_float(0xff800000)

// Launch convention of the row-wise kernels: one block per row, blockDim.x a multiple of 32 and at most 1024.

// The sum of `v` over the warp, every lane in it; a butterfly of shuffles: each step adds the same two values on
// both lanes of a pair (in swapped order, which addition ignores), so every lane gets the same bits.
template <typename T>
__device__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum of `v` over the block; every thread gets it. `scratch`: 32 values of shared memory, free to reuse
// after the call. Summed in a fixed tree order: the same bits for the same launch shape.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // scratch may still be read by a previous call's last step
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : T(0);
    return warp_sum(v);
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

// σ(x), silu(x) = x·σ(x) and silu'(x) = σ(x)·(1 + x·(1 − σ(x))), as src/kernels/activation.rs and
// src/kernels/gated_delta.rs write them.
__device__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
__device__ float silu(float x) { return x / (1.f + expf(-x)); }
__device__ float silu_grad(float x) {
    const float s = sigmoid(x);
    return s * (1.f + x * (1.f - s));
}

// A multi-tensor kernel's 1-D grid shared by its tensors (a table of `row` values per tensor, the tensor's first
// block at `col`, rising from 0 with the tensors): the tensor this block belongs to — the last whose first block is
// ≤ blockIdx.x — found by binary search over the `count` rows.
__device__ int tensor_of_block(const unsigned long long* table, int row, int col, int count) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (table[(size_t)mid * row + col] <= blockIdx.x) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// f32 → bf16 as src/kernels/bf16.rs's `round` (what `--compute bf16` rounds operands with): round to nearest even
// on the low 16 bits, a denormal flushed to a zero of its sign, NaN made quiet with its top bits kept. The bf16
// value is the low 16 bits of the result.
__device__ unsigned bf16_bits(float x) {
    const unsigned bits = __float_as_uint(x);
    const unsigned sign = bits & 0x80000000u, exp = bits & 0x7f800000u, frac = bits & 0x007fffffu;
    unsigned r;
    if (exp == 0) {
        r = sign;
    } else if (exp == 0x7f800000u) {
        r = frac == 0 ? bits : (bits | 0x00400000u);
    } else {
        r = bits + 0x7fffu + ((bits >> 16) & 1u);
    }
    return r >> 16;
}

// A bf16 value (its bits) as f32: exact.
__device__ float bf16_value(unsigned short h) { return __uint_as_float((unsigned)h << 16); }

// Element access of the kernels that come in an f32 and a bf16 form (the MLP's activations under --compute bf16
// on a device): values computed in f32, a bf16 element read exactly and written rounded by bf16_bits.
__device__ float load(const float* p, size_t i) { return p[i]; }
__device__ float load(const unsigned short* p, size_t i) { return bf16_value(p[i]); }
__device__ void store(float* p, size_t i, float v) { p[i] = v; }
__device__ void store(unsigned short* p, size_t i, float v) { p[i] = (unsigned short)bf16_bits(v); }
// v as an operand of a product in the precision of `like`'s elements: as it is for f32, rounded for bf16.
__device__ float operand_like(const float*, float v) { return v; }
__device__ float operand_like(const unsigned short*, float v) { return bf16_value((unsigned short)bf16_bits(v)); }

// Two values rounded to bf16 in one 32-bit register, `lo` in the lower half (a tensor-core operand's pair).
__device__ unsigned pack_bf16(float lo, float hi) { return bf16_bits(lo) | bf16_bits(hi) << 16; }

#ifdef __CUDACC_RTC__
// d (16×8, f32) += a (16×16, bf16) · b (16×8, bf16) on the tensor cores, one warp together: PTX's
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, fragments as the PTX ISA lays them out (with g = lane / 4,
// t = lane % 4: a[0] = a(g, 2t..2t+1), a[1] = a(g+8, 2t..), a[2] = a(g, 2t+8..), a[3] = a(g+8, 2t+8..); b[0] =
// b(2t..2t+1, g), b[1] = b(2t+8.., g); d[0..1] = d(g, 2t..2t+1), d[2..3] = d(g+8, 2t..)). Compute capability 8.0 and
// later; src/kernels/cuda/ops/attention.rs launches its callers only there. (The CUDA emulator, which compiles these
// sources with g++, defines its own: tests/cuda_emulator/device.h.)
__device__ void mma_bf16_16x8x16(float* d, const unsigned* a, const unsigned* b) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
#endif
