// LayerNorm (GPT-2), as src/kernels/norm.rs (layernorm_forward / layernorm_backward): rows of `dim` features.

// out[r] = (x[r] − mean[r]) · rstd[r] ⊙ w + b,  mean[r] = mean(x[r]),  rstd[r] = 1 / sqrt(var(x[r]) + eps); mean and
// rstd saved for the backward. x, out: (rows, dim); w, b: (dim). Grid: one block per row.
extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                                             const float* b, float eps, int dim) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * dim;
    float s = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s += x[base + i];
    const float m = block_sum(s, scratch) / (float)dim;
    float v = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) v += (x[base + i] - m) * (x[base + i] - m);
    const float r = 1.f / sqrtf(block_sum(v, scratch) / (float)dim + eps);
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = m;
        rstd[blockIdx.x] = r;
    }
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[base + i] = (x[base + i] - m) * r * w[i] + b[i];
}

// dx[r] += r·(g − mean(g) − x̂·mean(g ⊙ x̂)),  g = w ⊙ dout[r],  x̂ = (x[r] − mean[r])·r,  r = rstd[r] (the
// residual stream's gradient accumulates). dout, x, dx: (rows, dim). Grid: one block per row.
extern "C" __global__ void layernorm_backward_dx(float* dx, const float* dout, const float* x, const float* w,
                                                 const float* mean, const float* rstd, int dim) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * dim;
    const float m = mean[blockIdx.x], r = rstd[blockIdx.x];
    float sg = 0.f, sgx = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float g = dout[base + i] * w[i];
        sg += g;
        sgx += g * (x[base + i] - m) * r;
    }
    const float mg = block_sum(sg, scratch) / (float)dim;
    const float mgx = block_sum(sgx, scratch) / (float)dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        dx[base + i] += r * (dout[base + i] * w[i] - mg - (x[base + i] - m) * r * mgx);
}

// Over chunk c's rows (chunk_rows from c·chunk_rows) in order: partial[c·dim + j] = Σ dout[row, j] · (x[row, j] −
// mean[row]) · rstd[row] (dw's part) and partial[(chunks + c)·dim + j] = Σ dout[row, j] (db's), chunks = gridDim.y;
// reduce.cu's add_chunk_sums then adds each to its gradient in chunk order (parallel over the rows, the same bits
// every run). Grid (ceil(dim / blockDim.x), chunks): a thread per (feature, chunk).
extern "C" __global__ void layernorm_backward_dwdb(float* partial, const float* dout, const float* x,
                                                   const float* mean, const float* rstd, int rows, int dim,
                                                   int chunk_rows) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    const int first = blockIdx.y * chunk_rows, end = rows < first + chunk_rows ? rows : first + chunk_rows;
    float sw = 0.f, sb = 0.f;
    for (int row = first; row < end; ++row) {
        const float d = dout[(size_t)row * dim + j];
        sw += d * (x[(size_t)row * dim + j] - mean[row]) * rstd[row];
        sb += d;
    }
    partial[(size_t)blockIdx.y * dim + j] = sw;
    partial[(size_t)(gridDim.y + blockIdx.y) * dim + j] = sb;
}
