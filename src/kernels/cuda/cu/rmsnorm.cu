// RMSNorm, as src/kernels/norm.rs (rmsnorm_forward / rmsnorm_backward): rows of `dim` features, weights applied as
// (offset + w) with offset 0, or 1 for Gemma's zero-centred weights.

// out[r] = (offset + w) ⊙ (x[r] · rstd[r]),  rstd[r] = 1 / sqrt(mean(x[r]²) + eps).
// x, out: (rows, dim); w: (dim); rstd: (rows), saved for the backward. Grid: one block per row. T: float, or
// unsigned short for an output kept in bf16 (rounded; the block's input under --compute bf16 on a device).
template <typename T>
__device__ void rmsnorm_forward_t(T* out, float* rstd, const float* x, const float* w, float offset, float eps,
                                  int dim) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += x[base + i] * x[base + i];
    ss = block_sum(ss, scratch);
    const float r = 1.f / sqrtf(ss / (float)dim + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) store(out, base + i, (offset + w[i]) * (x[base + i] * r));
}

extern "C" __global__ void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, float offset,
                                           float eps, int dim) {
    rmsnorm_forward_t(out, rstd, x, w, offset, eps, dim);
}

extern "C" __global__ void rmsnorm_forward_bf16(unsigned short* out, float* rstd, const float* x, const float* w,
                                                float offset, float eps, int dim) {
    rmsnorm_forward_t(out, rstd, x, w, offset, eps, dim);
}

// dx[r] += r·g − (r³/dim)·x[r]·Σ(g ⊙ x[r]),  g = (offset + w) ⊙ dout[r],  r = rstd[r] (the residual stream's
// gradient accumulates). dout, x, dx: (rows, dim). Grid: one block per row.
extern "C" __global__ void rmsnorm_backward_dx(float* dx, const float* dout, const float* x, const float* w,
                                               float offset, const float* rstd, int dim) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * dim;
    const float r = rstd[blockIdx.x];
    float gx = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) gx += dout[base + i] * (offset + w[i]) * x[base + i];
    gx = block_sum(gx, scratch);
    const float c = r * r * r * gx / (float)dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        dx[base + i] += r * (offset + w[i]) * dout[base + i] - c * x[base + i];
}

// partial[c·dim + j] = Σ dout[row, j] · x[row, j] · rstd[row] over chunk c's rows (chunk_rows from c·chunk_rows) in
// order: dw by chunks of rows, which reduce.cu's add_chunk_sums then adds to dw in chunk order (parallel over the
// rows, the same bits every run). Grid (ceil(dim / blockDim.x), chunks): a thread per (feature, chunk).
extern "C" __global__ void rmsnorm_backward_dw(float* partial, const float* dout, const float* x, const float* rstd,
                                               int rows, int dim, int chunk_rows) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    const int first = blockIdx.y * chunk_rows, end = rows < first + chunk_rows ? rows : first + chunk_rows;
    float s = 0.f;
    for (int row = first; row < end; ++row) s += dout[(size_t)row * dim + j] * x[(size_t)row * dim + j] * rstd[row];
    partial[(size_t)blockIdx.y * dim + j] = s;
}
