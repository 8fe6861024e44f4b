// Causal grouped-query attention over a packed batch, as src/kernels/attention.rs: rows of all sequences end to
// end, row i attending to rows first..=i of its own sequence, first = max(seq_start[i], i + 1 − window); query
// head h reads kv head h / (n_heads / n_kv_heads); scores q·k·scale. qkv (N, row_len) holds q, k, v at their
// columns; out (N, n_heads·head_dim).
//
// Launch convention: blocks of ATT_WARPS warps, each taking ATT_ROWS rows of one head (grid (⌈N / ATT_ROWS⌉,
// heads)), one row per half-warp. The forward keeps a running softmax, so no row of scores is stored, and leaves
// each row's max and sum for the backward. (The CPU finds the exact max first: the same result up to exp's
// rescaling.)

// Warps per block: the launches (src/kernels/cuda/ops/attention.rs) use 32 · ATT_WARPS threads.
#define ATT_WARPS 4
// The longest head these kernels take: 16 lanes × 16 features per lane (the launches check head_dim ≤ it).
#define ATT_MAX_HEAD_DIM 256

// The tiles: ATT_ROWS rows per block (two per warp, one per half-warp); the forward stages ATT_KEYS keys at a time in
// shared memory for all of them (each key's k and v read once per block, not once per query row).
#define ATT_ROWS 8
#define ATT_KEYS 16
// Features per lane of a half-warp's output row.
#define ATT_PER_HALF (ATT_MAX_HEAD_DIM / 16)

// head_dim values of `count` rows t.. of `src` (rows of `stride` values, from column `col`) staged by the block into
// dst[count][dst_stride]; rows past `last` as zeros.
__device__ void stage_rows(float* dst, int dst_stride, int count, const float* src, size_t stride, int col, int t,
                           int last, int head_dim) {
    for (int x = threadIdx.x; x < count * head_dim; x += blockDim.x) {
        const int r = x / head_dim, d = x % head_dim;
        dst[r * dst_stride + d] = t + r <= last ? src[(size_t)(t + r) * stride + col + d] : 0.f;
    }
}

// acc[c] += Σ_j w[j]·rows[j][lane16 + 16c] over `count` staged rows (rows `stride` apart; a zero weight skipped):
// this lane's features of a tile's rows weighted by its row's weights (p·v, dS·k, dS·q, P·dO).
__device__ void add_weighted_rows(float* acc, const float* w, int count, const float* rows, int stride, int lane16,
                                  int head_dim) {
    for (int j = 0; j < count; ++j) {
        if (w[j] == 0.f) continue;
        for (int c = 0; c < ATT_PER_HALF; ++c) {
            const int d = lane16 + 16 * c;
            if (d < head_dim) acc[c] += w[j] * rows[j * stride + d];
        }
    }
}

// out[i, h] = Σ_j softmax_j(q_i·k_j·scale) · v_j. Grid (⌈N / ATT_ROWS⌉, n_heads), ATT_WARPS warps. The block's rows
// are consecutive, so the keys any of them sees run from the first row's first key to the last row; tile by tile,
// lane j of a half-warp scores key j of the tile against its row's q, the half-warp keeps its row's running max
// and sum, and each lane adds its features of Σ p_j·v_j. A training pass gives stats (N, n_heads, 3): each (row,
// head)'s max and sum go to its first two, for the backward (null: not kept).
extern "C" __global__ void attention_forward(float* out, float* stats, const float* qkv, const unsigned* seq_start,
                                             int rows, int row_len, int q_col, int k_col, int v_col, int n_heads,
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
    stage_rows(&q[0][0], ATT_MAX_HEAD_DIM, ATT_ROWS, qkv, row_len, q_col + h * head_dim, r0, last, head_dim);

    float m = NEG_INF, l = 0.f, o[ATT_PER_HALF];
    for (int c = 0; c < ATT_PER_HALF; ++c) o[c] = 0.f;
    for (int t = lo; t <= last; t += ATT_KEYS) {
        __syncthreads();  // q is written; the last tile's k, v and p are read
        stage_rows(&k[0][0], ATT_MAX_HEAD_DIM + 1, ATT_KEYS, qkv, row_len, k_col + kv * head_dim, t, last, head_dim);
        stage_rows(&v[0][0], ATT_MAX_HEAD_DIM + 1, ATT_KEYS, qkv, row_len, v_col + kv * head_dim, t, last, head_dim);
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
        add_weighted_rows(o, p_tile[mine], ATT_KEYS, &v[0][0], ATT_MAX_HEAD_DIM + 1, key_lane, head_dim);
    }
    if (!valid) return;
    float* dst = out + (size_t)row * n_heads * head_dim + h * head_dim;
    for (int c = 0; c < ATT_PER_HALF; ++c) {
        const int d = key_lane + 16 * c;
        if (d < head_dim) dst[d] = o[c] / l;
    }
    if (stats && key_lane == 0) {
        float* st = stats + ((size_t)row * n_heads + h) * 3;
        st[0] = m;
        st[1] = l;
    }
}

