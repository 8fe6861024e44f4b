// f32 → bf16 as src/kernels/bf16.rs's `round` (common.cuh's bf16_bits). The bf16 values are their bits in
// unsigned shorts. Element-wise over a strided (rows, cols) view of `in` (row stride ld), written dense into `out`
// (rows · cols).
extern "C" __global__ void to_bf16(unsigned short* out, const float* in, int rows, int cols, int ld) {
    const long long n = (long long)rows * cols;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = (unsigned short)bf16_bits(in[(i / cols) * ld + i % cols]);
}
