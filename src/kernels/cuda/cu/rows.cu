// Whole rows moved by an index, as src/kernels/backend/host.rs (Host::embedding, Host::gather_rows,
// Host::scatter_add_rows; the embedding lookup of src/kernels/embedding.rs with Gemma's scale). Rows of `dim`
// values. Grid: one block per moved row, its threads striding over the row.

// out[k] = src[idx[k]] · scale, k < gridDim.x (an embedding lookup, or a plain gather with scale 1: x·1 is x
// exactly).
extern "C" __global__ void gather_rows(float* out, const float* src, const unsigned* idx, int dim, float scale) {
    float* o = out + (size_t)blockIdx.x * dim;
    const float* s = src + (size_t)idx[blockIdx.x] * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = s[j] * scale;
}

// dst[idx[k]] += src[k], k < gridDim.x. The indices are distinct (checked by the launch), so no two blocks
// write one row: no atomics, and the CPU's bits (one add per element).
extern "C" __global__ void scatter_add_rows(float* dst, const float* src, const unsigned* idx, int dim) {
    float* d = dst + (size_t)idx[blockIdx.x] * dim;
    const float* s = src + (size_t)blockIdx.x * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) d[j] += s[j];
}
