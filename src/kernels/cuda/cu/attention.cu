// Causal grouped-query attention over a packed batch, as src/kernels/attention.rs: rows of all sequences end to
// end, row i attending to rows first..=i of its own sequence, first = max(seq_start[i], i + 1 − window); query
// head h reads kv head h / (n_heads / n_kv_heads); scores q·k·scale. qkv (N, row_len) holds q, k, v at their
// columns; out (N, n_heads·head_dim).
//
// Launch convention: one block per (row, head) — grid (N, heads) — of ATT_WARPS warps. Each warp takes every
// ATT_WARPS-th visible key and keeps its own running softmax, so no row of scores is stored; the warps' states
// are merged at the end. (The CPU finds the exact max first: the same result up to exp's rescaling.)

// Warps per block: the launches (src/kernels/cuda/ops/attention.rs) use 32 · ATT_WARPS threads.
#define ATT_WARPS 4
// The longest head these kernels take: 32 lanes × 8 features per lane (the launches check head_dim ≤ it).
#define ATT_MAX_HEAD_DIM 256
#define ATT_PER_LANE (ATT_MAX_HEAD_DIM / 32)

// a·b over head_dim features, by one warp; every lane gets it.
__device__ float warp_dot(const float* a, const float* b, int head_dim) {
    const int lane = threadIdx.x & 31;
    float s = 0.f;
    for (int d = lane; d < head_dim; d += 32) s += a[d] * b[d];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

// The block's softmax max and sum from each warp's (m, l): returns (M, L) to every thread and leaves in
// weight[w] the factor exp(m_w − M) that rescales warp w's sums. A warp that saw no key has m = −∞ and l = 0,
// weight 0; row i's own key keeps M finite.
__device__ float2 merge_warps(float m, float l, float* weight) {
    __shared__ float warp_m[ATT_WARPS], warp_l[ATT_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
    __syncthreads();
    float big = NEG_INF, sum = 0.f;
    for (int w = 0; w < ATT_WARPS; ++w) big = fmaxf(big, warp_m[w]);
    for (int w = 0; w < ATT_WARPS; ++w) weight[w] = expf(warp_m[w] - big);
    for (int w = 0; w < ATT_WARPS; ++w) sum += warp_l[w] * weight[w];
    return make_float2(big, sum);
}

// out[i, h] = Σ_j softmax_j(q_i·k_j·scale) · v_j. Grid (N, n_heads).
extern "C" __global__ void attention_forward(float* out, const float* qkv, const unsigned* seq_start, int row_len,
                                             int q_col, int k_col, int v_col, int n_heads, int n_kv_heads,
                                             int head_dim, float scale, int window) {
    __shared__ float q[ATT_MAX_HEAD_DIM];
    __shared__ float warp_o[ATT_WARPS][ATT_MAX_HEAD_DIM];
    const int i = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kv = h / (n_heads / n_kv_heads);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q[d] = qkv[(size_t)i * row_len + q_col + h * head_dim + d];
    __syncthreads();
    const int first = max((int)seq_start[i], i + 1 - window);

    float m = NEG_INF, l = 0.f, o[ATT_PER_LANE];
    for (int c = 0; c < ATT_PER_LANE; ++c) o[c] = 0.f;
    for (int j = first + warp; j <= i; j += ATT_WARPS) {
        const float* k = qkv + (size_t)j * row_len + k_col + kv * head_dim;
        const float* v = qkv + (size_t)j * row_len + v_col + kv * head_dim;
        const float s = warp_dot(q, k, head_dim) * scale;
        const float m_new = fmaxf(m, s);
        const float rescale = expf(m - m_new), p = expf(s - m_new);
        l = l * rescale + p;
        for (int c = 0; c < ATT_PER_LANE; ++c) {
            const int d = lane + 32 * c;
            if (d < head_dim) o[c] = o[c] * rescale + p * v[d];
        }
        m = m_new;
    }
    for (int c = 0; c < ATT_PER_LANE; ++c) {
        const int d = lane + 32 * c;
        if (d < head_dim) warp_o[warp][d] = o[c];
    }
    float weight[ATT_WARPS];
    const float2 ml = merge_warps(m, l, weight);  // its __syncthreads also publishes warp_o
    float* dst = out + (size_t)i * n_heads * head_dim + h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.f;
        for (int w = 0; w < ATT_WARPS; ++w) acc += warp_o[w][d] * weight[w];
        dst[d] = acc / ml.y;
    }
}
