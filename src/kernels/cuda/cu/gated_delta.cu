// Qwen3.5's linear attention, as src/kernels/gated_delta.rs: the depthwise causal convolution + SiLU before it
// (causal_conv_silu_forward / _backward / _cached) and the gated delta rule (delta_rule_forward / _backward /
// _cached), one value head at a time over head-major rows — q, k (heads, N, dk); v, o (heads, N, dv); g, β
// (heads, N) — each packed sequence from a zero state S (dk, dv), S[i·dv + j]:
//   S ← e^g·S;  δ = β·(v − Sᵀk);  S ← S + k δᵀ;  o = Sᵀq.
// Column j of S evolves on its own (δ_j reads only column j), so one warp holds a column: lane l its rows
// i = l + 32c, c < R (rows per lane: DELTA_PER_LANE, or 4 in the backward for dk ≤ 128), in registers, and each sum
// over i is warp_sum's butterfly (every lane the same bits). The sequences come as `seq_table`'s triples (start, end, first checkpoint); the states the backward
// starts its chunks from are saved per (head, checkpoint), each a whole S.

// The longest key head: 32 lanes × 8 rows (src/kernels/cuda/ops/gated_delta.rs checks dk ≤ it).
#define DELTA_MAX_DK 256
#define DELTA_PER_LANE (DELTA_MAX_DK / 32)
// Rows between two saved states: kernels::gated_delta::CHUNK.
#define DELTA_CHUNK 16
// The backward's block: at most this many warps, each holding at most DELTA_BWD_COLS columns of ∂L/∂S in registers
// (so dv ≤ 16 · 8 = 128: ops/gated_delta.rs checks it).
#define DELTA_BWD_WARPS 16
#define DELTA_BWD_COLS 8

// The lane's R rows of column j of the (dk, dv) state at s (zeros past dk).
template <int R>
__device__ void load_column(float* col, const float* s, int j, int dk, int dv) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < R; ++c) {
        const int i = lane + 32 * c;
        col[c] = i < dk ? s[(size_t)i * dv + j] : 0.f;
    }
}

template <int R>
__device__ void store_column(float* s, const float* col, int j, int dk, int dv) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < R; ++c) {
        const int i = lane + 32 * c;
        if (i < dk) s[(size_t)i * dv + j] = col[c];
    }
}

// One step of the recurrence on the warp's column (s: the lane's rows): s ← a·s; e = v_j − Σ_i s_i·k_i; δ = β·e;
// s += k·δ; returns δ, and e in *err. k: the row's dk keys. Each product rounded as replay_step rounds it (no
// contraction the compiler could choose differently in the two).
template <int R>
__device__ float delta_step(float* s, const float* k, float a, float beta, float vj, int dk, float* err) {
    const int lane = threadIdx.x & 31;
    float kv = 0.f;
#pragma unroll
    for (int c = 0; c < R; ++c) {
        const int i = lane + 32 * c;
        if (i < dk) {
            s[c] = __fmul_rn(s[c], a);
            kv = __fmaf_rn(s[c], k[i], kv);
        }
    }
    *err = vj - warp_sum(kv);
    const float delta = *err * beta;
#pragma unroll
    for (int c = 0; c < R; ++c) {
        const int i = lane + 32 * c;
        if (i < dk) s[c] = __fmaf_rn(k[i], delta, s[c]);
    }
    return delta;
}

// delta_step with its δ known (the backward kept it): the same state, without a sum across the lanes.
template <int R>
__device__ void replay_step(float* s, const float* k, float a, float delta, int dk) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < R; ++c) {
        const int i = lane + 32 * c;
        if (i < dk) s[c] = __fmaf_rn(k[i], delta, __fmul_rn(s[c], a));
    }
}

// Σ_i s_i·q_i over the warp's column: o_j.
__device__ float column_dot(const float* s, const float* q, int dk) {
    const int lane = threadIdx.x & 31;
    float acc = 0.f;
#pragma unroll
    for (int c = 0; c < DELTA_PER_LANE; ++c) {
        const int i = lane + 32 * c;
        if (i < dk) acc += s[c] * q[i];
    }
    return warp_sum(acc);
}

// The states saved per head for all n_seqs sequences (`saved`'s head stride): the last one's first checkpoint
// plus its chunks.
__device__ size_t delta_checkpoints(const unsigned* seqs, int n_seqs) {
    const unsigned* last = seqs + 3 * (size_t)(n_seqs - 1);
    return last[2] + (last[1] - last[0] + DELTA_CHUNK - 1) / DELTA_CHUNK;
}

