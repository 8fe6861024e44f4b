// f32 → bf16 as src/kernels/bf16.rs's `round` (common.cuh's bf16_bits). The bf16 values are their bits in
// unsigned shorts. Element-wise over a strided (rows, cols) view of `in` (row stride ld), written dense into `out`
// (rows · cols). A 2-D grid striding over rows (y) and columns (x): no division per element.
extern "C" __global__ void to_bf16(unsigned short* out, const float* in, int rows, int cols, int ld) {
    for (size_t row = blockIdx.y; row < (size_t)rows; row += gridDim.y)
        for (int col = blockIdx.x * blockDim.x + threadIdx.x; col < cols; col += gridDim.x * blockDim.x)
            out[row * cols + col] = (unsigned short)bf16_bits(in[row * ld + col]);
}
