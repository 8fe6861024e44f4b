// f32 → bf16 as src/kernels/bf16.rs's `round` (what `--compute bf16` rounds GEMM operands with): round to nearest
// even on the low 16 bits, a denormal flushed to a zero of its sign, NaN made quiet with its top bits kept.
// The bf16 values are their bits in unsigned shorts. Element-wise over a strided (rows, cols) view of `in` (row
// stride ld), written dense into `out` (rows · cols).
extern "C" __global__ void to_bf16(unsigned short* out, const float* in, int rows, int cols, int ld) {
    const long long n = (long long)rows * cols;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const unsigned bits = __float_as_uint(in[(i / cols) * ld + i % cols]);
        const unsigned sign = bits & 0x80000000u, exp = bits & 0x7f800000u, frac = bits & 0x007fffffu;
        unsigned r;
        if (exp == 0) {
            r = sign;
        } else if (exp == 0x7f800000u) {
            r = frac == 0 ? bits : (bits | 0x00400000u);
        } else {
            r = bits + 0x7fffu + ((bits >> 16) & 1u);
        }
        out[i] = (unsigned short)(r >> 16);
    }
}
