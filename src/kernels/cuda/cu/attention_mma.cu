// Causal grouped-query attention on the tensor cores: attention.cu's forward and backward — the same packed batch,
// layout, masks, softmax statistics and stats buffer — with q, k, v, dO, P and dS rounded to bf16 and every
// product a warp's mma_bf16_16x8x16 (common.cuh) accumulating in f32. What `--compute bf16` runs on compute
// capability 8.0 and later for heads of up to 256 features (src/kernels/cuda/ops/attention.rs chooses). The
// softmax's max and sum, dO·O and the outputs stay f32; P is rounded after the running max is taken out of it, as
// flash attention does, so the sum (f32) and the weights (bf16) differ by at most bf16's rounding.
//
// Launch convention: each warp owns 16 consecutive rows (query rows for the forward and dq, key rows for dk and dv);
// a block Tiling<HD>::W warps (DKV_W for dk and dv); grid (⌈N / rows per block⌉, heads, HD / OD). Each kernel comes
// in three head sizes HD (64, 128, 256): head_dim rounded up, features past head_dim staged as zeros. Tiles of k,
// v, q and dO are staged in shared memory as bf16 bits (unsigned shorts, the arrays aligned for the 32-bit reads of
// a pair), rows padded by MMA_PAD so that the 8 rows a warp's operand reads touch fall on different banks.
//
// Fragments (common.cuh): lane = 4g + t holds rows g and g + 8 of a 16-row tile; of an 8-column tile of products,
// columns 2t and 2t + 1. A tile of products turns into the A operand of the next product in place (flash
// attention's register reuse): columns 16s.. of P are s[2s] and s[2s + 1].

#define MMA_PAD 8

// The tiling of a head size HD (the features the scores q·kᵀ and dO·vᵀ sum over). W warps per block of the forward,
// DQ_W of dq, DKV_W of dk and dv; KEYS keys staged at a time by the forward, DQ_KEYS by dq (it keeps more fragments,
// so fewer score columns). A block's outputs (out, dq, dk, dv) are the OD features of its slice blockIdx.z, of
// HD / OD; each slice's block computes the scores anew. Heads of 256 take two slices, fewer keys and fewer warps per
// dq and dk/dv block so that their fragments fit a thread's 255 registers and their tiles 48 KB of static shared
// memory (scripts/cuda/ptx_check.md). src/kernels/cuda/ops/attention.rs's `mma_blocks` launches these.
template <int HD>
struct Tiling;
template <>
struct Tiling<64> {
    static constexpr int W = 4, DQ_W = 4, DKV_W = 4, KEYS = 64, DQ_KEYS = 32, OD = 64;
};
template <>
struct Tiling<128> {
    static constexpr int W = 4, DQ_W = 4, DKV_W = 4, KEYS = 64, DQ_KEYS = 32, OD = 128;
};
template <>
struct Tiling<256> {
    static constexpr int W = 4, DQ_W = 2, DKV_W = 1, KEYS = 32, DQ_KEYS = 16, OD = 128;
};

// Features d, d + 1 of a staged bf16 row: one operand register.
__device__ unsigned pair_at(const unsigned short* row, int d) { return *(const unsigned*)(row + d); }

// Feature d of staged rows r and r + 1 (`p` at row r's, rows `stride` apart): one operand register whose pair runs
// down a column (the B operand of a product over rows).
__device__ unsigned column_pair_at(const unsigned short* p, int stride) { return p[0] | (unsigned)p[stride] << 16; }

// Rows t.. (`count` of them, of `stride` values, head features from column `col`) of src staged by the block as
// bf16 into dst[count][HD + MMA_PAD]; rows past `last` and features past head_dim as zeros.
template <int HD>
__device__ void stage_bf16(unsigned short* dst, int count, const float* src, size_t stride, int col, int t, int last,
                           int head_dim) {
    for (int x = threadIdx.x; x < count * HD; x += blockDim.x) {
        const int r = x / HD, d = x % HD;
        dst[r * (HD + MMA_PAD) + d] =
            t + r <= last && d < head_dim ? (unsigned short)bf16_bits(src[(size_t)(t + r) * stride + col + d]) : 0;
    }
}

