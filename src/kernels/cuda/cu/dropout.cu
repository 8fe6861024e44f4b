// Dropout with a mask of one bit per element (set = kept) in 64-bit words, as src/kernels/dropout.rs
// (dropout_forward, dropout_again, dropout_backward): element i is kept when uniform_at(key, i) >= p, with
// uniform_at and SplitMix64's mix as src/rng.rs defines them, so the GPU draws the CPU's mask bit for bit.
// keep_scale = 1/(1 − p) comes from the host, rounded as the CPU rounds it.

// SplitMix64's finalizer (src/rng.rs mix); unsigned 64-bit arithmetic wraps as Rust's wrapping_* do.
__device__ unsigned long long mix(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// uniform_at(key, i) = (mix(key ^ i) >> 11) · 2⁻⁵³ in [0, 1): a 53-bit integer, exact as a double, times a power
// of two (exact).
__device__ double uniform_at(unsigned long long key, unsigned long long i) {
    return (double)(mix(key ^ i) >> 11) * (1.0 / 9007199254740992.0);
}

// Whether element i is kept by the mask `keep`.
__device__ bool kept(const unsigned long long* keep, size_t i) {
    return (keep[i / 64] >> (i % 64)) & 1ull;
}

// x_drop[i] = kept ? x[i]·keep_scale : 0, i < n, drawing the mask into keep[0 .. ceil(n/64)): one thread per
// word writes its 64 elements and the whole word (bits past n zero), so no two threads share a word. Any 1-D
// grid (it strides over the words).
extern "C" __global__ void dropout_forward(float* x_drop, unsigned long long* keep, const float* x, size_t n,
                                           double p, float keep_scale, unsigned long long key) {
    const size_t words = (n + 63) / 64;
    for (size_t w = (size_t)blockIdx.x * blockDim.x + threadIdx.x; w < words; w += (size_t)gridDim.x * blockDim.x) {
        unsigned long long bits = 0;
        const size_t end = n < (w + 1) * 64 ? n : (w + 1) * 64;
        for (size_t i = w * 64; i < end; ++i) {
            const bool k = uniform_at(key, i) >= p;
            x_drop[i] = k ? x[i] * keep_scale : 0.f;
            bits |= (unsigned long long)k << (i % 64);
        }
        keep[w] = bits;
    }
}

// x_drop[i] = kept ? x[i]·keep_scale : 0 from the mask dropout_forward drew. Any 1-D grid.
extern "C" __global__ void dropout_again(float* x_drop, const unsigned long long* keep, const float* x, size_t n,
                                         float keep_scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x_drop[i] = kept(keep, i) ? x[i] * keep_scale : 0.f;
}

// dx[i] += t[i]·keep_scale where kept (dx untouched elsewhere). The product is rounded before the add
// (__fmul_rn: no FMA contraction), as the CPU computes it. Any 1-D grid.
extern "C" __global__ void dropout_backward(float* dx, const float* t, const unsigned long long* keep, size_t n,
                                            float keep_scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (kept(keep, i)) dx[i] += __fmul_rn(t[i], keep_scale);
}
