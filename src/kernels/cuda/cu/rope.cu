// Rotary position embedding in Hugging Face's rotate_half layout, as src/kernels/rope.rs: in each of `heads` heads
// (head_dim apart, from column `col` of a row of `row_len` values) feature i pairs with i + half, for i < half;
// features past 2·half are untouched (partial rotary). Row k uses table row positions[k] of cos, sin: (·, half),
// made on the host as RopeTable does (its attention-factor scale included). In place. Grid: one block per row.

// x1 ← x1·cos − x2·(sign·sin),  x2 ← x2·cos + x1·(sign·sin) for the heads of row blockIdx.x: the rotation
// (sign 1) or its transpose (sign −1, an exact negation: dx1 = dy1·cos + dy2·sin, dx2 = dy2·cos − dy1·sin).
__device__ void rotate(float* buf, int row_len, int col, int heads, int head_dim, int half,
                       const unsigned* positions, const float* cos, const float* sin, float sign) {
    float* row = buf + (size_t)blockIdx.x * row_len + col;
    const float* c = cos + (size_t)positions[blockIdx.x] * half;
    const float* s = sin + (size_t)positions[blockIdx.x] * half;
    for (int k = threadIdx.x; k < heads * half; k += blockDim.x) {
        float* x = row + (k / half) * head_dim;
        const int i = k % half;
        const float a = x[i], b = x[i + half], si = sign * s[i];
        x[i] = a * c[i] - b * si;
        x[i + half] = b * c[i] + a * si;
    }
}

extern "C" __global__ void rope_forward(float* buf, int row_len, int col, int heads, int head_dim, int half,
                                        const unsigned* positions, const float* cos, const float* sin) {
    rotate(buf, row_len, col, heads, head_dim, half, positions, cos, sin, 1.f);
}

// The transpose, on the gradient in place.
extern "C" __global__ void rope_backward(float* buf, int row_len, int col, int heads, int head_dim, int half,
                                         const unsigned* positions, const float* cos, const float* sin) {
    rotate(buf, row_len, col, heads, head_dim, half, positions, cos, sin, -1.f);
}
