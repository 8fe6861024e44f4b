// One AdamW step (decoupled weight decay, bias correction, f32 moments) of many tensors in one launch, each as
// src/kernels/adamw.rs (adamw_step) on its gradient times grad_scale (clipping's coefficient, or 1: the same f32
// product as scaling the gradient first), the gradient zeroed after. The scalars are one AdamWScalars (computed in f64,
// then rounded to f32) for learning rate lr at 1-based step t:
//   decay = 1 − lr·weight_decay,  one_minus_b1 = 1 − β1,  b2 = β2,  one_minus_b2 = 1 − β2,
//   step_size = lr / (1 − β1ᵗ),  bc2_sqrt = √(1 − β2ᵗ),  eps;
// a tensor without weight decay takes decay = 1 (what AdamWScalars gives for weight_decay 0).
//
// table: 8 values per tensor — the device addresses of w, g, m, v, then n, decays (0 or 1), the address of a bf16
// copy to write from the new values (0: none; bf16_bits, kernels::bf16::round's rounding) and the tensor's first
// block. A 1-D grid shared by the tensors in proportion to their sizes (a model's many small tensors take a block
// each, not as many as its largest): block b belongs to the last tensor whose first block is ≤ b (the firsts rise
// with the tensors, from 0), and that tensor's blocks stride over its n values.
extern "C" __global__ void adamw_tensors(const unsigned long long* table, int count, float grad_scale, float decay,
                                         float one_minus_b1, float b2, float one_minus_b2, float step_size,
                                         float bc2_sqrt, float eps) {
    const int lo = tensor_of_block(table, 8, 7, count);
    const unsigned long long* t = table + (size_t)lo * 8;
    const unsigned long long end = lo + 1 < count ? table[(size_t)(lo + 1) * 8 + 7] : gridDim.x;
    const size_t blocks = (size_t)(end - t[7]), first = ((size_t)blockIdx.x - t[7]) * blockDim.x + threadIdx.x;
    float* w = (float*)t[0];
    float* g = (float*)t[1];
    float* m = (float*)t[2];
    float* v = (float*)t[3];
    const size_t n = (size_t)t[4];
    const float dec = t[5] ? decay : 1.0f;
    unsigned short* copy = (unsigned short*)t[6];
    for (size_t i = first; i < n; i += blocks * blockDim.x) {
        const float gi = g[i] * grad_scale;
        float wi = w[i] * dec;
        const float mi = m[i] + one_minus_b1 * (gi - m[i]);
        const float vi = v[i] * b2 + one_minus_b2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        wi += -step_size * (mi / denom);
        w[i] = wi;
        m[i] = mi;
        v[i] = vi;
        g[i] = 0.f;
        if (copy) copy[i] = (unsigned short)bf16_bits(wi);
    }
}