// src[r][d] (rows of `stride` values from `base`), or 0 for a row past `rows` or a feature past head_dim.
__device__ float value_at(const float* base, size_t stride, int r, int d, int rows, int head_dim) {
    return r < rows && d < head_dim ? base[(size_t)r * stride + d] : 0.f;
}

// The A fragments (per 16 features) of the warp's 16 rows w0.. of a head starting at `base`.
template <int HD>
__device__ void load_rows_a(unsigned (*a)[4], const float* base, size_t stride, int w0, int rows, int head_dim) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = w0 + g + 8 * (i & 1), d = 16 * kk + 2 * t + 8 * (i >> 1);
            a[kk][i] = pack_bf16(value_at(base, stride, r, d, rows, head_dim),
                                 value_at(base, stride, r, d + 1, rows, head_dim));
        }
}

// NT accumulator tiles (this lane's 4 values of each) set to zero.
template <int NT>
__device__ void zero_tiles(float (*acc)[4]) {
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[n][c] = 0.f;
}

// The A fragment of features 16kk.. of 16 rows staged at `rows16` (rows HD + MMA_PAD apart): this lane's rows g
// and g + 8.
template <int HD>
__device__ void staged_a(unsigned* a, const unsigned short* rows16, int kk) {
    const int g = (threadIdx.x & 31) >> 2, d = 16 * kk + 2 * (threadIdx.x & 3);
    const unsigned short *lo = rows16 + g * (HD + MMA_PAD), *hi = lo + 8 * (HD + MMA_PAD);
    a[0] = pair_at(lo, d);
    a[1] = pair_at(hi, d);
    a[2] = pair_at(lo, d + 8);
    a[3] = pair_at(hi, d + 8);
}

// An A fragment held in registers (load_rows_a's), for rows_times_keys.
__device__ void held_a(unsigned* a, const unsigned* held) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = held[i];
}

// s[n] (16 rows × 8 keys per n, NT tiles) = the warp's rows' features · staged rows' features (keys 8n.. of `keys`,
// the B operand read along each key's row); `a_of(kk, a)` gives the rows' A fragment of features 16kk.. (held_a or
// staged_a: a lambda, as CUDA's kernels take them).
template <int HD, int NT, class AFragment>
__device__ void rows_times_keys(float (*s)[4], AFragment a_of, const unsigned short* keys, int head_dim) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    zero_tiles<NT>(s);
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
        if (16 * kk >= head_dim) break;
        unsigned a[4];
        a_of(kk, a);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            const unsigned short* row = keys + (8 * n + g) * (HD + MMA_PAD);
            const unsigned b[2] = {pair_at(row, 16 * kk + 2 * t), pair_at(row, 16 * kk + 8 + 2 * t)};
            mma_bf16_16x8x16(s[n], a, b);
        }
    }
}

// acc[n] (16 rows × features 8n.., OD of them) += w · staged rows, w the products s (16 rows × 16·KS partners, in
// fragments) rounded to bf16, `rows_of` the first of OD features of the KS·16 staged partner rows, PITCH values
// apart (the B operand read down each feature's column); features past `features` are skipped.
template <int OD, int PITCH, int KS>
__device__ void add_weighted(float (*acc)[4], float (*w)[4], const unsigned short* rows_of, int features) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        const unsigned a[4] = {pack_bf16(w[2 * ks][0], w[2 * ks][1]), pack_bf16(w[2 * ks][2], w[2 * ks][3]),
                               pack_bf16(w[2 * ks + 1][0], w[2 * ks + 1][1]),
                               pack_bf16(w[2 * ks + 1][2], w[2 * ks + 1][3])};
#pragma unroll
        for (int n = 0; n < OD / 8; ++n) {
            if (8 * n >= features) break;
            const unsigned short* p = rows_of + (16 * ks + 2 * t) * PITCH + 8 * n + g;
            const unsigned b[2] = {column_pair_at(p, PITCH), column_pair_at(p + 8 * PITCH, PITCH)};
            mma_bf16_16x8x16(acc[n], a, b);
        }
    }
}

