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

// x_drop[i] = kept ? x[i]·keep_scale : 0, i < n, drawing the mask into keep[0 .. ceil(n/64)), seen as 32-bit
// halves (little-endian: half 2w is word w's low bits). One thread per element, so a warp reads and writes 32
// consecutive values; the warp's vote (__ballot_sync, lane j's bit j) is the half of its 32 elements, written by
// lane 0; lanes past n vote 0, so bits past n are zero. The grid's warps stride over the 2·ceil(n/64) halves (the
// loop's bound is the same for a warp's lanes, so all of them reach the vote). blockDim a multiple of 32.
// T: float, or unsigned short for values kept in bf16 (x_drop rounded).
template <typename T>
__device__ void dropout_forward_t(T* x_drop, unsigned* keep_halves, const T* x, size_t n, double p, float keep_scale,
                                  unsigned long long key) {
    const size_t halves = 2 * ((n + 63) / 64), lane = threadIdx.x % 32;
    const size_t warps = (size_t)gridDim.x * blockDim.x / 32;
    for (size_t h = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; h < halves; h += warps) {
        const size_t i = 32 * h + lane;
        const bool k = i < n && uniform_at(key, i) >= p;
        if (i < n) store(x_drop, i, k ? load(x, i) * keep_scale : 0.f);
        const unsigned bits = __ballot_sync(0xffffffffu, k);
        if (lane == 0) keep_halves[h] = bits;
    }
}

extern "C" __global__ void dropout_forward(float* x_drop, unsigned* keep_halves, const float* x, size_t n, double p,
                                           float keep_scale, unsigned long long key) {
    dropout_forward_t(x_drop, keep_halves, x, n, p, keep_scale, key);
}

extern "C" __global__ void dropout_forward_bf16(unsigned short* x_drop, unsigned* keep_halves, const unsigned short* x,
                                                size_t n, double p, float keep_scale, unsigned long long key) {
    dropout_forward_t(x_drop, keep_halves, x, n, p, keep_scale, key);
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

// dx[i] += (Σ_j du[row·r + j]·a[j·in + col])·keep_scale where kept, i = row·in + col < rows·in: LoRA's input
// gradient through its dropout, dropout_backward of t = du·a without t in memory (the CPU computes t by its GEMM,
// then dropout_backward). The sum over j in order with FMAs (the GEMM's order is its own: the two agree within
// float rounding); the product by keep_scale rounded before the add, as dropout_backward. A 2-D grid striding
// over rows (y) and columns (x). T: float, or unsigned short for a dx kept in bf16 — then a bf16 product: du and a
// rounded to bf16 as operands, dx rounded after the add.
template <typename T>
__device__ void dropout_lora_dx_t(T* dx, const float* du, const float* a, const unsigned long long* keep, size_t rows,
                                  int in, int r, float keep_scale) {
    for (size_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const float* u = du + row * r;
        for (int col = blockIdx.x * blockDim.x + threadIdx.x; col < in; col += gridDim.x * blockDim.x) {
            const size_t i = row * in + col;
            if (!kept(keep, i)) continue;
            float t = 0.f;
            for (int j = 0; j < r; ++j) t = fmaf(operand_like(dx, u[j]), operand_like(dx, a[(size_t)j * in + col]), t);
            store(dx, i, load(dx, i) + __fmul_rn(t, keep_scale));
        }
    }
}

extern "C" __global__ void dropout_lora_dx(float* dx, const float* du, const float* a, const unsigned long long* keep,
                                           size_t rows, int in, int r, float keep_scale) {
    dropout_lora_dx_t(dx, du, a, keep, rows, in, r, keep_scale);
}

extern "C" __global__ void dropout_lora_dx_bf16(unsigned short* dx, const float* du, const float* a,
                                                const unsigned long long* keep, size_t rows, int in, int r,
                                                float keep_scale) {
    dropout_lora_dx_t(dx, du, a, keep, rows, in, r, keep_scale);
}

// dA's product through LoRA's dropout in two launches (dropout_again's values never stored, the sums in a fixed
// order): each block sums LORA_DA_ROWS rows for LORA_DA_R columns of du, then reduce.cu's add_chunk_sums adds the
// chunks' sums in order. ops/dropout.rs shapes the grid with the same two numbers.
#define LORA_DA_ROWS 128
#define LORA_DA_R 16

// partial[(c·r + j)·in + col] = Σ_row du[row·r + j]·dropout(x)[row·in + col] over chunk c's rows (LORA_DA_ROWS from
// c·LORA_DA_ROWS), for this block's LORA_DA_R columns j of du (from blockIdx.z·LORA_DA_R); dropout(x) is
// x·keep_scale (rounded, as dropout_again) where kept, else 0 (adds nothing). Grid (ceil(in / blockDim.x), chunks,
// ceil(r / LORA_DA_R)): a thread per column with its sums in registers, the chunk's du columns in shared memory.
// T: float, or unsigned short for an x kept in bf16 — then a bf16 product: du and dropout(x) rounded as operands.
template <typename T>
__device__ void dropout_lora_da_partial_t(float* partial, const float* du, const T* x, const unsigned long long* keep,
                                          size_t rows, int in, int r, float keep_scale) {
    __shared__ float du_s[LORA_DA_ROWS][LORA_DA_R];
    const int j0 = blockIdx.z * LORA_DA_R;
    const int js = r - j0 < LORA_DA_R ? r - j0 : LORA_DA_R;
    const size_t row0 = (size_t)blockIdx.y * LORA_DA_ROWS;
    const int count = rows - row0 < LORA_DA_ROWS ? (int)(rows - row0) : LORA_DA_ROWS;
    for (int t = threadIdx.x; t < LORA_DA_ROWS * LORA_DA_R; t += blockDim.x) {
        const int i = t / LORA_DA_R, j = t % LORA_DA_R;
        du_s[i][j] = i < count && j < js ? operand_like(x, du[(row0 + i) * r + j0 + j]) : 0.f;
    }
    __syncthreads();
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= in) return;
    float acc[LORA_DA_R];
    for (int j = 0; j < LORA_DA_R; ++j) acc[j] = 0.f;
    for (int i = 0; i < count; ++i) {
        const size_t e = (row0 + i) * in + col;
        if (!kept(keep, e)) continue;
        const float v = operand_like(x, __fmul_rn(load(x, e), keep_scale));
        for (int j = 0; j < LORA_DA_R; ++j) acc[j] = fmaf(du_s[i][j], v, acc[j]);
    }
    for (int j = 0; j < js; ++j) partial[((size_t)blockIdx.y * r + j0 + j) * in + col] = acc[j];
}

extern "C" __global__ void dropout_lora_da_partial(float* partial, const float* du, const float* x,
                                                   const unsigned long long* keep, size_t rows, int in, int r,
                                                   float keep_scale) {
    dropout_lora_da_partial_t(partial, du, x, keep, rows, in, r, keep_scale);
}

extern "C" __global__ void dropout_lora_da_partial_bf16(float* partial, const float* du, const unsigned short* x,
                                                        const unsigned long long* keep, size_t rows, int in, int r,
                                                        float keep_scale) {
    dropout_lora_da_partial_t(partial, du, x, keep, rows, in, r, keep_scale);
}
