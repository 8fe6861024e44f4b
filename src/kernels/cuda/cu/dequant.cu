// llama.cpp's GGML block types decoded to f32 or bf16, as src/kernels/dequant.rs decodes them: a frozen weight
// matrix kept on the GPU in its stored blocks is decoded into scratch before a product (`Backend::gemm_packed`),
// or, for a decoding step's few rows, multiplied straight from its blocks (packed_gemv). Bit for bit the CPU's values: each value is d·q, (d·q) + m or (d·sc)·q − (dmin·m) in
// the CPU's order, every product and sum rounded on its own (__fmul_rn, __fadd_rn: no fused multiply-add).
//
// The block types by GGML id (src/kernels/dequant.rs's `GgmlType::id`).
#define GGML_Q4_0 2
#define GGML_Q4_1 3
#define GGML_Q5_0 6
#define GGML_Q5_1 7
#define GGML_Q8_0 8
#define GGML_Q4_K 12
#define GGML_Q5_K 13
#define GGML_Q6_K 14

// An f16 value (its bits) as f32, exactly (normals, subnormals, infinities, NaNs).
__device__ float f16_value(unsigned h) {
    const unsigned sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, frac = h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (frac << 13));
    if (exp != 0) return __uint_as_float(sign | ((exp + 112u) << 23) | (frac << 13));
    // subnormal: frac · 2^-24, exact in f32
    const float v = __fmul_rn((float)frac, 5.9604644775390625e-8f);
    return sign ? -v : v;
}

// The little-endian u16 at byte i of a block.
__device__ unsigned u16_at(const unsigned char* b, int i) { return b[i] | (unsigned)b[i + 1] << 8; }