// Over the 4 lanes of a quad (the lanes holding one row): the max, then the sum.
__device__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The first key row r sees (its sequence's first row, or the window's), or `rows` for a row past the batch (it
// sees none).
__device__ int first_key(const unsigned* seq_start, int r, int rows, int window) {
    return r < rows ? max((int)seq_start[r], r + 1 - window) : rows;
}

// s (16 rows × 8·NT keys from `key0`, this lane's rows `row` and their first keys) scaled, keys a row does not see
// −∞; returns through `tile_max` each row's max over the tile (the quad's).
template <int NT>
__device__ void mask_scores(float (*s)[4], float* tile_max, const int* row, const int* first, int key0, float scale) {
    const int t = threadIdx.x & 3;
    tile_max[0] = tile_max[1] = NEG_INF;
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int i = c >> 1, key = key0 + 8 * n + 2 * t + (c & 1);
            s[n][c] = key >= first[i] && key <= row[i] ? s[n][c] * scale : NEG_INF;
            tile_max[i] = fmaxf(tile_max[i], s[n][c]);
        }
    tile_max[0] = quad_max(tile_max[0]);
    tile_max[1] = quad_max(tile_max[1]);
}

// A block's query rows (the forward's and dq's): 16·W from blockIdx.x's, 16 per warp, this lane's two of them, and
// the first key each range sees.
struct QueryRows {
    int r0, last, lo;         // the block's first and last rows, and the first key any of them sees
    int w0, w_last, w_first;  // the warp's
    int row[2], first[2];     // this lane's rows (g, g + 8 of the warp's) and their first keys
};

template <int W>
__device__ QueryRows query_rows(const unsigned* seq_start, int rows, int window) {
    QueryRows q;
    q.r0 = blockIdx.x * 16 * W;
    q.last = min(q.r0 + 16 * W, rows) - 1;
    q.lo = first_key(seq_start, q.r0, rows, window);
    q.w0 = q.r0 + 16 * (threadIdx.x >> 5);
    q.w_last = min(q.w0 + 15, rows - 1);
    q.w_first = first_key(seq_start, q.w0, rows, window);
    for (int i = 0; i < 2; ++i) {
        q.row[i] = q.w0 + ((threadIdx.x & 31) >> 2) + 8 * i;
        q.first[i] = first_key(seq_start, q.row[i], rows, window);
    }
    return q;
}

// Whether the warp's rows see none of the keys t0.. (`count` of them): no rows, or all the keys after its last row or
// before its first key. The warp skips such a tile.
__device__ bool sees_none(const QueryRows& q, int rows, int t0, int count) {
    return q.w0 >= rows || t0 > q.w_last || t0 + count <= q.w_first;
}

// out[i, h] = Σ_j softmax_j(q_i·k_j·scale) · v_j, as attention.cu's attention_forward (and its stats, slice 0's
// blocks). Block (b, h, z): query rows b·16·W.. of head h, 16 per warp, output features of slice z; the keys they
// see, KEYS at a time, with a running max and sum per row.
template <int HD>
__device__ void attention_forward_mma(float* out, float* stats, const float* qkv, const unsigned* seq_start, int rows,
                                      int row_len, int q_col, int k_col, int v_col, int n_heads, int n_kv_heads,
                                      int head_dim, float scale, int window) {
    using T = Tiling<HD>;
    constexpr int OD = T::OD, KEYS = T::KEYS;
    __shared__ __align__(16) unsigned short k[KEYS * (HD + MMA_PAD)], v[KEYS * (OD + MMA_PAD)];
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads), t = threadIdx.x & 3;
    const int f0 = blockIdx.z * OD, features = head_dim - f0;  // the slice's first output feature, and its count
    const QueryRows qr = query_rows<T::W>(seq_start, rows, window);
    unsigned qa[HD / 16][4];
    load_rows_a<HD>(qa, qkv + q_col + h * head_dim, row_len, qr.w0, rows, head_dim);
    const auto q_of = [&](int kk, unsigned* a) { held_a(a, qa[kk]); };

    float o[OD / 8][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    zero_tiles<OD / 8>(o);
    for (int t0 = qr.lo; t0 <= qr.last; t0 += KEYS) {
        __syncthreads();  // the last tile's k and v are read
        stage_bf16<HD>(k, KEYS, qkv, row_len, k_col + kvh * head_dim, t0, qr.last, head_dim);
        stage_bf16<OD>(v, KEYS, qkv, row_len, v_col + kvh * head_dim + f0, t0, qr.last, features);
        __syncthreads();
        if (sees_none(qr, rows, t0, KEYS)) continue;
        float s[KEYS / 8][4], tile_max[2];
        rows_times_keys<HD, KEYS / 8>(s, q_of, k, head_dim);
        mask_scores<KEYS / 8>(s, tile_max, qr.row, qr.first, t0, scale);
        float rescale[2], sum[2] = {0.f, 0.f};
        for (int i = 0; i < 2; ++i) {
            const float m_new = fmaxf(m[i], tile_max[i]);
            rescale[i] = m_new == NEG_INF ? 1.f : expf(m[i] - m_new);
            m[i] = m_new;
        }
#pragma unroll
        for (int n = 0; n < KEYS / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                s[n][c] = s[n][c] == NEG_INF ? 0.f : expf(s[n][c] - m[c >> 1]);
                sum[c >> 1] += s[n][c];
            }
        for (int i = 0; i < 2; ++i) l[i] = l[i] * rescale[i] + quad_sum(sum[i]);
#pragma unroll
        for (int n = 0; n < OD / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) o[n][c] *= rescale[c >> 1];
        add_weighted<OD, OD + MMA_PAD, KEYS / 16>(o, s, v, features);
    }
#pragma unroll
    for (int n = 0; n < OD / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int r = qr.row[c >> 1], d = 8 * n + 2 * t + (c & 1);
            if (r < rows && d < features)
                out[(size_t)r * n_heads * head_dim + h * head_dim + f0 + d] = o[n][c] / l[c >> 1];
        }
    for (int i = 0; i < 2; ++i)
        if (stats && t == 0 && blockIdx.z == 0 && qr.row[i] < rows) {
            float* st = stats + ((size_t)qr.row[i] * n_heads + h) * 3;
            st[0] = m[i];
            st[1] = l[i];
        }
}

