// Incremental decoding over a KV cache, as src/kernels/backend/host.rs (Host::kv_store: what
// src/network/kv_cache.rs's KvCache::write does per row) and src/kernels/kv_attention.rs (cached_attention). K and
// V caches alike are laid out [slot][kv_head][position][head_dim] with `capacity` positions per slot; row i of qkv
// (N, row_len) is at position positions[i] of slot slots[i].
//
// kv_store: one block per row, its threads striding over the row's n_kv_heads·head_dim key (and value) features:
// exact copies. cached_attention: one block per (row, query head) — grid (N, n_heads) — of KV_WARPS warps, as
// attention_forward in attention.cu, but its keys and values are the cache's positions first..=pos of the row's
// slot, first = max(0, pos + 1 − window). Each warp takes every KV_WARPS-th visible position with its own running
// softmax, and the warps' states are merged at the end. (The CPU finds each block's max first, and attends a
// prefill of ≥ 16 rows through GEMMs: the same result up to the order of the sums and exp's rescaling.)

// Warps per block of cached_attention: the launch (src/kernels/cuda/ops/kv_cache.rs) uses 32 · KV_WARPS threads.
#define KV_WARPS 4
// The longest head cached_attention takes: 32 lanes × 8 features per lane (the launch checks head_dim ≤ it).
#define KV_MAX_HEAD_DIM 256
#define KV_PER_LANE (KV_MAX_HEAD_DIM / 32)

// k_cache, v_cache [slot][kv_head][pos][d] = the k, v columns of row i for i < gridDim.x: head h's features
// row[k_col + h·head_dim + d]. The launch checks slots[i] and positions[i] inside the caches.
extern "C" __global__ void kv_store(float* k_cache, float* v_cache, const float* qkv, const unsigned* slots,
                                    const unsigned* positions, int row_len, int k_col, int v_col, int n_kv_heads,
                                    int head_dim, int capacity) {
    const int i = blockIdx.x;
    const size_t slot = slots[i], pos = positions[i];
    const float* row = qkv + (size_t)i * row_len;
    const int width = n_kv_heads * head_dim;
    for (int e = threadIdx.x; e < width; e += blockDim.x) {
        const int h = e / head_dim, d = e - h * head_dim;
        const size_t at = ((slot * n_kv_heads + h) * capacity + pos) * head_dim + d;
        k_cache[at] = row[k_col + e];
        v_cache[at] = row[v_col + e];
    }
}

// a·b over head_dim features, by one warp; every lane gets it.
__device__ float kv_warp_dot(const float* a, const float* b, int head_dim) {
    const int lane = threadIdx.x & 31;
    float s = 0.f;
    for (int d = lane; d < head_dim; d += 32) s += a[d] * b[d];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

// out[i, h] = Σ_j softmax_j(q_i,h · K[slot_i, kv(h), j] · scale) · V[slot_i, kv(h), j] over j = first..=pos_i,
// kv(h) = h / (n_heads / n_kv_heads). Grid (N, n_heads). `window` ≥ 1 (clamped to the capacity by the launch).
extern "C" __global__ void cached_attention(float* out, const float* qkv, const float* k_cache, const float* v_cache,
                                            const unsigned* slots, const unsigned* positions, int row_len, int q_col,
                                            int n_heads, int n_kv_heads, int head_dim, int capacity, float scale,
                                            int window) {
    __shared__ float q[KV_MAX_HEAD_DIM];
    __shared__ float warp_o[KV_WARPS][KV_MAX_HEAD_DIM];
    __shared__ float warp_m[KV_WARPS], warp_l[KV_WARPS];
    const int i = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kv = h / (n_heads / n_kv_heads);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q[d] = qkv[(size_t)i * row_len + q_col + h * head_dim + d];
    __syncthreads();
    const int pos = (int)positions[i];
    const int first = max(0, pos + 1 - window);
    const size_t base = (((size_t)slots[i] * n_kv_heads + kv) * capacity) * head_dim;
    const float* keys = k_cache + base;
    const float* values = v_cache + base;

    float m = NEG_INF, l = 0.f, o[KV_PER_LANE];
    for (int c = 0; c < KV_PER_LANE; ++c) o[c] = 0.f;
    for (int j = first + warp; j <= pos; j += KV_WARPS) {
        const float* k = keys + (size_t)j * head_dim;
        const float* v = values + (size_t)j * head_dim;
        const float s = kv_warp_dot(q, k, head_dim) * scale;
        const float m_new = fmaxf(m, s);
        const float rescale = expf(m - m_new), p = expf(s - m_new);
        l = l * rescale + p;
        for (int c = 0; c < KV_PER_LANE; ++c) {
            const int d = lane + 32 * c;
            if (d < head_dim) o[c] = o[c] * rescale + p * v[d];
        }
        m = m_new;
    }
    for (int c = 0; c < KV_PER_LANE; ++c) {
        const int d = lane + 32 * c;
        if (d < head_dim) warp_o[warp][d] = o[c];
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
    __syncthreads();
    // The block's max M and sum L: a warp that saw no position has m = −∞ and l = 0, weight exp(−∞) = 0; the
    // row's own position (first ≤ pos) keeps M finite.
    float big = NEG_INF, sum = 0.f, weight[KV_WARPS];
    for (int w = 0; w < KV_WARPS; ++w) big = fmaxf(big, warp_m[w]);
    for (int w = 0; w < KV_WARPS; ++w) weight[w] = expf(warp_m[w] - big);
    for (int w = 0; w < KV_WARPS; ++w) sum += warp_l[w] * weight[w];
    float* dst = out + (size_t)i * n_heads * head_dim + h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.f;
        for (int w = 0; w < KV_WARPS; ++w) acc += warp_o[w][d] * weight[w];
        dst[d] = acc / sum;
    }
}
