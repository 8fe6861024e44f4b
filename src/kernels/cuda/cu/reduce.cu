// Σ x[i]² in f64 of many tensors, as src/kernels/backend/host.rs (Host::sum_squares: the gradient norm's sums of
// src/train/optim.rs). Each square is exact in f64 (a product of two 24-bit mantissas); only the order of the
// sums differs from the CPU's. Deterministic: per tensor a fixed grid of per-block partials, each summed in
// block_sum's fixed tree order, then one block summing the partials the same way — the same bits for the same n
// on every run. table: 2 values per tensor, the device address of x and n.

// partial[y · gridDim.x + blockIdx.x] = Σ x[i]² of tensor y over the i ≡ this thread's index (mod the row's
// threads), i < n, summed over the block. Grid (partials per tensor, tensors).
extern "C" __global__ void sum_squares_partial(double* partial, const unsigned long long* table) {
    __shared__ double scratch[32];
    const float* x = (const float*)table[2 * blockIdx.y];
    const size_t n = (size_t)table[2 * blockIdx.y + 1];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double v = (double)x[i];
        s += v * v;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[(size_t)blockIdx.y * gridDim.x + blockIdx.x] = s;
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

// out[blockIdx.x] = Σ partial[blockIdx.x · count + i], i < count. Grid: one block per tensor.
extern "C" __global__ void sum_partials(double* out, const double* partial, int count) {
    __shared__ double scratch[32];
    const double* p = partial + (size_t)blockIdx.x * count;
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += p[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}