// attention.cu's attention_backward_dq on the tensor cores: dq of the block's query rows (16 per warp) and each
// (row, head)'s D = dO·O in stats (slice 0's blocks); one pass over the keys the rows see, DQ_KEYS at a time, with
// the forward's max and sum: dS = P·(dO·vᵀ − D) and dq += dS·k, the slice's features of k.
template <int HD>
__device__ void attention_backward_dq_mma(float* dqkv, float* stats, const float* datt, const float* qkv,
                                          const float* att, const unsigned* seq_start, int rows, int row_len, int q_col,
                                          int k_col, int v_col, int n_heads, int n_kv_heads, int head_dim, float scale,
                                          int window) {
    using T = Tiling<HD>;
    constexpr int OD = T::OD, KEYS = T::DQ_KEYS;
    __shared__ __align__(16) unsigned short k[KEYS * (HD + MMA_PAD)], v[KEYS * (HD + MMA_PAD)];
    __shared__ __align__(16) unsigned short dout[16 * T::DQ_W * (HD + MMA_PAD)];
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv_heads), t = threadIdx.x & 3;
    const int f0 = blockIdx.z * OD, features = head_dim - f0;
    const QueryRows qr = query_rows<T::DQ_W>(seq_start, rows, window);
    const size_t att_stride = (size_t)n_heads * head_dim;
    unsigned qa[HD / 16][4];
    load_rows_a<HD>(qa, qkv + q_col + h * head_dim, row_len, qr.w0, rows, head_dim);
    // The rows' dO, staged: its fragments would not fit the registers beside q's (and dq's) for heads of 256.
    stage_bf16<HD>(dout, 16 * T::DQ_W, datt, att_stride, h * head_dim, qr.r0, qr.last, head_dim);
    const unsigned short* my_dout = dout + (qr.w0 - qr.r0) * (HD + MMA_PAD);
    __syncthreads();
    const auto q_of = [&](int kk, unsigned* a) { held_a(a, qa[kk]); };
    const auto dout_of = [&](int kk, unsigned* a) { staged_a<HD>(a, my_dout, kk); };
    // D = dO·O (f32) of this lane's rows: the quad's lanes take every fourth feature.
    float big_d[2];
    for (int i = 0; i < 2; ++i) {
        float dd = 0.f;
        for (int d = t; d < head_dim; d += 4)
            dd += value_at(datt + h * head_dim, att_stride, qr.row[i], d, rows, head_dim) *
                  value_at(att + h * head_dim, att_stride, qr.row[i], d, rows, head_dim);
        big_d[i] = quad_sum(dd);
    }
    const bool idle = qr.w0 >= rows;  // a warp past the batch only stages

    // The forward's max and sum of this lane's rows' scores (a row in the batch sees at least itself: l ≥ 1).
    float m[2], l[2];
    for (int i = 0; i < 2; ++i) {
        const bool in = qr.row[i] < rows;
        const size_t st = ((size_t)qr.row[i] * n_heads + h) * 3;
        m[i] = in ? stats[st] : 0.f;
        l[i] = in ? stats[st + 1] : 1.f;
    }
    // dq_i = Σ_j dS_ij·k_j (·scale at the end).
    float dq[OD / 8][4];
    zero_tiles<OD / 8>(dq);
    for (int t0 = qr.lo; t0 <= qr.last; t0 += KEYS) {
        __syncthreads();  // the last tile's k and v are read
        stage_bf16<HD>(k, KEYS, qkv, row_len, k_col + kvh * head_dim, t0, qr.last, head_dim);
        stage_bf16<HD>(v, KEYS, qkv, row_len, v_col + kvh * head_dim, t0, qr.last, head_dim);
        __syncthreads();
        if (sees_none(qr, rows, t0, KEYS)) continue;
        float s[KEYS / 8][4], dp[KEYS / 8][4], tile_max[2];
        rows_times_keys<HD, KEYS / 8>(s, q_of, k, head_dim);
        rows_times_keys<HD, KEYS / 8>(dp, dout_of, v, head_dim);
        mask_scores<KEYS / 8>(s, tile_max, qr.row, qr.first, t0, scale);
#pragma unroll
        for (int n = 0; n < KEYS / 8; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int i = c >> 1;
                const float p = s[n][c] == NEG_INF ? 0.f : expf(s[n][c] - m[i]) / l[i];
                s[n][c] = p * (dp[n][c] - big_d[i]);
            }
        add_weighted<OD, HD + MMA_PAD, KEYS / 16>(dq, s, k + f0, features);
    }
    if (idle) return;