// The backward, as attention_backward (flash-style: each row's softmax recomputed from q and k): with P the
// probabilities, D_i = dO_i·O_i and s = scale, dS_ij = P_ij·(dO_i·v_j − D_i), dq_i = Σ_j dS_ij·k_j·s,
// dk_j = Σ_i dS_ij·q_i·s, dv_j = Σ_i P_ij·dO_i, dk/dv of a kv head summing over the query heads that share it.
// Two launches, after the forward has put each (row, head)'s softmax max and sum in stats (N, n_heads, 3):
// attention_backward_dq (grid (⌈N / ATT_ROWS⌉, n_heads)) reads them, writes dq and adds D as the third;
// attention_backward_dkv (grid (⌈N / ATT_ROWS⌉, n_kv_heads)) reads all three for dk and dv. dqkv's q, k, v columns are
// written (=), every other column left as it is.
//
// Both in tiles like the forward: a block owns ATT_ROWS rows (query rows for dq, key rows for dk/dv), one per
// half-warp, and walks its partners (the keys they see; the query rows that see them) ATT_PAIRS at a time, staged
// in shared memory for all its rows. Lane x of a half-warp pairs its row with partner x & 7, over every other
// feature from x >> 3: two lanes per pair, one shuffle joins their halves of each dot product.
#define ATT_PAIRS 8
// A staged partner row's stride: + 2 puts lanes reading features 2m + half of 8 rows on 16 different banks.
#define ATT_PAIR_STRIDE (ATT_MAX_HEAD_DIM + 2)

// a·b over head_dim features, by the two lanes of a pair (this lane's half: features half, half + 2, …); both get it.
__device__ float pair_dot(const float* a, const float* b, int head_dim, int half) {
    float s = 0.f;
    for (int d = half; d < head_dim; d += 2) s += a[d] * b[d];
    return s + __shfl_xor_sync(0xffffffffu, s, 8);
}

