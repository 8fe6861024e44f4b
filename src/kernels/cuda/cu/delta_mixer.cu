// The Gated DeltaNet's per-row ops around its recurrence, as src/kernels/delta_mixer.rs: the recurrence's inputs
// (inputs_forward / inputs_backward) and the gated RMSNorm after it (gated_norm_forward / gated_norm_backward).
// A row of the projections `proj` (rows of proj_width) is qkv (conv_dim) | z (value_dim) | b (v_heads) |
// a (v_heads); the convolution's output `conv` is (N, conv_dim), q | k | v; the recurrence's q, k (v_heads, N, dk),
// v and o (v_heads, N, dv), g and β (v_heads, N) are head-major. The row kernels: one block per row, its warps
// taking the row's heads in turn, a head's features over the lanes, its sums warp_sum's butterflies.

// The L2 norm's ε (transformers' l2norm, as flash-linear-attention).
#define L2_EPS 1e-6f

// ln(1 + eˣ), as torch's softplus (linear above 20).
__device__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }

// Row blockIdx.x's recurrence inputs: for each key head h, q and k (its conv columns) L2-normed — 1/‖q‖, 1/‖k‖
// kept in q_rnorm, k_rnorm (N, k_heads) — q × scale (dk^-½), both written for the rep = v_heads / k_heads value
// heads h·rep.. it serves; v copied; β = σ(b), g = −e^A_log·softplus(a + dt_bias) per value head. Grid: a block per
// row.
extern "C" __global__ void delta_inputs_forward(float* q, float* k, float* v, float* g, float* beta, float* q_rnorm,
                                                float* k_rnorm, const float* conv, const float* proj,
                                                const float* dt_bias, const float* a_log, int rows, int k_heads,
                                                int v_heads, int dk, int dv, int proj_width, float scale) {
    const int t = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int kd = k_heads * dk, vd = v_heads * dv, width = 2 * kd + vd, rep = v_heads / k_heads;
    const float* row = conv + (size_t)t * width;
    for (int h = warp; h < k_heads; h += warps) {
        const float *qr = row + h * dk, *kr = row + kd + h * dk;
        float sq = 0.f, sk = 0.f;
        for (int i = lane; i < dk; i += 32) {
            sq += qr[i] * qr[i];
            sk += kr[i] * kr[i];
        }
        const float rq = 1.f / sqrtf(warp_sum(sq) + L2_EPS), rk = 1.f / sqrtf(warp_sum(sk) + L2_EPS);
        if (lane == 0) {
            q_rnorm[(size_t)t * k_heads + h] = rq;
            k_rnorm[(size_t)t * k_heads + h] = rk;
        }
        for (int hh = h * rep; hh < (h + 1) * rep; ++hh) {
            const size_t at = ((size_t)hh * rows + t) * dk;
            for (int i = lane; i < dk; i += 32) {
                q[at + i] = qr[i] * rq * scale;
                k[at + i] = kr[i] * rk;
            }
        }
    }
    for (int e = threadIdx.x; e < vd; e += blockDim.x) {
        const int hh = e / dv;
        v[((size_t)hh * rows + t) * dv + e - hh * dv] = row[2 * kd + e];
    }
    const float* pr = proj + (size_t)t * proj_width + width + vd;
    for (int hh = threadIdx.x; hh < v_heads; hh += blockDim.x) {
        beta[(size_t)hh * rows + t] = sigmoid(pr[hh]);
        g[(size_t)hh * rows + t] = -expf(a_log[hh]) * softplus(pr[v_heads + hh] + dt_bias[hh]);
    }
}

// ∂L/∂nᵢ of key head h's normed q (or k) at row t: the gradients of the rep value heads it feeds, each × sc (q's
// scale, or 1 for k), summed in head order. d: head-major (v_heads, N, dk).
__device__ float repeated_grad(const float* d, int h, int rep, int t, int i, int rows, int dk, float sc) {
    float s = 0.f;
    for (int hh = h * rep; hh < (h + 1) * rep; ++hh) s += d[((size_t)hh * rows + t) * dk + i] * sc;
    return s;
}

