// Element-wise ops of the backend, as src/kernels/backend/host.rs (Host::scale, Host::scale_in_place,
// Host::add_bias): one IEEE operation per element, so the GPU gives the CPU's bits. Any 1-D grid (the kernels
// stride over it).

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
extern "C" __global__ void add_bias(float* out, const float* b, size_t rows, size_t cols, size_t ld) {
    const size_t n = rows * cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / cols, c = i % cols;
        out[r * ld + c] += b[c];
    }
}
