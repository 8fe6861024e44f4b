// Σ x[i]² in f64, as src/kernels/backend/host.rs (Host::sum_squares: the gradient norm's sums of
// src/train/optim.rs). Each square is exact in f64 (a product of two 24-bit mantissas); only the order of the
// sums differs from the CPU's. Deterministic: a fixed grid of per-block partials, each summed in block_sum's fixed
// tree order, then one block summing the partials the same way — the same bits for the same n on every run.

// partial[blockIdx.x] = Σ x[i]² over the i ≡ this thread's index (mod the grid's threads), i < n, summed over
// the block. Grid: the launch's fixed number of blocks (gridDim.x partials).
extern "C" __global__ void sum_squares_partial(double* partial, const float* x, size_t n) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double v = (double)x[i];
        s += v * v;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// out[0] = Σ partial[i], i < count. Grid: one block.
extern "C" __global__ void sum_partials(double* out, const double* partial, int count) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}