// Sub-block j's 6-bit scale and min of a Q4_K/Q5_K super-block (dequant.rs's scale_min_k4).
__device__ void scale_min_k4(int j, const unsigned char* s, float* sc, float* m) {
    if (j < 4) {
        *sc = (float)(s[j] & 63);
        *m = (float)(s[j + 4] & 63);
    } else {
        *sc = (float)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (float)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// Bytes per block of each type.
__device__ int type_size(int ty) {
    switch (ty) {
        case GGML_Q4_0: return 18;
        case GGML_Q4_1: return 20;
        case GGML_Q5_0: return 22;
        case GGML_Q5_1: return 24;
        case GGML_Q8_0: return 34;
        case GGML_Q4_K: return 144;
        case GGML_Q5_K: return 176;
        default: return 210;  // Q6_K
    }
}


// q − off as f32 for integers 0 ≤ q, off < 2^22, exactly, without an int → float conversion (16 a clock per
// multiprocessor on Hopper, an eighth of the rate of the add this takes): q in the mantissa under 2^23's exponent is
// the float 2^23 + q, and the subtraction of 2^23 + off from it is exact.
__device__ float int_minus(unsigned q, unsigned off) {
    return __fsub_rn(__uint_as_float(0x4b000000u | q), __uint_as_float(0x4b000000u | off));
}

// Every type's values come in runs of 16 that share their scale (and min): a block of 32 holds two, a K-quant
// super-block of 256 sixteen.
#define GROUP 16

// Values 16g..16g+15 of block b of type ty into v, as dequant.rs's routine of that type computes each of them; the
// run's scale (and min) decoded once.
__device__ void decode_group(int ty, const unsigned char* b, int g, float* v) {
    switch (ty) {
        case GGML_Q4_0:
        case GGML_Q4_1: {
            // value j < 16 in the low nibble of qs[j], value 16 + j in its high one
            const bool q41 = ty == GGML_Q4_1;
            const unsigned char* qs = b + (q41 ? 4 : 2);
            const float d = f16_value(u16_at(b, 0)), m = q41 ? f16_value(u16_at(b, 2)) : 0.f;
#pragma unroll
            for (int i = 0; i < GROUP; ++i) {
                const unsigned q = g == 0 ? (qs[i] & 0x0f) : (qs[i] >> 4);
                v[i] = q41 ? __fadd_rn(__fmul_rn(d, int_minus(q, 0)), m) : __fmul_rn(d, int_minus(q, 8));
            }
            return;
        }
        case GGML_Q5_0:
        case GGML_Q5_1: {
            const bool q51 = ty == GGML_Q5_1;
            const int at = q51 ? 4 : 2;
            const unsigned qh = u16_at(b, at) | u16_at(b, at + 2) << 16;
            const unsigned char* qs = b + at + 4;
            const float d = f16_value(u16_at(b, 0)), m = q51 ? f16_value(u16_at(b, 2)) : 0.f;
#pragma unroll
            for (int i = 0; i < GROUP; ++i) {
                const int j = GROUP * g + i;
                const unsigned lo = g == 0 ? (qs[i] & 0x0f) : (qs[i] >> 4), q = lo | ((qh >> j) & 1u) << 4;
                v[i] = q51 ? __fadd_rn(__fmul_rn(d, int_minus(q, 0)), m) : __fmul_rn(d, int_minus(q, 16));
            }
            return;
        }
        case GGML_Q8_0: {
            const float d = f16_value(u16_at(b, 0));
#pragma unroll
            for (int i = 0; i < GROUP; ++i) v[i] = __fmul_rn(d, int_minus(b[2 + GROUP * g + i] ^ 0x80u, 128));
            return;
        }
        case GGML_Q4_K:
        case GGML_Q5_K: {
            // 64 values per chunk c of qs: sub-block 2c in the low nibbles of qs[32c..32c + 32], 2c + 1 in the high
            // ones; run g is chunk g / 4, sub-block 2c + (g % 4 ≥ 2), from byte 32c + 16·(g % 2)
            const int c = g / 4, high = (g % 4) >= 2, sub = 2 * c + high, at = GROUP * (g % 2);
            float sc, m;
            scale_min_k4(sub, b + 4, &sc, &m);
            const unsigned char* qs = b + (ty == GGML_Q4_K ? 16 : 48) + 32 * c + at;
            const float d = __fmul_rn(f16_value(u16_at(b, 0)), sc), min = __fmul_rn(f16_value(u16_at(b, 2)), m);
#pragma unroll
            for (int i = 0; i < GROUP; ++i) {
                unsigned q = high ? (qs[i] >> 4) : (qs[i] & 0x0f);
                if (ty == GGML_Q5_K) q |= ((b[16 + at + i] >> sub) & 1u) << 4;
                v[i] = __fsub_rn(__fmul_rn(d, int_minus(q, 0)), min);
            }
            return;
        }
        default: {  // Q6_K: two halves of 128; value r of half h: 4 low bits from ql, 2 high from qh, scale r / 16
            const int h = g / 8, r = GROUP * (g % 8);
            const unsigned char *ql = b + 64 * h + r % 64, *qh = b + 128 + 32 * h + r % 32;
            const int lo_shift = 4 * (r / 64), hi_shift = 2 * (r / 32);
            const float ds = __fmul_rn(f16_value(u16_at(b, 208)), (float)(signed char)b[192 + 8 * h + r / 16]);
#pragma unroll
            for (int i = 0; i < GROUP; ++i) {
                const unsigned q = ((ql[i] >> lo_shift) & 0x0fu) | ((qh[i] >> hi_shift) & 0x03u) << 4;
                v[i] = __fmul_rn(ds, int_minus(q, 32));
            }
            return;
        }
    }
}

// Run g of the matrix in blocks of `block` values of type ty at src: its block's bytes and its run in the block.
__device__ const unsigned char* run_block(const unsigned char* src, int ty, int block, size_t g, int* in_block) {
    const size_t runs = block / GROUP;
    *in_block = (int)(g % runs);
    return src + g / runs * type_size(ty);
}

// out[i] = value i of the n values (whole blocks of `block` values of type `ty`) from byte `at` of `src`: a thread
// per run of 16 (a 1-D grid striding over the n / 16 runs).
template <typename T>
__device__ void dequantize(T* out, const unsigned char* src, size_t at, int ty, int block, size_t n) {
    for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < n / GROUP; g += (size_t)gridDim.x * blockDim.x) {
        int in_block;
        const unsigned char* b = run_block(src + at, ty, block, g, &in_block);
        float v[GROUP];
        decode_group(ty, b, in_block, v);
#pragma unroll
        for (int i = 0; i < GROUP; ++i) store(out, g * GROUP + i, v[i]);
    }
}

extern "C" __global__ void dequantize_f32(float* out, const unsigned char* src, size_t at, int ty, int block,
                                          size_t n) {
    dequantize(out, src, at, ty, block, n);
}

// The values rounded to bf16 (what `--compute bf16`'s products read of a dense weight's bf16 copy).
extern "C" __global__ void dequantize_bf16(unsigned short* out, const unsigned char* src, size_t at, int ty,
                                           int block, size_t n) {
    dequantize(out, src, at, ty, block, n);
}

// The rows of a one block of packed_gemv multiplies (src/kernels/cuda/ops/dequant.rs's GEMV_ROWS): each block
// decodes its outputs' blocks once for that many rows, which it keeps sums for in registers.
#define GEMV_ROWS 8

// a[i] as packed_gemv's operand: an f32 value rounded to bf16 where the product is a bf16 one, a bf16 value as it is.
__device__ float gemv_operand(const float* a, size_t i, int round) {
    return round ? bf16_value((unsigned short)bf16_bits(a[i])) : a[i];
}
__device__ float gemv_operand(const unsigned short* a, size_t i, int) { return bf16_value(a[i]); }

// c[r, o] (+)= Σ_k a[r, k]·W[o, k] for rows r < m and outputs o < n of W (n, k), whose rows are whole blocks of
// type ty from byte `at` of src: the product of a decoding step read straight from the blocks, each value decoded
// as dequantize decodes it (so it is that matrix's product, in another order of sums). With `round`, both operands
// are rounded to bf16 first, as a bf16 product reads them. a: rows of lda; c: rows of ldc. A warp per output and
// group of GEMV_ROWS rows (grid (ceil(n / warps per block), ceil(m / GEMV_ROWS))); its lanes take the row's runs of
// 16 in turn, each adding its runs' products for every row of its group, the warp's sums then added across lanes.
template <typename Ta, typename Tc>
__device__ void packed_gemv(Tc* c, const Ta* a, const unsigned char* src, size_t at, int ty, int block, int m, int n,
                            int k, int lda, int ldc, int accumulate, int round) {
    const int lane = threadIdx.x & 31, o = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (o >= n) return;  // the whole warp
    const int first = blockIdx.y * GEMV_ROWS;
    a += (size_t)first * lda;
    c += (size_t)first * ldc;
    m = min(m - first, GEMV_ROWS);
    const int runs = k / GROUP;
    const unsigned char* row = src + at + (size_t)o * (k / block) * type_size(ty);
    float acc[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r) acc[r] = 0.f;
    for (int g = lane; g < runs; g += 32) {
        int in_block;
        const unsigned char* b = run_block(row, ty, block, g, &in_block);
        float v[GROUP];
        decode_group(ty, b, in_block, v);
        if (round)
#pragma unroll
            for (int i = 0; i < GROUP; ++i) v[i] = bf16_value((unsigned short)bf16_bits(v[i]));
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; ++r) {
            if (r >= m) break;
            const Ta* ar = a + (size_t)r * lda + GROUP * g;
#pragma unroll
            for (int i = 0; i < GROUP; ++i) acc[r] += v[i] * gemv_operand(ar, i, round);
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; ++r) {
        if (r >= m) break;
        const float sum = warp_sum(acc[r]);
        if (lane == 0) {
            const size_t i = (size_t)r * ldc + o;
            store(c, i, accumulate ? load(c, i) + sum : sum);
        }
    }
}

// a's and c's element types in the name: f32 or bf16 (activations kept in bf16).
extern "C" __global__ void packed_gemv_f32_f32(float* c, const float* a, const unsigned char* src, size_t at, int ty,
                                               int block, int m, int n, int k, int lda, int ldc, int accumulate,
                                               int round) {
    packed_gemv(c, a, src, at, ty, block, m, n, k, lda, ldc, accumulate, round);
}

extern "C" __global__ void packed_gemv_f32_bf16(unsigned short* c, const float* a, const unsigned char* src, size_t at,
                                                int ty, int block, int m, int n, int k, int lda, int ldc,
                                                int accumulate, int round) {
    packed_gemv(c, a, src, at, ty, block, m, n, k, lda, ldc, accumulate, round);
}

extern "C" __global__ void packed_gemv_bf16_f32(float* c, const unsigned short* a, const unsigned char* src, size_t at,
                                                int ty, int block, int m, int n, int k, int lda, int ldc,
                                                int accumulate, int round) {
    packed_gemv(c, a, src, at, ty, block, m, n, k, lda, ldc, accumulate, round);
}

extern "C" __global__ void packed_gemv_bf16_bf16(unsigned short* c, const unsigned short* a, const unsigned char* src,
                                                 size_t at, int ty, int block, int m, int n, int k, int lda, int ldc,
                                                 int accumulate, int round) {
    packed_gemv(c, a, src, at, ty, block, m, n, k, lda, ldc, accumulate, round);
}