// o[h, t, j] for the rows t of sequence blockIdx.x, head h = blockIdx.y, column j = blockIdx.z·warps + warp, from a
// zero state; saved (unless null) [h][checkpoint][i·dv + j] = S before each chunk's first row. Grid (n_seqs, heads,
// ceil(dv / warps)), blocks of whole warps: a block's warps share the rows' q and k (and the cache lines of S).
extern "C" __global__ void delta_rule_forward(float* o, float* saved, const float* q, const float* k, const float* v,
                                              const float* g, const float* beta, const unsigned* seqs, int n_seqs,
                                              int rows, int dk, int dv) {
    const int warps = blockDim.x >> 5, j = blockIdx.z * warps + (threadIdx.x >> 5), h = blockIdx.y;
    if (j >= dv) return;  // a whole warp: the shuffles below never miss a lane
    const unsigned* seq = seqs + 3 * (size_t)blockIdx.x;
    const int start = seq[0], end = seq[1];
    const size_t per_state = (size_t)dk * dv, head = (size_t)h * rows;
    float* ck = saved ? saved + ((size_t)h * delta_checkpoints(seqs, n_seqs) + seq[2]) * per_state : nullptr;
    float s[DELTA_PER_LANE];
#pragma unroll
    for (int c = 0; c < DELTA_PER_LANE; ++c) s[c] = 0.f;
    for (int t = start; t < end; ++t) {
        if (ck && (t - start) % DELTA_CHUNK == 0) {
            store_column<DELTA_PER_LANE>(ck, s, j, dk, dv);
            ck += per_state;
        }
        const size_t r = head + t;
        float err;
        delta_step<DELTA_PER_LANE>(s, k + r * dk, expf(g[r]), beta[r], v[r * dv + j], dk, &err);
        const float out = column_dot(s, q + r * dk, dk);
        if ((threadIdx.x & 31) == 0) o[r * dv + j] = out;
    }
}

// Decoding rows r < rows in order, each from the state of its slot, state[slot][h][i·dv + j] (zeros for a row at
// position 0), which it advances: o[h, r, j]. Grid (heads, 1, ceil(dv / warps)). Only this warp touches column j of
// head h in any slot, so the rows need no barrier; it keeps its column in registers while rows of one slot follow
// each other and stores it before it loads another slot's.
extern "C" __global__ void delta_rule_cached(float* o, float* state, const float* q, const float* k, const float* v,
                                             const float* g, const float* beta, const unsigned* slots,
                                             const unsigned* positions, int rows, int heads, int dk, int dv) {
    const int warps = blockDim.x >> 5, j = blockIdx.z * warps + (threadIdx.x >> 5), h = blockIdx.x;
    if (j >= dv) return;
    const size_t per_state = (size_t)dk * dv, head = (size_t)h * rows;
    float s[DELTA_PER_LANE];
    float* held = nullptr;
    for (int r = 0; r < rows; ++r) {
        float* st = state + ((size_t)slots[r] * heads + h) * per_state;
        if (st != held) {
            if (held) store_column<DELTA_PER_LANE>(held, s, j, dk, dv);
            load_column<DELTA_PER_LANE>(s, st, j, dk, dv);
            held = st;
        }
        if (positions[r] == 0) {
#pragma unroll
            for (int c = 0; c < DELTA_PER_LANE; ++c) s[c] = 0.f;
        }
        const size_t at = head + r;
        float err;
        delta_step<DELTA_PER_LANE>(s, k + at * dk, expf(g[at]), beta[at], v[at * dv + j], dk, &err);
        const float out = column_dot(s, q + at * dk, dk);
        if ((threadIdx.x & 31) == 0) o[at * dv + j] = out;
    }
    if (held) store_column<DELTA_PER_LANE>(held, s, j, dk, dv);
}

