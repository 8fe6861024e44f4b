//! The GEMM of the device: cuBLAS (`cublasGemmEx`, loaded at run time like the driver) computing the CPU's
//! `x·Wᵀ` shape — row-major C (m, n) (+)= A (m, k) · Bᵀ with B (n, k), as `kernels::matmul` with a transposed
//! weight view — in f32 (no TF32: pedantic f32 compute, so it can match the CPU GEMM within float rounding) or
//! with bf16 operands and f32 accumulation (as `kernels::gemm_bf16`, `--compute bf16`).
//!
//! cuBLAS is column-major: a row-major (r, c) buffer is its (c, r) matrix with leading dimension c, so the
//! row-major product C = A·Bᵀ is cuBLAS's Cᵀ (n, m) = B·Aᵀ = op(B-buffer)ᵀ · A-buffer — transa = T on the B buffer
//! (k, n), transb = N on the A buffer (k, m), every leading dimension the row length.
use super::device::Device;
use cudarc::cublas::CudaBlas;
use cudarc::cublas::result::{CublasError, gemm_ex};
use cudarc::cublas::sys::{self, cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::ffi::c_void;
use std::sync::Arc;

/// The shape of one product: C (m, n) (+)= A (m, k) · Bᵀ, B (n, k).
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl GemmShape {
    /// Multiply-adds × 2: the FLOPs of one product.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// An operand type of the device GEMM: f32, or bf16 held as its bits in a `u16` (`kernels::bf16::round`'s
/// rounding, done where the operand is made).
pub trait Operand: cudarc::driver::DeviceRepr {
    /// cuBLAS's name of the type.
    const TYPE: cudaDataType_t;
    /// How the products are summed: f32 either way; for f32 operands *pedantic*, which rules out TF32 (10-bit
    /// mantissas) whatever the math mode or NVIDIA_TF32_OVERRIDE say.
    const COMPUTE: cublasComputeType_t;
}

impl Operand for f32 {
    const TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_32F;
    const COMPUTE: cublasComputeType_t = cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC;
}

impl Operand for u16 {
    const TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_16BF;
    const COMPUTE: cublasComputeType_t = cublasComputeType_t::CUBLAS_COMPUTE_32F;
}

/// Why a device GEMM could not run, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum GemmError {
    #[error(
        "cuBLAS (libcublas.so) was not found, so the device GEMM cannot run: install the CUDA toolkit (or the \
         nvidia-cublas wheel) and add the folder holding libcublas.so.* to LD_LIBRARY_PATH"
    )]
    NoCublas,
    #[error("cuBLAS could not make a handle on cuda:{ordinal} ({err:?}): is the GPU out of memory?")]
    Handle { ordinal: usize, err: CublasError },
    #[error("cublasGemmEx ({what}, m {m} n {n} k {k}) failed: {err:?}")]
    Gemm { what: &'static str, m: usize, n: usize, k: usize, err: CublasError },
}

/// A cuBLAS handle on a device's stream: products run in stream order with the kernels of [`Device`].
pub struct Blas {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
}

impl Blas {
    /// Loads cuBLAS and makes a handle on `d`'s stream.
    pub fn new(d: &Device) -> Result<Blas, GemmError> {
        // SAFETY: dlopen of libcublas (NVIDIA's initializers only).
        if !unsafe { sys::is_culib_present() } {
            return Err(GemmError::NoCublas);
        }
        let blas = CudaBlas::new(d.stream.clone()).map_err(|err| GemmError::Handle { ordinal: d.gpu.ordinal, err })?;
        Ok(Blas { blas, stream: d.stream.clone() })
    }

    /// c (m, n) = a (m, k) · bᵀ, b (n, k) — or c += when `accumulate`. Dense row-major buffers of exactly those
    /// sizes; f32 operands ([`Operand`]: f32, or bf16 bits in u16).
    pub fn gemm<T: Operand>(
        &self,
        c: &mut CudaSlice<f32>,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
        s: GemmShape,
        accumulate: bool,
    ) -> Result<(), GemmError> {
        let GemmShape { m, n, k } = s;
        assert!(
            a.len() == m * k && b.len() == n * k && c.len() == m * n,
            "device gemm (m {m} n {n} k {k}): buffers of {}, {}, {} values, not m·k, n·k, m·n",
            a.len(),
            b.len(),
            c.len()
        );
        assert!(
            [m, n, k].iter().all(|&v| v <= i32::MAX as usize),
            "device gemm (m {m} n {n} k {k}): cuBLAS takes dimensions below 2³¹; split the product"
        );
        let what = if T::TYPE == cudaDataType_t::CUDA_R_32F { "f32" } else { "bf16 operands, f32 sums" };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let stream = &self.stream;
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (pc, _rc) = c.device_ptr_mut(stream);
        let [mi, ni, ki] = [m, n, k].map(|v| v as i32);
        // SAFETY: the buffers hold m·k, n·k and m·n values (checked above), which the column-major reading of the
        // module docs covers exactly: B-buffer (k, n) ld k, A-buffer (k, m) ld k, C (n, m) ld n; alpha and beta
        // are host f32 (the handle's default pointer mode) as CUBLAS_COMPUTE_32F* requires.
        unsafe {
            gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha as *const f32).cast::<c_void>(),
                pb as *const c_void,
                T::TYPE,
                ki,
                pa as *const c_void,
                T::TYPE,
                ki,
                (&beta as *const f32).cast::<c_void>(),
                pc as *mut c_void,
                cudaDataType_t::CUDA_R_32F,
                ni,
                T::COMPUTE,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|err| GemmError::Gemm { what, m, n, k, err })
    }
}
