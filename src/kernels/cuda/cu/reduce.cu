// Σ x[i]² in f64 of many tensors, as src/kernels/backend/host.rs (Host::sum_squares: the gradient norm's sums of
// src/train/optim.rs). Each square is exact in f64 (a product of two 24-bit mantissas); only the order of the
// sums differs from the CPU's. Deterministic: per tensor a number of per-block partials that depends on its n
// only, each summed in block_sum's fixed tree order, then one block summing the partials the same way — the same
// bits for the same n on every run. table: 3 values per tensor, the device address of x, n and the tensor's first
// block (its first partial) in the first launch's 1-D grid, shared by the tensors in proportion to their sizes.

// partial[blockIdx.x] = Σ x[i]² of this block's tensor over the i ≡ this thread's index (mod the tensor's
// threads), i < n, summed over the block.
extern "C" __global__ void sum_squares_partial(double* partial, const unsigned long long* table, int count) {
    __shared__ double scratch[32];
    const int y = tensor_of_block(table, 3, 2, count);
    const float* x = (const float*)table[3 * y];
    const size_t n = (size_t)table[3 * y + 1], first = (size_t)table[3 * y + 2];
    const size_t blocks = (y + 1 < count ? (size_t)table[3 * (y + 1) + 2] : gridDim.x) - first;
    double s = 0.0;
    for (size_t i = (blockIdx.x - first) * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x) {
        const double v = (double)x[i];
        s += v * v;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// out[i] += Σ_c partial[c·n + i] over the chunks c < chunks in order, from −0 (a sum of −0s adds nothing), i < n:
// the per-chunk column sums of a norm's weight gradient, a bias's (elementwise.cu's add_column_sums) and LoRA's dA
// (dropout.cu) added to their gradient the same way every run. Any 1-D grid.
extern "C" __global__ void add_chunk_sums(float* out, const float* partial, size_t chunks, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float s = -0.0f;
        for (size_t c = 0; c < chunks; ++c) s = __fadd_rn(s, partial[c * n + i]);
        out[i] = __fadd_rn(out[i], s);
    }
}

// out[y] = Σ of tensor y's partials (from its first to the next tensor's first, or `total`), y = blockIdx.x. Grid:
// one block per tensor.
extern "C" __global__ void sum_partials(double* out, const double* partial, const unsigned long long* table, int count,
                                        int total) {
    __shared__ double scratch[32];
    const int y = blockIdx.x;
    const size_t first = (size_t)table[3 * y + 2], end = y + 1 < count ? (size_t)table[3 * (y + 1) + 2] : total;
    double s = 0.0;
    for (size_t i = first + threadIdx.x; i < end; i += blockDim.x) s += partial[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}