// Backward of delta_rule_forward for the rows of sequence blockIdx.x, head h = blockIdx.y, from d_o and the states
// it saved: dq, dkey (heads, N, dk), dval (heads, N, dv), dg, dbeta (heads, N) written, as delta_rule_head_backward.
// The sums over j (dq, dk, dg, dβ) need every column, so one block holds them all: warp w the columns
// j = w + warps·m, m < DELTA_BWD_COLS, each with its column of ∂L/∂S in registers (zero past the sequence's end).
// It walks the sequence's chunks backwards. A first pass over a chunk's rows from its saved state gives each
// column's δ and e = v − Sᵀk per row, which the warp keeps in a register per column (lane u row c0 + u's δ, lane
// 16 + u its e). Then for each row t, backwards, each column's state before t (prev) is replayed from the saved
// state with those δ: O(CHUNK²) steps per chunk as before, but of lane-local multiply-adds, where recomputing δ took
// a sum across the lanes per step. With a = e^g and S_t = a·prev + k δᵀ:
//   dq_i = Σ_j S_t[i,j]·do_j;  dS += q doᵀ;  ∂δ_j = Σ_i dS[i,j]·k_i;  dk_i = Σ_j dS[i,j]·δ_j;  dv_j = β·∂δ_j;
//   dβ = Σ_j ∂δ_j·e_j;  dS += k·dkvᵀ (dkv = −β·∂δ);  dk_i += Σ_j a·prev[i,j]·dkv_j;
//   dg = a·Σ dS⊙prev (summed in f64 as the CPU sums it, after a lane's R terms of a column in f32);  dS *= a.
// Each row's sums: a warp's over its columns in column order, then the warps' in warp order through shared
// memory — the same bits every run. Grid (n_seqs, heads), 32·warps threads, warps ≤ DELTA_BWD_WARPS and
// warps·DELTA_BWD_COLS ≥ dv. R rows per lane: dk ≤ 32·R (dS takes DELTA_BWD_COLS·R registers).
template <int R>
__device__ void delta_rule_backward_t(float* dq, float* dkey, float* dval, float* dg, float* dbeta, const float* d_o,
                                      const float* q, const float* k, const float* v, const float* g,
                                      const float* beta, const float* saved, const unsigned* seqs, int n_seqs,
                                      int rows, int dk, int dv) {
    static_assert(2 * DELTA_CHUNK == 32, "a chunk's δ and e per column fill one register of the warp's lanes");
    __shared__ float part_q[DELTA_BWD_WARPS][DELTA_MAX_DK], part_k[DELTA_BWD_WARPS][DELTA_MAX_DK];
    __shared__ float part_beta[DELTA_BWD_WARPS];
    __shared__ double part_g[DELTA_BWD_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, h = blockIdx.y;
    const unsigned* seq = seqs + 3 * (size_t)blockIdx.x;
    const int start = seq[0], end = seq[1];
    const size_t per_state = (size_t)dk * dv, head = (size_t)h * rows;
    const float* first = saved + ((size_t)h * delta_checkpoints(seqs, n_seqs) + seq[2]) * per_state;
    float ds[DELTA_BWD_COLS][R];
#pragma unroll
    for (int m = 0; m < DELTA_BWD_COLS; ++m)
#pragma unroll
        for (int c = 0; c < R; ++c) ds[m][c] = 0.f;
    for (int chunk = (end - start - 1) / DELTA_CHUNK; chunk >= 0; --chunk) {
        const int c0 = start + chunk * DELTA_CHUNK, c1 = min(c0 + DELTA_CHUNK, end);
        const float* ck = first + (size_t)chunk * per_state;
        // Lane u: row c0 + u's decay e^g, for every column's passes below.
        const float chunk_a = lane < c1 - c0 ? expf(g[head + c0 + lane]) : 0.f;
        float kept[DELTA_BWD_COLS];
#pragma unroll
        for (int m = 0; m < DELTA_BWD_COLS; ++m) {
            const int j = warp + warps * m;
            kept[m] = 0.f;
            if (j >= dv) continue;  // the same for the whole warp
            float s[R];
            load_column<R>(s, ck, j, dk, dv);
            for (int u = c0; u < c1; ++u) {
                const size_t ru = head + u;
                float err;
                const float a = __shfl_sync(0xffffffffu, chunk_a, u - c0);
                const float delta = delta_step<R>(s, k + ru * dk, a, beta[ru], v[ru * dv + j], dk, &err);
                if (lane == u - c0) kept[m] = delta;
                if (lane == DELTA_CHUNK + u - c0) kept[m] = err;
            }
        }
        for (int t = c1 - 1; t >= c0; --t) {
            const size_t r = head + t;
            const float a = __shfl_sync(0xffffffffu, chunk_a, t - c0), b = beta[r];
            const float *qt = q + r * dk, *kt = k + r * dk;
            // This warp's sums of dq_i and dk_i over its columns gather in its row of part_q, part_k (lane l owns
            // the i = l + 32c: no other thread touches them until the barrier), leaving registers to dS.
            float *pq = part_q[warp], *pk = part_k[warp], pb = 0.f;
            double pg = 0.0;
#pragma unroll
            for (int c = 0; c < R; ++c) {
                const int i = lane + 32 * c;
                if (i < dk) pq[i] = pk[i] = 0.f;
            }
#pragma unroll
            for (int m = 0; m < DELTA_BWD_COLS; ++m) {
                const int j = warp + warps * m;
                if (j >= dv) continue;  // the same for the whole warp
                float prev[R];
                load_column<R>(prev, ck, j, dk, dv);
                for (int u = c0; u < t; ++u) {
                    const float au = __shfl_sync(0xffffffffu, chunk_a, u - c0);
                    replay_step<R>(prev, k + (head + u) * dk, au, __shfl_sync(0xffffffffu, kept[m], u - c0), dk);
                }
                const float delta = __shfl_sync(0xffffffffu, kept[m], t - c0);
                const float err = __shfl_sync(0xffffffffu, kept[m], DELTA_CHUNK + t - c0);
                const float dout = d_o[r * dv + j];
                float ddelta = 0.f;
#pragma unroll
                for (int c = 0; c < R; ++c) {
                    const int i = lane + 32 * c;
                    if (i < dk) {
                        pq[i] += __fmaf_rn(kt[i], delta, __fmul_rn(prev[c], a)) * dout;
                        ds[m][c] += qt[i] * dout;
                        ddelta += ds[m][c] * kt[i];
                    }
                }
                ddelta = warp_sum(ddelta);
                if (lane == 0) dval[r * dv + j] = ddelta * b;
                const float dkv = -ddelta * b;
                pb += ddelta * err;
                // Σ_i dS⊙prev of this column in f32 (R terms), the columns' sums added in f64.
                float col_g = 0.f;
#pragma unroll
                for (int c = 0; c < R; ++c) {
                    const int i = lane + 32 * c;
                    if (i < dk) {
                        pk[i] += ds[m][c] * delta;
                        ds[m][c] += kt[i] * dkv;
                        pk[i] += a * prev[c] * dkv;
                        col_g += ds[m][c] * prev[c];
                        ds[m][c] *= a;
                    }
                }
                pg += (double)col_g;
            }
            pg = warp_sum(pg);
            if (lane == 0) {
                part_beta[warp] = pb;
                part_g[warp] = pg;
            }
            __syncthreads();
            for (int x = threadIdx.x; x < 2 * dk; x += blockDim.x) {
                const bool is_q = x < dk;
                const int i = is_q ? x : x - dk;
                float acc = 0.f;
                for (int w = 0; w < warps; ++w) acc += is_q ? part_q[w][i] : part_k[w][i];
                (is_q ? dq : dkey)[r * dk + i] = acc;
            }
            if (threadIdx.x == 0) {
                float sum_beta = 0.f;
                double sum_g = 0.0;
                for (int w = 0; w < warps; ++w) {
                    sum_beta += part_beta[w];
                    sum_g += part_g[w];
                }
                dbeta[r] = sum_beta;
                dg[r] = (float)(sum_g * (double)a);
            }
            __syncthreads();  // the partials are rewritten by the next row
        }
    }
}

// delta_rule_backward_t for key heads of at most 128 features (4 rows per lane: Qwen3.5's) and of at most 256.
extern "C" __global__ __launch_bounds__(32 * DELTA_BWD_WARPS) void delta_rule_backward_dk128(
    float* dq, float* dkey, float* dval, float* dg, float* dbeta, const float* d_o, const float* q, const float* k,
    const float* v, const float* g, const float* beta, const float* saved, const unsigned* seqs, int n_seqs, int rows,
    int dk, int dv) {
    delta_rule_backward_t<4>(dq, dkey, dval, dg, dbeta, d_o, q, k, v, g, beta, saved, seqs, n_seqs, rows, dk, dv);
}

extern "C" __global__ __launch_bounds__(32 * DELTA_BWD_WARPS) void delta_rule_backward_dk256(
    float* dq, float* dkey, float* dval, float* dg, float* dbeta, const float* d_o, const float* q, const float* k,
    const float* v, const float* g, const float* beta, const float* saved, const unsigned* seqs, int n_seqs, int rows,
    int dk, int dv) {
    delta_rule_backward_t<DELTA_PER_LANE>(dq, dkey, dval, dg, dbeta, d_o, q, k, v, g, beta, saved, seqs, n_seqs, rows,
                                          dk, dv);
}

// Depthwise causal convolution then SiLU: pre[t, c] = Σ_j w[c, j]·x[t − K + 1 + j, c] over source rows in t's
// sequence (from seq_start[t]), in j order; out = silu(pre). x: rows of x_stride (channels 0..C); pre, out: (N, C);
// w: (C, K). A 2-D grid striding over rows (y) and channels (x).
extern "C" __global__ void delta_conv_forward(float* out, float* pre, const float* x, const float* w,
                                              const unsigned* seq_start, int rows, int channels, int x_stride,
                                              int kw) {
    for (int t = blockIdx.y; t < rows; t += gridDim.y) {
        const int s = seq_start[t];
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x) {
            float p = 0.f;
            for (int j = 0; j < kw; ++j) {
                const int src = t + j + 1 - kw;
                if (src >= s) p += w[(size_t)c * kw + j] * x[(size_t)src * x_stride + c];
            }
            pre[(size_t)t * channels + c] = p;
            out[(size_t)t * channels + c] = silu(p);
        }
    }
}

