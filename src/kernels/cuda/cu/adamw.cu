// One AdamW step (decoupled weight decay, bias correction, f32 moments), as src/kernels/adamw.rs (adamw_step),
// element-wise over n values; any 1-D grid. The scalars are its AdamWScalars (computed in f64, then rounded to
// f32) for learning rate lr at 1-based step t:
//   decay = 1 − lr·weight_decay,  one_minus_b1 = 1 − β1,  b2 = β2,  one_minus_b2 = 1 − β2,
//   step_size = lr / (1 − β1ᵗ),  bc2_sqrt = √(1 − β2ᵗ),  eps.
extern "C" __global__ void adamw_step(float* w, const float* g, float* m, float* v, size_t n, float decay,
                                      float one_minus_b1, float b2, float one_minus_b2, float step_size,
                                      float bc2_sqrt, float eps) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gi = g[i];
        float wi = w[i] * decay;
        const float mi = m[i] + one_minus_b1 * (gi - m[i]);
        const float vi = v[i] * b2 + one_minus_b2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        wi += -step_size * (mi / denom);
        w[i] = wi;
        m[i] = mi;
        v[i] = vi;
    }
}
