// Causal grouped-query attention over a packed batch, as src/kernels/attention.rs: rows of all sequences end to
// end, row i attending to rows first..=i of its own sequence, first = max(seq_start[i], i + 1 − window); query
// head h reads kv head h / (n_heads / n_kv_heads); scores q·k·scale. qkv (N, row_len) holds q, k, v at their
// columns; out (N, n_heads·head_dim).
//
// Launch convention: blocks of ATT_WARPS warps; the forward takes ATT_ROWS rows of one head per block (grid
// (⌈N / ATT_ROWS⌉, heads)), the backward one block per (row, head) — grid (N, heads) — where each warp takes
// every ATT_WARPS-th visible key. Each keeps a running softmax, so no row of scores is stored. (The CPU finds the
// exact max first: the same result up to exp's rescaling.)

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

// The forward's tiles: ATT_ROWS query rows per block (two per warp, one per half-warp), ATT_KEYS keys at a time
// staged in shared memory for all of them (each key's k and v read once per block, not once per query row).
#define ATT_ROWS 8
#define ATT_KEYS 16
// Features per lane of a half-warp's output row.
#define ATT_PER_HALF (ATT_MAX_HEAD_DIM / 16)

// out[i, h] = Σ_j softmax_j(q_i·k_j·scale) · v_j. Grid (⌈N / ATT_ROWS⌉, n_heads), ATT_WARPS warps. The block's rows
// are consecutive, so the keys any of them sees run from the first row's first key to the last row; tile by tile,
// lane j of a half-warp scores key j of the tile against its row's q, the half-warp keeps its row's running max
// and sum, and each lane adds its features of Σ p_j·v_j.
extern "C" __global__ void attention_forward(float* out, const float* qkv, const unsigned* seq_start, int rows,
                                             int row_len, int q_col, int k_col, int v_col, int n_heads,
                                             int n_kv_heads, int head_dim, float scale, int window) {
    __shared__ float q[ATT_ROWS][ATT_MAX_HEAD_DIM];
    __shared__ float k[ATT_KEYS][ATT_MAX_HEAD_DIM + 1];  // + 1: lanes reading one feature of 16 keys hit 16 banks
    __shared__ float v[ATT_KEYS][ATT_MAX_HEAD_DIM + 1];
    __shared__ float p_tile[ATT_ROWS][ATT_KEYS];
    const int r0 = blockIdx.x * ATT_ROWS, h = blockIdx.y, kv = h / (n_heads / n_kv_heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, key_lane = lane & 15;
    const int mine = 2 * warp + (lane >> 4), row = r0 + mine;
    const bool valid = row < rows;
    const int last = min(r0 + ATT_ROWS, rows) - 1;
    const int lo = max((int)seq_start[r0], r0 + 1 - window);  // the block's first row's first key: the lowest
    const int first = valid ? max((int)seq_start[row], row + 1 - window) : 0;
    for (int x = threadIdx.x; x < ATT_ROWS * head_dim; x += blockDim.x) {
        const int r = x / head_dim, d = x % head_dim;
        q[r][d] = r0 + r < rows ? qkv[(size_t)(r0 + r) * row_len + q_col + h * head_dim + d] : 0.f;
    }

    float m = NEG_INF, l = 0.f, o[ATT_PER_HALF];
    for (int c = 0; c < ATT_PER_HALF; ++c) o[c] = 0.f;
    for (int t = lo; t <= last; t += ATT_KEYS) {
        __syncthreads();  // q is written; the last tile's k, v and p are read
        for (int x = threadIdx.x; x < ATT_KEYS * head_dim; x += blockDim.x) {
            const int j = x / head_dim, d = x % head_dim;
            const bool in = t + j <= last;
            k[j][d] = in ? qkv[(size_t)(t + j) * row_len + k_col + kv * head_dim + d] : 0.f;
            v[j][d] = in ? qkv[(size_t)(t + j) * row_len + v_col + kv * head_dim + d] : 0.f;
        }
        __syncthreads();
        const int key = t + key_lane;
        const bool seen = valid && key >= first && key <= row;
        float s = NEG_INF;
        if (seen) {
            s = 0.f;
            for (int d = 0; d < head_dim; ++d) s += q[mine][d] * k[key_lane][d];
            s *= scale;
        }
        // The half-warp's max and sum (offsets below 16 stay within a half).
        float tile_max = s;
        for (int off = 8; off > 0; off >>= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
        const float m_new = fmaxf(m, tile_max);
        const float p = seen ? expf(s - m_new) : 0.f;
        const float rescale = m_new == NEG_INF ? 1.f : expf(m - m_new);
        float tile_sum = p;
        for (int off = 8; off > 0; off >>= 1) tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, off);
        l = l * rescale + tile_sum;
        m = m_new;
        p_tile[mine][key_lane] = p;
        __syncthreads();  // the half-warp's p are written
        for (int c = 0; c < ATT_PER_HALF; ++c) o[c] *= rescale;
        for (int j = 0; j < ATT_KEYS; ++j) {
            const float pj = p_tile[mine][j];
            if (pj == 0.f) continue;
            for (int c = 0; c < ATT_PER_HALF; ++c) {
                const int d = key_lane + 16 * c;
                if (d < head_dim) o[c] += pj * v[j][d];
            }
        }
    }
    if (!valid) return;
    float* dst = out + (size_t)row * n_heads * head_dim + h * head_dim;
    for (int c = 0; c < ATT_PER_HALF; ++c) {
        const int d = key_lane + 16 * c;
        if (d < head_dim) dst[d] = o[c] / l;
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