// dout ← dout ⊙ silu'(pre): ∂L/∂pre in place, n values. Any 1-D grid.
extern "C" __global__ void delta_conv_dpre(float* dout, const float* pre, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dout[i] *= silu_grad(pre[i]);
}

// dx[s, c] += Σ_j w[c, j]·dpre[s + K − 1 − j, c] over the rows t = s + K − 1 − j < N of s's sequence
// (seq_start[t] ≤ s), added in j order as the CPU does. dx: rows of dx_stride. Grid as delta_conv_forward's.
extern "C" __global__ void delta_conv_backward_dx(float* dx, const float* dpre, const float* w,
                                                  const unsigned* seq_start, int rows, int channels, int dx_stride,
                                                  int kw) {
    for (int s = blockIdx.y; s < rows; s += gridDim.y) {
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x) {
            float acc = dx[(size_t)s * dx_stride + c];
            for (int j = 0; j < kw; ++j) {
                const int t = s + kw - 1 - j;
                if (t < rows && (int)seq_start[t] <= s) acc += w[(size_t)c * kw + j] * dpre[(size_t)t * channels + c];
            }
            dx[(size_t)s * dx_stride + c] = acc;
        }
    }
}

// partial[chunk·C·K + c·K + j] = Σ_t dpre[t, c]·x[t − K + 1 + j, c] over chunk blockIdx.y's rows t (chunk_rows
// from chunk·chunk_rows) whose source row lies in t's sequence, in row order: ∂w by chunks of rows, which
// reduce.cu's add_chunk_sums then adds to it in chunk order. Grid (ceil(C·K / blockDim.x), chunks): a thread per
// (weight, chunk).
extern "C" __global__ void delta_conv_backward_dw(float* partial, const float* dpre, const float* x,
                                                  const unsigned* seq_start, int rows, int channels, int x_stride,
                                                  int kw, int chunk_rows) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= channels * kw) return;
    const int c = e / kw, j = e - c * kw;
    const int first = blockIdx.y * chunk_rows, end = min(rows, first + chunk_rows);
    float acc = 0.f;
    for (int t = first; t < end; ++t) {
        const int src = t + j + 1 - kw;
        if (src >= (int)seq_start[t]) acc += dpre[(size_t)t * channels + c] * x[(size_t)src * x_stride + c];
    }
    partial[(size_t)blockIdx.y * channels * kw + e] = acc;
}

