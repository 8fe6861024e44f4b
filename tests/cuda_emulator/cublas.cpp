// cuBLAS (libcublas.so) for the emulator: cublasGemmEx as the cuBLAS documentation defines it, column-major
// C = α·op(A)·op(B) + β·C with op(A) m×k and op(B) k×n, f32 or bf16 operands, f32 sums, f32 output (or bf16 for
// bf16 operands: the f32 result rounded to nearest even, as cuBLAS's epilogue stores it) — and the
// argument checks real cuBLAS makes (leading dimensions, types), so a wrong operand mapping in
// src/kernels/cuda/gemm.rs fails here as it would on a GPU instead of passing by accident. A GEMM is work on the
// handle's stream: captured into a graph while that stream is (driver.cpp), with α and β read at the call.
#include "runtime.h"
#include <cstring>
#include <vector>

using cublasStatus_t = int;

namespace {
constexpr cublasStatus_t kSuccess = 0, kInvalidValue = 7, kExecutionFailed = 13, kNotSupported = 15;
constexpr int kR32F = 0, kR16BF = 14, kCompute32F = 68, kCompute32FPedantic = 69, kOpN = 0, kOpT = 1;
int handle_tag;
void* handle_stream = nullptr;  // cublasSetStream's

float widen_bf16(uint16_t bits) {
    const uint32_t u = uint32_t(bits) << 16;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

// f32 → bf16, round to nearest even (NaN kept quiet): what __float2bfloat16_rn, cuBLAS's bf16 store, does.
uint16_t round_bf16(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return uint16_t((u | 0x00400000u) >> 16);
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// The stored matrix `p` (column-major, leading dimension ld) as op(p) rows × cols, row-major, widened to f32.
std::vector<float> dense(const void* p, int type, int op, int rows, int cols, int ld) {
    std::vector<float> out(size_t(rows) * size_t(cols));
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            // op = N: element (r, c) at r + c·ld; op = T: the stored matrix is cols × rows, (c, r) at c + r·ld.
            const size_t at = op == kOpN ? size_t(r) + size_t(c) * ld : size_t(c) + size_t(r) * ld;
            out[size_t(r) * cols + c] =
                type == kR32F ? static_cast<const float*>(p)[at] : widen_bf16(static_cast<const uint16_t*>(p)[at]);
        }
    return out;
}
}  // namespace

extern "C" {
cublasStatus_t cublasCreate_v2(void** handle) {
    *handle = &handle_tag;
    return kSuccess;
}
cublasStatus_t cublasDestroy_v2(void*) { return kSuccess; }
cublasStatus_t cublasSetStream_v2(void*, void* stream) {
    handle_stream = stream;
    return kSuccess;
}
cublasStatus_t cublasSetWorkspace_v2(void*, void* workspace, size_t bytes) {
    return workspace != nullptr || bytes == 0 ? kSuccess : kInvalidValue;
}

cublasStatus_t cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                            const void* a, int a_type, int lda, const void* b, int b_type, int ldb, const void* beta,
                            void* c, int c_type, int ldc, int compute, int) {
    if (handle != &handle_tag) return kInvalidValue;
    const bool ops_known = (transa == kOpN || transa == kOpT) && (transb == kOpN || transb == kOpT);
    const int a_rows = transa == kOpN ? m : k, b_rows = transb == kOpN ? k : n;
    if (!ops_known || m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) ||
        ldc < std::max(1, m)) {
        emu::complain("cublasGemmEx: invalid arguments (m " + std::to_string(m) + " n " + std::to_string(n) + " k " +
                      std::to_string(k) + " lda " + std::to_string(lda) + " ldb " + std::to_string(ldb) + " ldc " +
                      std::to_string(ldc) + "): CUBLAS_STATUS_INVALID_VALUE");
        return kInvalidValue;
    }
    const bool f32 = a_type == kR32F && b_type == kR32F && compute == kCompute32FPedantic;
    const bool bf16 = a_type == kR16BF && b_type == kR16BF && (compute == kCompute32F || compute == kCompute32FPedantic);
    if (!(f32 || bf16) || !(c_type == kR32F || (bf16 && c_type == kR16BF))) {
        emu::complain("cublasGemmEx: types (A " + std::to_string(a_type) + ", B " + std::to_string(b_type) + ", C " +
                      std::to_string(c_type) + ", compute " + std::to_string(compute) + ") are not emulated");
        return kNotSupported;
    }
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    std::lock_guard<std::recursive_mutex> g(emu::driver_lock());
    // A refusal from the driver (during a capture) is cuBLAS's execution failure.
    const int r = emu::submit(handle_stream, std::string("cublasGemmEx ") + (f32 ? "f32" : "bf16"), [=] {
        if (m == 0 || n == 0) return kSuccess;
        const std::vector<float> x = dense(a, a_type, transa, m, k, lda);      // op(A), m × k
        const std::vector<float> y = dense(b, b_type, transb ^ 1, n, k, ldb);  // op(B)ᵀ, n × k
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                const float* xi = &x[size_t(i) * k];
                const float* yj = &y[size_t(j) * k];
                float lanes[8] = {};
                int l = 0;
                for (; l + 8 <= k; l += 8)
                    for (int v = 0; v < 8; ++v) lanes[v] += xi[l + v] * yj[l + v];
                float s = 0;
                for (; l < k; ++l) s += xi[l] * yj[l];
                for (float v : lanes) s += v;
                const size_t at = size_t(i) + size_t(j) * ldc;
                // β = 0 does not read C (it may hold NaN), as in cuBLAS.
                if (c_type == kR32F) {
                    float& dst = static_cast<float*>(c)[at];
                    dst = be == 0.f ? al * s : al * s + be * dst;
                } else {
                    uint16_t& dst = static_cast<uint16_t*>(c)[at];
                    dst = round_bf16(be == 0.f ? al * s : al * s + be * widen_bf16(dst));
                }
            }
        return kSuccess;
    });
    return r == 0 ? kSuccess : kExecutionFailed;
}
}
