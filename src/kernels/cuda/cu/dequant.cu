// llama.cpp's GGML block types decoded to f32 or bf16, as src/kernels/dequant.rs decodes them: a frozen weight
// matrix kept on the GPU in its stored blocks is decoded into scratch before each product
// (`Backend::gemm_packed`). Bit for bit the CPU's values: each value is d·q, (d·q) + m or (d·sc)·q − (dmin·m) in
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

// Value j of block b of type ty, as dequant.rs's routine of that type computes it.
__device__ float decode(int ty, const unsigned char* b, int j) {
    switch (ty) {
        case GGML_Q4_0: {
            const int q = j < 16 ? (b[2 + j] & 0x0f) : (b[2 + j - 16] >> 4);
            return __fmul_rn(f16_value(u16_at(b, 0)), (float)(q - 8));
        }
        case GGML_Q4_1: {
            const int q = j < 16 ? (b[4 + j] & 0x0f) : (b[4 + j - 16] >> 4);
            return __fadd_rn(__fmul_rn(f16_value(u16_at(b, 0)), (float)q), f16_value(u16_at(b, 2)));
        }
        case GGML_Q5_0: {
            const unsigned qh = u16_at(b, 2) | u16_at(b, 4) << 16;
            const int lo = j < 16 ? (b[6 + j] & 0x0f) : (b[6 + j - 16] >> 4);
            const int q = lo | (int)((qh >> j) & 1u) << 4;
            return __fmul_rn(f16_value(u16_at(b, 0)), (float)(q - 16));
        }
        case GGML_Q5_1: {
            const unsigned qh = u16_at(b, 4) | u16_at(b, 6) << 16;
            const int lo = j < 16 ? (b[8 + j] & 0x0f) : (b[8 + j - 16] >> 4);
            const int q = lo | (int)((qh >> j) & 1u) << 4;
            return __fadd_rn(__fmul_rn(f16_value(u16_at(b, 0)), (float)q), f16_value(u16_at(b, 2)));
        }
        case GGML_Q8_0:
            return __fmul_rn(f16_value(u16_at(b, 0)), (float)(signed char)b[2 + j]);
        case GGML_Q4_K:
        case GGML_Q5_K: {
            // 64 values per chunk c of qs: sub-block 2c in the low nibbles, 2c + 1 in the high ones
            const int c = j / 64, l = j % 64, sub = 2 * c + (l >= 32), at = l % 32;
            float sc, m;
            scale_min_k4(sub, b + 4, &sc, &m);
            const unsigned char* qs = b + (ty == GGML_Q4_K ? 16 : 48);
            int q = l < 32 ? (qs[32 * c + at] & 0x0f) : (qs[32 * c + at] >> 4);
            if (ty == GGML_Q5_K) q |= ((b[16 + at] >> sub) & 1) << 4;
            const float d = __fmul_rn(f16_value(u16_at(b, 0)), sc), min = __fmul_rn(f16_value(u16_at(b, 2)), m);
            return __fsub_rn(__fmul_rn(d, (float)q), min);
        }
        default: {  // Q6_K: two halves of 128; value r of half h: 4 low bits from ql, 2 high from qh, scale r / 16
            const int h = j / 128, r = j % 128;
            const int lo = (b[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
            const int hi = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
            const float ds = __fmul_rn(f16_value(u16_at(b, 208)), (float)(signed char)b[192 + 8 * h + r / 16]);
            return __fmul_rn(ds, (float)((lo | hi << 4) - 32));
        }
    }
}

// out[i] = value i of the n values in blocks of `block` values of type `ty` at `src` (a 1-D grid striding over n).
template <typename T>
__device__ void dequantize(T* out, const unsigned char* src, int ty, int block, size_t n) {
    const int ts = type_size(ty);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        store(out, i, decode(ty, src + i / block * ts, (int)(i % block)));
}

extern "C" __global__ void dequantize_f32(float* out, const unsigned char* src, int ty, int block, size_t n) {
    dequantize(out, src, ty, block, n);
}

// The values rounded to bf16 (what `--compute bf16`'s products read of a dense weight's bf16 copy).
extern "C" __global__ void dequantize_bf16(unsigned short* out, const unsigned char* src, int ty, int block,
                                           size_t n) {
    dequantize(out, src, ty, block, n);
}