// Decoding rows r < rows in order through delta_conv_forward, each after the last K − 1 input rows of its slot in
// hist[slot][K − 1][C] (oldest first; zeros for a row at position 0), which it advances. A thread per channel loops
// over the rows: only it touches that channel of any slot. Any 1-D grid (striding over channels).
extern "C" __global__ void delta_conv_cached(float* out, float* pre, const float* x, const float* w, float* hist,
                                             const unsigned* slots, const unsigned* positions, int rows,
                                             int channels, int x_stride, int kw) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels; c += gridDim.x * blockDim.x) {
        const float* wc = w + (size_t)c * kw;
        for (int r = 0; r < rows; ++r) {
            float* h = hist + (size_t)slots[r] * (kw - 1) * channels + c;
            if (positions[r] == 0)
                for (int j = 0; j < kw - 1; ++j) h[(size_t)j * channels] = 0.f;
            float past = 0.f;
            for (int j = 0; j < kw - 1; ++j) past += wc[j] * h[(size_t)j * channels];
            const float xr = x[(size_t)r * x_stride + c], p = past + wc[kw - 1] * xr;
            for (int j = 0; j + 1 < kw - 1; ++j) h[(size_t)j * channels] = h[(size_t)(j + 1) * channels];
            if (kw > 1) h[(size_t)(kw - 2) * channels] = xr;
            pre[(size_t)r * channels + c] = p;
            out[(size_t)r * channels + c] = silu(p);
        }
    }
}