#pragma unroll
    for (int n = 0; n < OD / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int r = qr.row[c >> 1], d = 8 * n + 2 * t + (c & 1);
            if (r < rows && d < features) dqkv[(size_t)r * row_len + q_col + h * head_dim + f0 + d] = dq[n][c] * scale;
        }
    for (int i = 0; i < 2; ++i)
        if (t == 0 && blockIdx.z == 0 && qr.row[i] < rows) stats[((size_t)qr.row[i] * n_heads + h) * 3 + 2] = big_d[i];
}

// attention.cu's attention_backward_dkv on the tensor cores. Block (b, g, z): key rows b·16·DKV_W.. of kv head g, 16
// per warp, staged once, and output features of slice z; the query rows that see any of them (to the last key's
// sequence end or window), 16 at a time, for each query head of the group: Pᵀ and dSᵀ from kᵀ·q and vᵀ·dO, then
// dv += Pᵀ·dO and dk += dSᵀ·q over the slice's features of dO and q.
template <int HD>
__device__ void attention_backward_dkv_mma(float* dqkv, const float* stats, const float* datt, const float* qkv,
                                           const unsigned* seq_start, int rows, int row_len, int q_col, int k_col,
                                           int v_col, int n_heads, int n_kv_heads, int head_dim, float scale,
                                           int window) {
    using T = Tiling<HD>;
    constexpr int OD = T::OD, ROWS = 16 * T::DKV_W;
    __shared__ __align__(16) unsigned short k[ROWS * (HD + MMA_PAD)], v[ROWS * (HD + MMA_PAD)];
    __shared__ __align__(16) unsigned short q[16 * (HD + MMA_PAD)], dout[16 * (HD + MMA_PAD)];
    __shared__ float st[16][3];
    const int j0 = blockIdx.x * ROWS, gk = blockIdx.y, group = n_heads / n_kv_heads;
    const int f0 = blockIdx.z * OD, features = head_dim - f0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int wk = j0 + 16 * warp;
    const int key[2] = {wk + g, wk + g + 8};
    const int last_key = min(j0 + ROWS, rows) - 1;
    const unsigned last_seq = seq_start[last_key];
    const size_t att_stride = (size_t)n_heads * head_dim;
    stage_bf16<HD>(k, ROWS, qkv, row_len, k_col + gk * head_dim, j0, last_key, head_dim);
    stage_bf16<HD>(v, ROWS, qkv, row_len, v_col + gk * head_dim, j0, last_key, head_dim);
    const unsigned short* my_k = k + 16 * warp * (HD + MMA_PAD);
    const unsigned short* my_v = v + 16 * warp * (HD + MMA_PAD);
    float dk[OD / 8][4], dv[OD / 8][4];
    zero_tiles<OD / 8>(dk);
    zero_tiles<OD / 8>(dv);
    for (int i0 = j0; i0 < rows && (i0 <= last_key || (seq_start[i0] == last_seq && i0 - last_key < window));
         i0 += 16) {
        const int i_last = min(i0 + 15, rows - 1);
        // The query columns of this lane's products (8n + 2t + (c & 1)) and the first key each sees.
        int first[2][2];
        for (int n = 0; n < 2; ++n)
            for (int e = 0; e < 2; ++e) first[n][e] = first_key(seq_start, i0 + 8 * n + 2 * t + e, rows, window);
        for (int h = gk * group; h < (gk + 1) * group; ++h) {
            __syncthreads();  // k and v are staged; the last tile's q, dout and st are read
            stage_bf16<HD>(q, 16, qkv, row_len, q_col + h * head_dim, i0, i_last, head_dim);
            stage_bf16<HD>(dout, 16, datt, att_stride, h * head_dim, i0, i_last, head_dim);
            for (int x = threadIdx.x; x < 48; x += blockDim.x) {
                const int r = x / 3;
                st[r][x % 3] = i0 + r <= i_last ? stats[((size_t)(i0 + r) * n_heads + h) * 3 + x % 3] : 0.f;
            }
            __syncthreads();
            // Queries come at or after the keys they see: a tile wholly before the warp's keys has nothing for it.
            if (wk > last_key || i0 + 15 < wk) continue;
            // sᵀ (16 keys × 16 queries) = k·qᵀ, dPᵀ = v·dOᵀ.
            float s[2][4], dp[2][4];
            zero_tiles<2>(s);
            zero_tiles<2>(dp);
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                if (16 * kk >= head_dim) break;
                const int d = 16 * kk + 2 * t;
                unsigned ka[4], va[4];
                staged_a<HD>(ka, my_k, kk);
                staged_a<HD>(va, my_v, kk);
                for (int n = 0; n < 2; ++n) {
                    const unsigned short *qr = q + (8 * n + g) * (HD + MMA_PAD),
                                         *dr = dout + (8 * n + g) * (HD + MMA_PAD);
                    const unsigned qb[2] = {pair_at(qr, d), pair_at(qr, d + 8)};
                    const unsigned db[2] = {pair_at(dr, d), pair_at(dr, d + 8)};
                    mma_bf16_16x8x16(s[n], ka, qb);
                    mma_bf16_16x8x16(dp[n], va, db);
                }
            }
            // Pᵀ into s, dSᵀ (with the scale) into dp.
            for (int n = 0; n < 2; ++n)
                for (int c = 0; c < 4; ++c) {
                    const int qi = 8 * n + 2 * t + (c & 1), query = i0 + qi, j = key[c >> 1];
                    const bool sees = query <= i_last && j <= last_key && j >= first[n][c & 1] && j <= query;
                    const float p = sees ? expf(s[n][c] * scale - st[qi][0]) / st[qi][1] : 0.f;
                    s[n][c] = p;
                    dp[n][c] = scale * p * (dp[n][c] - st[qi][2]);
                }
            add_weighted<OD, HD + MMA_PAD, 1>(dv, s, dout + f0, features);
            add_weighted<OD, HD + MMA_PAD, 1>(dk, dp, q + f0, features);
        }
    }
