// Whole rows moved by an index, as src/kernels/backend/host.rs (Host::embedding, Host::gather_rows,
// Host::scatter_add_rows; the embedding lookup of src/kernels/embedding.rs with Gemma's scale, and its backward
// into the table, Host::embedding_backward). Rows of `dim` values. Grid: one block per moved row (per table row
// for the embedding's backward), its threads striding over the row.

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

// The embedding's backward into the table, as Host::embedding_backward (src/kernels/embedding.rs,
// embedding_backward): dtable[id] += dout[i] for every row i whose id is id, in increasing i. The launch groups the
// rows by id on the host: block g adds the rows rows[offsets[g]], …, rows[offsets[g + 1] − 1] (increasing) to table
// row ids[g], one add at a time (__fadd_rn: never contracted or reordered) — the CPU's additions in the CPU's order,
// so its bits, with no atomics. The ids are distinct (one group each), so no two blocks write one row.
extern "C" __global__ void embedding_backward(float* dtable, const float* dout, const unsigned* rows,
                                              const unsigned* ids, const unsigned* offsets, int dim) {
    float* d = dtable + (size_t)ids[blockIdx.x] * dim;
    const unsigned begin = offsets[blockIdx.x], end = offsets[blockIdx.x + 1];
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float acc = d[j];
        for (unsigned k = begin; k < end; ++k) acc = __fadd_rn(acc, dout[(size_t)rows[k] * dim + j]);
        d[j] = acc;
    }
}
