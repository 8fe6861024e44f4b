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

// The backward, as attention_backward (flash-style: each row's softmax recomputed from q and k): with P the
// probabilities, D_i = dO_i·O_i and s = scale, dS_ij = P_ij·(dO_i·v_j − D_i), dq_i = Σ_j dS_ij·k_j·s,
// dk_j = Σ_i dS_ij·q_i·s, dv_j = Σ_i P_ij·dO_i, dk/dv of a kv head summing over the query heads that share it.
// Two launches: attention_backward_dq (grid (N, n_heads)) writes dq and each (row, head)'s softmax max, sum and
// D to stats (N, n_heads, 3); attention_backward_dkv (grid (N, n_kv_heads)) reads them for dk and dv. dqkv's
// q, k, v columns are written (=), every other column left as it is.

// datt (N, n_heads·head_dim) = ∂L/∂out, att the forward's out.
extern "C" __global__ void attention_backward_dq(float* dqkv, float* stats, const float* datt, const float* qkv,
                                                 const float* att, const unsigned* seq_start, int row_len,
                                                 int q_col, int k_col, int v_col, int n_heads, int n_kv_heads,
                                                 int head_dim, float scale, int window) {
    __shared__ float q[ATT_MAX_HEAD_DIM], dout[ATT_MAX_HEAD_DIM];
    __shared__ float warp_dq[ATT_WARPS][ATT_MAX_HEAD_DIM];
    __shared__ float scratch[32];
    const int i = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kv = h / (n_heads / n_kv_heads);
    const size_t head = (size_t)i * n_heads * head_dim + h * head_dim;
    float dd = 0.f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        q[d] = qkv[(size_t)i * row_len + q_col + h * head_dim + d];
        dout[d] = datt[head + d];
        dd += dout[d] * att[head + d];
    }
    const float big_d = block_sum(dd, scratch);  // D_i; its __syncthreads also publishes q and dout
    const int first = max((int)seq_start[i], i + 1 - window);

    float m = NEG_INF, l = 0.f;
    for (int j = first + warp; j <= i; j += ATT_WARPS) {
        const float s = warp_dot(q, qkv + (size_t)j * row_len + k_col + kv * head_dim, head_dim) * scale;
        const float m_new = fmaxf(m, s);
        l = l * expf(m - m_new) + expf(s - m_new);
        m = m_new;
    }
    float weight[ATT_WARPS];
    const float2 ml = merge_warps(m, l, weight);

    float dq[ATT_PER_LANE];
    for (int c = 0; c < ATT_PER_LANE; ++c) dq[c] = 0.f;
    for (int j = first + warp; j <= i; j += ATT_WARPS) {
        const float* k = qkv + (size_t)j * row_len + k_col + kv * head_dim;
        const float* v = qkv + (size_t)j * row_len + v_col + kv * head_dim;
        const float p = expf(warp_dot(q, k, head_dim) * scale - ml.x) / ml.y;
        const float ds = p * (warp_dot(dout, v, head_dim) - big_d);
        for (int c = 0; c < ATT_PER_LANE; ++c) {
            const int d = lane + 32 * c;
            if (d < head_dim) dq[c] += ds * k[d];
        }
    }
    for (int c = 0; c < ATT_PER_LANE; ++c) {
        const int d = lane + 32 * c;
        if (d < head_dim) warp_dq[warp][d] = dq[c];
    }
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.f;
        for (int w = 0; w < ATT_WARPS; ++w) acc += warp_dq[w][d];
        dqkv[(size_t)i * row_len + q_col + h * head_dim + d] = acc * scale;
    }
    if (threadIdx.x == 0) {
        float* st = stats + ((size_t)i * n_heads + h) * 3;
        st[0] = ml.x;
        st[1] = ml.y;
        st[2] = big_d;
    }
}

// dk, dv of row j, kv head g: the rows i that see j are j.. while in j's sequence and i − j < window; each warp
// takes every ATT_WARPS-th of them, for every query head of the group.
extern "C" __global__ void attention_backward_dkv(float* dqkv, const float* stats, const float* datt,
                                                  const float* qkv, const unsigned* seq_start, int row_len,
                                                  int q_col, int k_col, int v_col, int n_heads, int n_kv_heads,
                                                  int head_dim, float scale, int window) {
    __shared__ float k[ATT_MAX_HEAD_DIM], v[ATT_MAX_HEAD_DIM];
    __shared__ float warp_dk[ATT_WARPS][ATT_MAX_HEAD_DIM], warp_dv[ATT_WARPS][ATT_MAX_HEAD_DIM];
    const int j = blockIdx.x, g = blockIdx.y, rows = gridDim.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = n_heads / n_kv_heads;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        k[d] = qkv[(size_t)j * row_len + k_col + g * head_dim + d];
        v[d] = qkv[(size_t)j * row_len + v_col + g * head_dim + d];
    }
    __syncthreads();
    float dk[ATT_PER_LANE], dv[ATT_PER_LANE];
    for (int c = 0; c < ATT_PER_LANE; ++c) dk[c] = dv[c] = 0.f;
    for (int i = j + warp; i < rows && seq_start[i] == seq_start[j] && i - j < window; i += ATT_WARPS) {
        for (int h = g * group; h < (g + 1) * group; ++h) {
            const float* q = qkv + (size_t)i * row_len + q_col + h * head_dim;
            const float* dout = datt + (size_t)i * n_heads * head_dim + h * head_dim;
            const float* st = stats + ((size_t)i * n_heads + h) * 3;
            const float p = expf(warp_dot(q, k, head_dim) * scale - st[0]) / st[1];
            const float sds = scale * p * (warp_dot(dout, v, head_dim) - st[2]);
            for (int c = 0; c < ATT_PER_LANE; ++c) {
                const int d = lane + 32 * c;
                if (d < head_dim) {
                    dk[c] += sds * q[d];
                    dv[c] += p * dout[d];
                }
            }
        }
    }
    for (int c = 0; c < ATT_PER_LANE; ++c) {
        const int d = lane + 32 * c;
        if (d < head_dim) {
            warp_dk[warp][d] = dk[c];
            warp_dv[warp][d] = dv[c];
        }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float sk = 0.f, sv = 0.f;
        for (int w = 0; w < ATT_WARPS; ++w) {
            sk += warp_dk[w][d];
            sv += warp_dv[w][d];
        }
        dqkv[(size_t)j * row_len + k_col + g * head_dim + d] = sk;
        dqkv[(size_t)j * row_len + v_col + g * head_dim + d] = sv;
    }
}