#pragma unroll
    for (int n = 0; n < OD / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int j = key[c >> 1], d = 8 * n + 2 * t + (c & 1);
            if (j <= last_key && d < features) {
                dqkv[(size_t)j * row_len + k_col + gk * head_dim + f0 + d] = dk[n][c];
                dqkv[(size_t)j * row_len + v_col + gk * head_dim + f0 + d] = dv[n][c];
            }
        }
}

// The kernels, one per head size (src/kernels/cuda/ops/attention.rs launches the smallest that holds head_dim).
#define MMA_FORWARD_ARGS \
    out, stats, qkv, seq_start, rows, row_len, q_col, k_col, v_col, n_heads, n_kv_heads, head_dim, scale, window
#define MMA_DQ_ARGS                                                                                                   \
    dqkv, stats, datt, qkv, att, seq_start, rows, row_len, q_col, k_col, v_col, n_heads, n_kv_heads, head_dim, scale, \
        window
#define MMA_DKV_ARGS \
    dqkv, stats, datt, qkv, seq_start, rows, row_len, q_col, k_col, v_col, n_heads, n_kv_heads, head_dim, scale, window
extern "C" __global__ void attention_forward_mma64(float* out, float* stats, const float* qkv,
                                                   const unsigned* seq_start, int rows, int row_len, int q_col,
                                                   int k_col, int v_col, int n_heads, int n_kv_heads, int head_dim,
                                                   float scale, int window) {
    attention_forward_mma<64>(MMA_FORWARD_ARGS);
}
extern "C" __global__ void attention_forward_mma128(float* out, float* stats, const float* qkv,
                                                    const unsigned* seq_start, int rows, int row_len, int q_col,
                                                    int k_col, int v_col, int n_heads, int n_kv_heads, int head_dim,
                                                    float scale, int window) {
    attention_forward_mma<128>(MMA_FORWARD_ARGS);
}
extern "C" __global__ void attention_forward_mma256(float* out, float* stats, const float* qkv,
                                                    const unsigned* seq_start, int rows, int row_len, int q_col,
                                                    int k_col, int v_col, int n_heads, int n_kv_heads, int head_dim,
                                                    float scale, int window) {
    attention_forward_mma<256>(MMA_FORWARD_ARGS);
}
extern "C" __global__ void attention_backward_dq_mma64(float* dqkv, float* stats, const float* datt, const float* qkv,
                                                       const float* att, const unsigned* seq_start, int rows,
                                                       int row_len, int q_col, int k_col, int v_col, int n_heads,
                                                       int n_kv_heads, int head_dim, float scale, int window) {
    attention_backward_dq_mma<64>(MMA_DQ_ARGS);
}
extern "C" __global__ void attention_backward_dq_mma128(float* dqkv, float* stats, const float* datt, const float* qkv,
                                                        const float* att, const unsigned* seq_start, int rows,
                                                        int row_len, int q_col, int k_col, int v_col, int n_heads,
                                                        int n_kv_heads, int head_dim, float scale, int window) {
    attention_backward_dq_mma<128>(MMA_DQ_ARGS);
}
extern "C" __global__ void attention_backward_dq_mma256(float* dqkv, float* stats, const float* datt, const float* qkv,
                                                        const float* att, const unsigned* seq_start, int rows,
                                                        int row_len, int q_col, int k_col, int v_col, int n_heads,
                                                        int n_kv_heads, int head_dim, float scale, int window) {
    attention_backward_dq_mma<256>(MMA_DQ_ARGS);
}
extern "C" __global__ void attention_backward_dkv_mma64(float* dqkv, const float* stats, const float* datt,
                                                        const float* qkv, const unsigned* seq_start, int rows,
                                                        int row_len, int q_col, int k_col, int v_col, int n_heads,
                                                        int n_kv_heads, int head_dim, float scale, int window) {
    attention_backward_dkv_mma<64>(MMA_DKV_ARGS);
}
extern "C" __global__ void attention_backward_dkv_mma128(float* dqkv, const float* stats, const float* datt,
                                                         const float* qkv, const unsigned* seq_start, int rows,
                                                         int row_len, int q_col, int k_col, int v_col, int n_heads,
                                                         int n_kv_heads, int head_dim, float scale, int window) {
    attention_backward_dkv_mma<128>(MMA_DKV_ARGS);
}
extern "C" __global__ void attention_backward_dkv_mma256(float* dqkv, const float* stats, const float* datt,
                                                         const float* qkv, const unsigned* seq_start, int rows,
                                                         int row_len, int q_col, int k_col, int v_col, int n_heads,
                                                         int n_kv_heads, int head_dim, float scale, int window) {
    attention_backward_dkv_mma<256>(MMA_DKV_ARGS);
}
