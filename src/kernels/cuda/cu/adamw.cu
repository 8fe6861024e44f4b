// One AdamW step (decoupled weight decay, bias correction, f32 moments) of many tensors in one launch, each as
// src/kernels/adamw.rs (adamw_step) on its gradient times grad_scale (clipping's coefficient, or 1: the same f32
// product as scaling the gradient first), the gradient zeroed after. The scalars are one AdamWScalars (computed in f64,
// then rounded to f32) for learning rate lr at 1-based step t:
//   decay = 1 − lr·weight_decay,  one_minus_b1 = 1 − β1,  b2 = β2,  one_minus_b2 = 1 − β2,
//   step_size = lr / (1 − β1ᵗ),  bc2_sqrt = √(1 − β2ᵗ),  eps;
// a tensor without weight decay takes decay = 1 (what AdamWScalars gives for weight_decay 0).
//
// table: 7 values per tensor — the device addresses of w, g, m, v, then n, decays (0 or 1) and the address of a
// bf16 copy to write from the new values (0: none; bf16_bits, kernels::bf16::round's rounding). Grid (blocks,
// tensors): the blocks of row y stride over tensor y's n values.
extern "C" __global__ void adamw_tensors(const unsigned long long* table, float grad_scale, float decay,
                                         float one_minus_b1, float b2, float one_minus_b2, float step_size,
                                         float bc2_sqrt, float eps) {
    const unsigned long long* t = table + (size_t)blockIdx.y * 7;
    float* w = (float*)t[0];
    float* g = (float*)t[1];
    float* m = (float*)t[2];
    float* v = (float*)t[3];
    const size_t n = (size_t)t[4];
    const float dec = t[5] ? decay : 1.0f;
    unsigned short* copy = (unsigned short*)t[6];
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
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