// Over the 8 partners of a half-warp (each value is in both lanes of its pair): the max, then the sum.
__device__ float pairs_max(float v) {
    for (int off = 4; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}
__device__ float pairs_sum(float v) {
    for (int off = 4; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// datt (N, n_heads·head_dim) = ∂L/∂out, att the forward's out. Block (b, h): query rows b·ATT_ROWS.. of head h;
// one pass over the keys they see, as the forward walks them, with the forward's max and sum.
extern "C" __global__ void attention_backward_dq(float* dqkv, float* stats, const float* datt, const float* qkv,
                                                 const float* att, const unsigned* seq_start, int rows, int row_len,
                                                 int q_col, int k_col, int v_col, int n_heads, int n_kv_heads,
                                                 int head_dim, float scale, int window) {
    __shared__ float q[ATT_ROWS][ATT_MAX_HEAD_DIM], dout[ATT_ROWS][ATT_MAX_HEAD_DIM];
    __shared__ float k[ATT_PAIRS][ATT_PAIR_STRIDE], v[ATT_PAIRS][ATT_PAIR_STRIDE];
    __shared__ float ds_tile[ATT_ROWS][ATT_PAIRS];
    const int r0 = blockIdx.x * ATT_ROWS, h = blockIdx.y, kv = h / (n_heads / n_kv_heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, lane16 = lane & 15;
    const int partner = lane & 7, half = (lane >> 3) & 1;
    const int mine = 2 * warp + (lane >> 4), row = r0 + mine;
    const bool valid = row < rows;
    const int last = min(r0 + ATT_ROWS, rows) - 1;
    const int lo = max((int)seq_start[r0], r0 + 1 - window);
    const int first = valid ? max((int)seq_start[row], row + 1 - window) : 0;
    const size_t out_row = (size_t)row * n_heads * head_dim + h * head_dim;
    const size_t att_stride = (size_t)n_heads * head_dim;
    stage_rows(&q[0][0], ATT_MAX_HEAD_DIM, ATT_ROWS, qkv, row_len, q_col + h * head_dim, r0, last, head_dim);
    stage_rows(&dout[0][0], ATT_MAX_HEAD_DIM, ATT_ROWS, datt, att_stride, h * head_dim, r0, last, head_dim);
    // D = dO·O of this half-warp's row.
    float dd = 0.f;
    if (valid)
        for (int d = lane16; d < head_dim; d += 16) dd += datt[out_row + d] * att[out_row + d];
    for (int off = 8; off > 0; off >>= 1) dd += __shfl_xor_sync(0xffffffffu, dd, off);
    const float big_d = dd;

    // The forward's max and sum of this row's scores (a valid row sees at least itself: l ≥ 1).
    const size_t st = ((size_t)row * n_heads + h) * 3;
    const float m = valid ? stats[st] : 0.f, l = valid ? stats[st + 1] : 1.f;
    // dq_i = Σ_j dS_ij·k_j (·scale at the end); lane16 keeps features lane16 + 16c.
    float dq[ATT_PER_HALF];
    for (int c = 0; c < ATT_PER_HALF; ++c) dq[c] = 0.f;
    for (int t = lo; t <= last; t += ATT_PAIRS) {
        __syncthreads();  // the last tile's k, v and dS are read
        stage_rows(&k[0][0], ATT_PAIR_STRIDE, ATT_PAIRS, qkv, row_len, k_col + kv * head_dim, t, last, head_dim);
        stage_rows(&v[0][0], ATT_PAIR_STRIDE, ATT_PAIRS, qkv, row_len, v_col + kv * head_dim, t, last, head_dim);
        __syncthreads();
        const int key = t + partner;
        const bool seen = valid && key >= first && key <= row;
        const float s = pair_dot(q[mine], k[partner], head_dim, half) * scale;
        const float dov = pair_dot(dout[mine], v[partner], head_dim, half);
        if (half == 0) ds_tile[mine][partner] = seen ? expf(s - m) / l * (dov - big_d) : 0.f;
        __syncthreads();  // the half-warp's dS are written
        add_weighted_rows(dq, ds_tile[mine], ATT_PAIRS, &k[0][0], ATT_PAIR_STRIDE, lane16, head_dim);
    }
    if (!valid) return;
    for (int c = 0; c < ATT_PER_HALF; ++c) {
        const int d = lane16 + 16 * c;
        if (d < head_dim) dqkv[(size_t)row * row_len + q_col + h * head_dim + d] = dq[c] * scale;
    }
    if (lane16 == 0) stats[st + 2] = big_d;
}

// Block (b, g): key rows b·ATT_ROWS.. of kv head g. The query rows that see any of them run from the first key to
// the last key's sequence end or window, whichever comes first (a key sees only rows of its own sequence, and
// rows past the block are in the last key's); tile by tile, for each query head of the group.
extern "C" __global__ void attention_backward_dkv(float* dqkv, const float* stats, const float* datt, const float* qkv,
                                                  const unsigned* seq_start, int rows, int row_len, int q_col,
                                                  int k_col, int v_col, int n_heads, int n_kv_heads, int head_dim,
                                                  float scale, int window) {
    __shared__ float k[ATT_ROWS][ATT_MAX_HEAD_DIM], v[ATT_ROWS][ATT_MAX_HEAD_DIM];
    __shared__ float q[ATT_PAIRS][ATT_PAIR_STRIDE], dout[ATT_PAIRS][ATT_PAIR_STRIDE];
    __shared__ float st[ATT_PAIRS][3];
    __shared__ float p_tile[ATT_ROWS][ATT_PAIRS], ds_tile[ATT_ROWS][ATT_PAIRS];
    const int j0 = blockIdx.x * ATT_ROWS, g = blockIdx.y, group = n_heads / n_kv_heads;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, lane16 = lane & 15;
    const int partner = lane & 7, half = (lane >> 3) & 1;
    const int mine = 2 * warp + (lane >> 4), key = j0 + mine;
    const bool valid = key < rows;
    const int last_key = min(j0 + ATT_ROWS, rows) - 1;
    const unsigned last_seq = seq_start[last_key];
    const size_t att_stride = (size_t)n_heads * head_dim;
    stage_rows(&k[0][0], ATT_MAX_HEAD_DIM, ATT_ROWS, qkv, row_len, k_col + g * head_dim, j0, last_key, head_dim);
    stage_rows(&v[0][0], ATT_MAX_HEAD_DIM, ATT_ROWS, qkv, row_len, v_col + g * head_dim, j0, last_key, head_dim);
    float dk[ATT_PER_HALF], dv[ATT_PER_HALF];
    for (int c = 0; c < ATT_PER_HALF; ++c) dk[c] = dv[c] = 0.f;
    for (int t = j0; t < rows && (t <= last_key || (seq_start[t] == last_seq && t - last_key < window));
         t += ATT_PAIRS) {
        const int last = min(t + ATT_PAIRS, rows) - 1;
        const int i = t + partner;
        const int first = i <= last ? max((int)seq_start[i], i + 1 - window) : rows;
        const bool sees = valid && i <= last && key >= first && key <= i;
        for (int h = g * group; h < (g + 1) * group; ++h) {
            __syncthreads();  // k and v are written; the last tile's q, dout, stats, P and dS are read
            stage_rows(&q[0][0], ATT_PAIR_STRIDE, ATT_PAIRS, qkv, row_len, q_col + h * head_dim, t, last, head_dim);
            stage_rows(&dout[0][0], ATT_PAIR_STRIDE, ATT_PAIRS, datt, att_stride, h * head_dim, t, last, head_dim);
            if (threadIdx.x < ATT_PAIRS * 3) {
                const int r = threadIdx.x / 3;
                st[r][threadIdx.x % 3] =
                    t + r <= last ? stats[((size_t)(t + r) * n_heads + h) * 3 + threadIdx.x % 3] : 0.f;
            }
            __syncthreads();
            const float s = pair_dot(q[partner], k[mine], head_dim, half) * scale;
            const float dov = pair_dot(dout[partner], v[mine], head_dim, half);
            if (half == 0) {
                const float p = sees ? expf(s - st[partner][0]) / st[partner][1] : 0.f;
                p_tile[mine][partner] = p;
                ds_tile[mine][partner] = scale * p * (dov - st[partner][2]);
            }
            __syncthreads();  // the half-warp's P and dS are written
            add_weighted_rows(dk, ds_tile[mine], ATT_PAIRS, &q[0][0], ATT_PAIR_STRIDE, lane16, head_dim);
            add_weighted_rows(dv, p_tile[mine], ATT_PAIRS, &dout[0][0], ATT_PAIR_STRIDE, lane16, head_dim);
        }
    }
    if (!valid) return;
    for (int c = 0; c < ATT_PER_HALF; ++c) {
        const int d = lane16 + 16 * c;
        if (d < head_dim) {
            dqkv[(size_t)key * row_len + k_col + g * head_dim + d] = dk[c];
            dqkv[(size_t)key * row_len + v_col + g * head_dim + d] = dv[c];
        }
    }
}
