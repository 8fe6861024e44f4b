// Element-wise ops of the backend, as src/kernels/backend/host.rs (Host::scale, Host::scale_in_place,
// Host::add_bias): one IEEE operation per element, so the GPU gives the CPU's bits; and add_bias's backward
// (Host::add_column_sums), the CPU's additions in the CPU's order. Any 1-D grid (the kernels stride over it).

// dst[i] = s · src[i], i < n.
extern "C" __global__ void scale(float* dst, const float* src, size_t n, float s) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = s * src[i];
}

// x[i] *= s, i < n.
extern "C" __global__ void scale_in_place(float* x, size_t n, float s) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

// out[r·ld + c] += b[c] for the rows × cols of a strided view (out points at the view's first element, ld ≥ cols).
// A 2-D grid striding over rows (y) and columns (x).
extern "C" __global__ void add_bias(float* out, const float* b, size_t rows, size_t cols, size_t ld) {
    for (size_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (size_t)gridDim.x * blockDim.x)
            out[r * ld + c] += b[c];
}

// partial[k·cols + c] = Σ dy[r·ld + c] over chunk k's rows r (chunk_rows from k·chunk_rows) of the rows × cols of a
// strided view (dy points at the view's first element), from −0 (where Rust's f32 `sum` starts) in row order: a
// bias's gradient by chunks of rows, which reduce.cu's add_chunk_sums then adds to it in chunk order (parallel over
// the rows, the same bits every run). Grid (ceil(cols / blockDim.x), chunks): a thread per (column, chunk),
// adjacent threads reading adjacent values of a row.
extern "C" __global__ void add_column_sums(float* partial, const float* dy, size_t rows, size_t cols, size_t ld,
                                           size_t chunk_rows) {
    const size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const size_t first = blockIdx.y * chunk_rows, end = rows < first + chunk_rows ? rows : first + chunk_rows;
    float s = -0.0f;
    for (size_t r = first; r < end; ++r) s = __fadd_rn(s, dy[r * ld + c]);
    partial[blockIdx.y * cols + c] = s;
}

// dst[i] += src[i], i < n (Host::add: one rounding per element, the same bits). Any 1-D grid.
extern "C" __global__ void add_in_place(float* dst, const float* src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __fadd_rn(dst[i], src[i]);
}

// The rows × cols view of dst (row stride dld) = that of src (row stride sld), each pointer at its view's first
// element (Host::copy_view: exact copies). Any 1-D grid.
extern "C" __global__ void copy_view(float* dst, const float* src, size_t rows, size_t cols, size_t dld, size_t sld) {
    const size_t n = rows * cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / cols, c = i % cols;
        dst[r * dld + c] = src[r * sld + c];
    }
}