// Backward of delta_inputs_forward at row blockIdx.x from the recurrence's input gradients dq, dkey, dval, dg, dbeta
// (head-major, as its inputs): dconv's row (q | k through the scale and the L2 norm: r·(dn − n·(n·dn)); v copied)
// and dproj's b and a columns (∂β·β(1 − β); ∂g·(−e^A_log)·σ(a + dt_bias)) written. Grid: a block per row.
extern "C" __global__ void delta_inputs_backward(float* dconv, float* dproj, const float* dq, const float* dkey,
                                                 const float* dval, const float* dg, const float* dbeta, const float* g,
                                                 const float* beta, const float* q_rnorm, const float* k_rnorm,
                                                 const float* conv, const float* proj, const float* dt_bias,
                                                 const float* a_log, int rows, int k_heads, int v_heads, int dk,
                                                 int dv, int proj_width, float scale) {
    const int t = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int kd = k_heads * dk, vd = v_heads * dv, width = 2 * kd + vd, rep = v_heads / k_heads;
    const float* row = conv + (size_t)t * width;
    float* drow = dconv + (size_t)t * width;
    for (int h = warp; h < k_heads; h += warps) {
        for (int which = 0; which < 2; ++which) {
            const int col = which == 0 ? h * dk : kd + h * dk;
            const float* d = which == 0 ? dq : dkey;
            const float sc = which == 0 ? scale : 1.f;
            const float r = (which == 0 ? q_rnorm : k_rnorm)[(size_t)t * k_heads + h];
            float dot = 0.f;
            for (int i = lane; i < dk; i += 32) dot += row[col + i] * r * repeated_grad(d, h, rep, t, i, rows, dk, sc);
            dot = warp_sum(dot);
            for (int i = lane; i < dk; i += 32) {
                const float dn = repeated_grad(d, h, rep, t, i, rows, dk, sc);
                drow[col + i] = r * (dn - row[col + i] * r * dot);
            }
        }
    }
    for (int e = threadIdx.x; e < vd; e += blockDim.x) {
        const int hh = e / dv;
        drow[2 * kd + e] = dval[((size_t)hh * rows + t) * dv + e - hh * dv];
    }
    const size_t b_col = (size_t)t * proj_width + width + vd;
    for (int hh = threadIdx.x; hh < v_heads; hh += blockDim.x) {
        const size_t at = (size_t)hh * rows + t;
        dproj[b_col + hh] = dbeta[at] * beta[at] * (1.f - beta[at]);
        const float a = proj[b_col + v_heads + hh] + dt_bias[hh];
        dproj[b_col + v_heads + hh] = dg[at] * -expf(a_log[hh]) * sigmoid(a);
    }
}

// The per-chunk sums of ∂dt_bias and ∂A_log over chunk blockIdx.y's rows t (chunk_rows from chunk·chunk_rows), in
// row order: for h = e < v_heads, partial[chunk·v_heads + h] = Σ dproj[t, a_col + h] (the a column
// delta_inputs_backward wrote); for h = e − v_heads, partial[(chunks + chunk)·v_heads + h] = Σ dg[h, t]·g[h, t].
// reduce.cu's add_chunk_sums then adds each half's chunks in order. Grid (ceil(2·v_heads / blockDim.x), chunks).
extern "C" __global__ void delta_decay_grads_partial(float* partial, const float* dproj, const float* dg,
                                                     const float* g, int rows, int v_heads, int a_col,
                                                     int proj_width, int chunk_rows) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= 2 * v_heads) return;
    const int first = blockIdx.y * chunk_rows, end = min(rows, first + chunk_rows);
    float acc = 0.f;
    if (e < v_heads) {
        for (int t = first; t < end; ++t) acc += dproj[(size_t)t * proj_width + a_col + e];
        partial[(size_t)blockIdx.y * v_heads + e] = acc;
    } else {
        const int h = e - v_heads;
        for (int t = first; t < end; ++t) acc += dg[(size_t)h * rows + t] * g[(size_t)h * rows + t];
        partial[(size_t)(gridDim.y + blockIdx.y) * v_heads + h] = acc;
    }
}

