// The MLP's activations, as src/kernels/activation.rs: the gated one (glu_forward / glu_backward), act = SiLU (act
// 0: SwiGLU, Llama/Qwen/Mistral) or the tanh GELU (act 1: GeGLU, Gemma); GPT-2's ungated tanh GELU
// (gelu_tanh_forward / gelu_tanh_backward); and Qwen3.5's attention output gate (sigmoid_gate_forward /
// sigmoid_gate_backward). Element-wise over n values; any 1-D grid. The gated one also comes in bf16 (`_bf16`: the
// MLP's activations kept in bf16 under --compute bf16 on a device).

#define SQRT_2_OVER_PI 0.7978846f

__device__ float gelu_tanh(float x) {
    return 0.5f * x * (1.f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
}

__device__ float act_value(int act, float g) {
    return act == 0 ? silu(g) : gelu_tanh(g);
}

// silu' (common.cuh); gelu'(x) = 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²), t = tanh u.
__device__ float act_derivative(int act, float g) {
    if (act == 0) return silu_grad(g);
    const float t = tanhf(SQRT_2_OVER_PI * (g + 0.044715f * g * g * g));
    const float du = SQRT_2_OVER_PI * (1.f + 3.f * 0.044715f * g * g);
    return 0.5f * (1.f + t) + 0.5f * g * (1.f - t * t) * du;
}

// The gated MLP's gate and up side by side: gate_up (rows, 2·f), each row's gate in columns [0, f), its up in
// [f, 2f) — one product writes both; the activation and its gradient (rows, f). A 2-D grid striding over rows (y)
// and columns (x), as to_bf16's: no division per value.

// out = act(gate) ⊙ up. T: float, or unsigned short for values kept in bf16 (computed in f32, out rounded).
template <typename T>
__device__ void glu_forward_t(T* out, const T* gate_up, int rows, int f, int act) {
    for (size_t row = blockIdx.y; row < (size_t)rows; row += gridDim.y)
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < f; c += gridDim.x * blockDim.x) {
            const size_t g = 2 * row * f + c;
            store(out, row * f + c, act_value(act, load(gate_up, g)) * load(gate_up, g + f));
        }
}

// dgate = dout ⊙ up ⊙ act'(gate),  dup = dout ⊙ act(gate), written side by side in dgate_up as gate_up holds them.
// T as glu_forward_t's.
template <typename T>
__device__ void glu_backward_t(T* dgate_up, const T* dout, const T* gate_up, int rows, int f, int act) {
    for (size_t row = blockIdx.y; row < (size_t)rows; row += gridDim.y)
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < f; c += gridDim.x * blockDim.x) {
            const size_t g = 2 * row * f + c;
            const float d = load(dout, row * f + c), gv = load(gate_up, g);
            store(dgate_up, g, d * load(gate_up, g + f) * act_derivative(act, gv));
            store(dgate_up, g + f, d * act_value(act, gv));
        }
}

extern "C" __global__ void glu_forward(float* out, const float* gate_up, int rows, int f, int act) {
    glu_forward_t(out, gate_up, rows, f, act);
}

extern "C" __global__ void glu_forward_bf16(unsigned short* out, const unsigned short* gate_up, int rows, int f,
                                            int act) {
    glu_forward_t(out, gate_up, rows, f, act);
}

extern "C" __global__ void glu_backward(float* dgate_up, const float* dout, const float* gate_up, int rows, int f,
                                        int act) {
    glu_backward_t(dgate_up, dout, gate_up, rows, f, act);
}

extern "C" __global__ void glu_backward_bf16(unsigned short* dgate_up, const unsigned short* dout,
                                             const unsigned short* gate_up, int rows, int f, int act) {
    glu_backward_t(dgate_up, dout, gate_up, rows, f, act);
}

// out = gelu(x) (GPT-2's MLP).
extern "C" __global__ void gelu_forward(float* out, const float* x, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = gelu_tanh(x[i]);
}

// dx = dout ⊙ gelu'(x) (overwritten).
extern "C" __global__ void gelu_backward(float* dx, const float* dout, const float* x, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dx[i] = dout[i] * act_derivative(1, x[i]);
}

// out = x ⊙ σ(gate) (Qwen3.5's attention output gate).
extern "C" __global__ void sigmoid_gate_forward(float* out, const float* x, const float* gate, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = x[i] * sigmoid(gate[i]);
}

// dx = dout ⊙ σ(gate),  dgate = dout ⊙ x ⊙ σ(gate)·(1 − σ(gate))  (both overwritten).
extern "C" __global__ void sigmoid_gate_backward(float* dx, float* dgate, const float* dout, const float* x,
                                                 const float* gate, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float sg = sigmoid(gate[i]);
        dx[i] = dout[i] * sg;
        dgate[i] = dout[i] * x[i] * sg * (1.f - sg);
    }
}
