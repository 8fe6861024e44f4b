// Cross-entropy over a chunk of logits rows, as the per-row step of src/kernels/lm_head.rs
// (cross_entropy_backward), with PyTorch's label_smoothing = ε (target (1 − ε)·onehot + ε/V):
//   loss[r] = (1 − ε)·(lse − l_t) + ε·(lse − mean_v l_v)   (f64; lse and mean in f64 as on the CPU),
//   dlogits[r] = w·(softmax − (1 − ε)·onehot_t − ε/V)   the dlogits the head's GEMMs take next,
// with w = token_weight, t = targets[r]. logits: (rows, vocab). Grid: one block per row. Three passes over the row:
// its max (and sum), the sum of exp(l − max), then dlogits with each exp computed again (the same bits), so the
// row is read three times and written once.
// T: float (dlogits over the logits, in place: cross_entropy_rows), or unsigned short for dlogits kept in bf16 in a
// buffer of their own (cross_entropy_rows_bf16: the head's products then read them without a rounding pass).
template <typename T>
__device__ void cross_entropy_rows_t(const float* logits, T* dlogits, double* loss, const unsigned* targets,
                                     int vocab, float token_weight, float label_smoothing) {
    __shared__ float fscratch[32];
    __shared__ double dscratch[32];
    const size_t base = (size_t)blockIdx.x * vocab;
    const float* l = logits + base;
    const unsigned t = targets[blockIdx.x];
    const float lt = l[t];  // read by every thread before any write (block_max synchronizes first)
    float mx = NEG_INF;
    double suml = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        mx = fmaxf(mx, l[i]);
        suml += (double)l[i];
    }
    mx = block_max(mx, fscratch);
    const double eps = (double)label_smoothing;
    const double mean_l = eps > 0.0 ? block_sum(suml, dscratch) / (double)vocab : 0.0;
    float part = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) part += expf(l[i] - mx);
    const double sum = block_sum((double)part, dscratch);
    const double lse = (double)mx + log(sum);
    if (threadIdx.x == 0) loss[blockIdx.x] = (1.0 - eps) * (lse - (double)lt) + eps * (lse - mean_l);
    const float scale = (float)((double)token_weight / sum);
    const float w_target = token_weight * (1.f - label_smoothing);
    const float w_uniform = token_weight * label_smoothing / (float)vocab;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float e = expf(l[i] - mx);
        float d = e * scale - w_uniform;
        if (i == (int)t) d -= w_target;
        store(dlogits, base + i, d);
    }
}

extern "C" __global__ void cross_entropy_rows(float* logits, double* loss, const unsigned* targets, int vocab,
                                              float token_weight, float label_smoothing) {
    cross_entropy_rows_t(logits, logits, loss, targets, vocab, token_weight, label_smoothing);
}

extern "C" __global__ void cross_entropy_rows_bf16(const float* logits, unsigned short* dlogits, double* loss,
                                                   const unsigned* targets, int vocab, float token_weight,
                                                   float label_smoothing) {
    cross_entropy_rows_t(logits, dlogits, loss, targets, vocab, token_weight, label_smoothing);
}