// Row blockIdx.x: y[t, h·dv + j] = w_j·(o[h, t, j]·r)·silu(z[t, h·dv + j]) per value head h, r = 1/rms(o[h, t]) kept in
// rstd (N, v_heads); z: proj's columns from z_col. Grid: a block per row.
extern "C" __global__ void delta_norm_forward(float* y, float* rstd, const float* o, const float* proj, const float* w,
                                              int rows, int v_heads, int dv, int z_col, int proj_width, float eps) {
    const int t = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int h = warp; h < v_heads; h += warps) {
        const float* oh = o + ((size_t)h * rows + t) * dv;
        float ss = 0.f;
        for (int j = lane; j < dv; j += 32) ss += oh[j] * oh[j];
        const float r = 1.f / sqrtf(warp_sum(ss) / (float)dv + eps);
        if (lane == 0) rstd[(size_t)t * v_heads + h] = r;
        const float* z = proj + (size_t)t * proj_width + z_col + h * dv;
        float* yh = y + ((size_t)t * v_heads + h) * dv;
        for (int j = lane; j < dv; j += 32) yh[j] = w[j] * (oh[j] * r) * silu(z[j]);
    }
}

// Backward of delta_norm_forward at row blockIdx.x from dy (N, value_dim): dproj's z columns (dy·w·n·silu'(z)) and
// d_o (head-major: r·(dn − n·mean(dn⊙n)), dn = dy·w·silu(z)) written. Grid: a block per row.
extern "C" __global__ void delta_norm_backward(float* dproj, float* d_o, const float* dy, const float* o,
                                               const float* rstd, const float* proj, const float* w, int rows,
                                               int v_heads, int dv, int z_col, int proj_width) {
    const int t = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int h = warp; h < v_heads; h += warps) {
        const size_t at = ((size_t)h * rows + t) * dv, zt = (size_t)t * proj_width + z_col + h * dv;
        const float *oh = o + at, *z = proj + zt, *gy = dy + ((size_t)t * v_heads + h) * dv;
        const float r = rstd[(size_t)t * v_heads + h];
        float dot = 0.f;
        for (int j = lane; j < dv; j += 32) {
            const float n = oh[j] * r;
            dproj[zt + j] = gy[j] * w[j] * n * silu_grad(z[j]);
            dot += gy[j] * w[j] * silu(z[j]) * n;
        }
        const float mean = warp_sum(dot) / (float)dv;
        for (int j = lane; j < dv; j += 32) d_o[at + j] = r * (gy[j] * w[j] * silu(z[j]) - oh[j] * r * mean);
    }
}

// partial[chunk·dv + j] = Σ dy[t, h·dv + j]·(o[h, t, j]·rstd[t, h])·silu(z[t, h·dv + j]) over chunk blockIdx.y's
// (row, head) pairs u = t·v_heads + h (chunk_rows from chunk·chunk_rows), in that order: ∂w by chunks, which
// reduce.cu's add_chunk_sums then adds to it in chunk order. Grid (ceil(dv / blockDim.x), chunks).
extern "C" __global__ void delta_norm_backward_dw(float* partial, const float* dy, const float* o, const float* rstd,
                                                  const float* proj, int rows, int v_heads, int dv, int z_col,
                                                  int proj_width, int chunk_rows) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dv) return;
    const int first = blockIdx.y * chunk_rows, end = min(rows * v_heads, first + chunk_rows);
    float acc = 0.f;
    for (int u = first; u < end; ++u) {
        const int t = u / v_heads, h = u - t * v_heads;
        const float n = o[((size_t)h * rows + t) * dv + j] * rstd[u];
        acc += dy[(size_t)u * dv + j] * n * silu(proj[(size_t)t * proj_width + z_col + h * dv + j]);
    }
    partial[(size_t)blockIdx.y * dv + j] = acc;
}
