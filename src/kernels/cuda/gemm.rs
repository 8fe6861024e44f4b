//! The GEMM of the device: cuBLAS (`cublasGemmEx`, loaded at run time like the driver) computing row-major
//! products on views of buffers — [`Blas::matmul`], as `kernels::matmul` on strided, possibly transposed `Mat`
//! views (the backend's gemm) — and the CPU's `x·Wᵀ` shape on dense buffers ([`Blas::gemm`], a call of it): in
//! f32 (no TF32: pedantic f32 compute, so it can match the CPU GEMM within float rounding) or with bf16 operands
//! and f32 accumulation (as `kernels::gemm_bf16`, `--compute bf16`).
//!
//! cuBLAS is column-major: a row-major view (rows, cols, ld) is its (cols, rows) matrix with leading dimension ld —
//! the transpose of what the view holds. So the row-major product C (m, n) = op(A)·op(B) is cuBLAS's
//! Cᵀ (n, m) = op(B)ᵀ·op(A)ᵀ: gemm(op_B, op_A, n, m, k, B, ld_B, A, ld_A, C, ld_C), op = T for a transposed view
//! and N otherwise. For x·Wᵀ that is transa = T on the W buffer (k, n), transb = N on the x buffer (k, m), every
//! leading dimension the row length k (C's: n).
use super::device::Device;
use crate::kernels::backend::MatView;
use cudarc::cublas::CudaBlas;
use cudarc::cublas::result::{CublasError, gemm_ex};
use cudarc::cublas::sys::{self, cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::driver::sys as driver_sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError};
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
    #[error("allocating cuBLAS's workspace on cuda:{ordinal} failed ({err}): is the GPU out of memory?")]
    Workspace { ordinal: usize, err: DriverError },
    #[error("cuBLAS refused its workspace on cuda:{ordinal} ({err:?})")]
    SetWorkspace { ordinal: usize, err: CublasError },
    #[error("cublasGemmEx ({what}, m {m} n {n} k {k}) failed: {err:?}")]
    Gemm { what: &'static str, m: usize, n: usize, k: usize, err: CublasError },
    #[error("zeroing the (m {m}, n {n}) product of an empty inner dimension (k = 0) failed: {err}")]
    Zero { m: usize, n: usize, err: DriverError },
}

/// A cuBLAS handle on a device's stream: products run in stream order with the kernels of [`Device`].
pub struct Blas {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    /// The handle's workspace, ours rather than cuBLAS's pool, so a product captured into a CUDA graph names memory
    /// that lives as long as the handle (cuBLAS's documented way for graphs).
    _workspace: CudaSlice<u8>,
}

/// cuBLAS's recommended workspace on Hopper (32 MiB; 4 MiB suffices on older GPUs).
const WORKSPACE_BYTES: usize = 32 << 20;

impl Blas {
    /// Loads cuBLAS and makes a handle on `d`'s stream.
    pub fn new(d: &Device) -> Result<Blas, GemmError> {
        // SAFETY: dlopen of libcublas (NVIDIA's initializers only).
        if !unsafe { sys::is_culib_present() } {
            return Err(GemmError::NoCublas);
        }
        let ordinal = d.gpu.ordinal;
        let blas = CudaBlas::new(d.stream.clone()).map_err(|err| GemmError::Handle { ordinal, err })?;
        let mut workspace =
            d.stream.alloc_zeros::<u8>(WORKSPACE_BYTES).map_err(|err| GemmError::Workspace { ordinal, err })?;
        let (ptr, record) = workspace.device_ptr_mut(&d.stream);
        // SAFETY: the handle is live and set to this stream (cublasSetStream resets the workspace, so this comes
        // after it); the buffer is WORKSPACE_BYTES long and is kept with the handle.
        unsafe { sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut c_void, WORKSPACE_BYTES) }
            .result()
            .map_err(|err| GemmError::SetWorkspace { ordinal, err })?;
        drop(record);
        Ok(Blas { blas, stream: d.stream.clone(), _workspace: workspace })
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
        let (cv, av, bv) = (MatView::dense(m, n), MatView::dense(m, k), MatView::dense(n, k).t());
        self.matmul(c, cv, a, av, b, bv, 1.0, accumulate)
    }

    /// c = alpha · a · b (or c += when `accumulate`) on views of row-major buffers, as `kernels::matmul` on `Mat`
    /// views (alpha 1): each operand may start at an offset, skip columns (ld ≥ cols) and be read transposed; c is
    /// not transposed. alpha scales the f32 sums before they are stored (or added), in cuBLAS's epilogue. Shapes:
    /// a (m, k), b (k, n), c (m, n) as read; bounds are checked here. The operand mapping is the module docs'. c is
    /// f32, or bf16 for bf16 operands (the f32 result rounded to bf16 as cuBLAS stores it). An empty inner
    /// dimension (k = 0) zeroes c (or leaves it, accumulating) without cuBLAS.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul<T: Operand, C: Operand>(
        &self,
        c: &mut CudaSlice<C>,
        cv: MatView,
        a: &CudaSlice<T>,
        av: MatView,
        b: &CudaSlice<T>,
        bv: MatView,
        alpha: f32,
        accumulate: bool,
    ) -> Result<(), GemmError> {
        let ((m, k), (kb, n)) = (av.shape(), bv.shape());
        assert!(
            C::TYPE == cudaDataType_t::CUDA_R_32F || T::TYPE == cudaDataType_t::CUDA_R_16BF,
            "device gemm: a bf16 output needs bf16 operands (cuBLAS has no f32 × f32 → bf16 product)"
        );
        assert!(
            !cv.trans && kb == k && cv.shape() == (m, n),
            "device gemm: c {cv:?} = a {av:?} · b {bv:?} do not fit (c must be (m, n), untransposed)"
        );
        for (what, v, len) in [("a", av, a.len()), ("b", bv, b.len()), ("c", cv, c.len())] {
            assert!(v.end() <= len, "device gemm: {what} view {v:?} past a buffer of {len} values");
            // cuBLAS refuses a leading dimension below the stored matrix's column count (rows that overlap).
            assert!(v.ld >= v.cols, "device gemm: {what} view {v:?} has ld below its columns");
        }
        assert!(
            [m, n, k, av.ld, bv.ld, cv.ld].iter().all(|&v| v <= i32::MAX as usize),
            "device gemm (m {m} n {n} k {k}): cuBLAS takes dimensions and leading dimensions below 2³¹; split the product"
        );
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // c = 0 (or c as it is, accumulating), without cuBLAS: not every version handles an empty k.
            return if accumulate { Ok(()) } else { self.zero(c, cv) };
        }
        let what = if T::TYPE == cudaDataType_t::CUDA_R_32F { "f32" } else { "bf16 operands, f32 sums" };
        let op = |v: MatView| if v.trans { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let beta = if accumulate { 1.0f32 } else { 0.0 };
        let stream = &self.stream;
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (pc, _rc) = c.device_ptr_mut(stream);
        let at = |p: u64, v: MatView, size: usize| (p + (v.offset * size) as u64) as *const c_void;
        let (pa, pb) = (at(pa, av, size_of::<T>()), at(pb, bv, size_of::<T>()));
        let pc = at(pc, cv, size_of::<C>()) as *mut c_void;
        let [mi, ni, ki, lda, ldb, ldc] = [m, n, k, av.ld, bv.ld, cv.ld].map(|v| v as i32);
        // SAFETY: each pointer is its buffer's start plus the view's offset, and cuBLAS reads (writes, for c) the
        // column-major matrices of the docs above — op_B(B) (n, k) from pb with ldb, op_A(A) (k, m) from pa with
        // lda, C (n, m) at pc with ldc — i.e. exactly the elements of the three views, which end inside their
        // buffers (checked above); every ld is at least its stored matrix's column count (checked; ≥ 1, as m, n
        // and k are), which is what cuBLAS requires of it. alpha and beta are host f32 (the handle's default
        // pointer mode) as CUBLAS_COMPUTE_32F* requires.
        unsafe {
            gemm_ex(
                *self.blas.handle(),
                op(bv),
                op(av),
                ni,
                mi,
                ki,
                (&alpha as *const f32).cast::<c_void>(),
                pb,
                T::TYPE,
                ldb,
                pa,
                T::TYPE,
                lda,
                (&beta as *const f32).cast::<c_void>(),
                pc,
                C::TYPE,
                ldc,
                T::COMPUTE,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|err| GemmError::Gemm { what, m, n, k, err })
    }

    /// The view `cv` of c (non-empty, ld ≥ cols, inside c: checked by the caller) set to 0: a 2-D memset of
    /// rows × cols 32-bit (f32) or 16-bit (bf16) words, ld words apart.
    fn zero<C: Operand>(&self, c: &mut CudaSlice<C>, cv: MatView) -> Result<(), GemmError> {
        let (m, n) = (cv.rows, cv.cols);
        let stream = &self.stream;
        stream.context().bind_to_thread().map_err(|err| GemmError::Zero { m, n, err })?;
        let (pc, _rc) = c.device_ptr_mut(stream);
        let (start, pitch) = (pc + (cv.offset * size_of::<C>()) as u64, cv.ld * size_of::<C>());
        // SAFETY: rows × cols words of C's size from start, pitch bytes apart: exactly the view's elements, which lie
        // inside c; the context is current (above) and the memset is queued on the stream the buffer is used on.
        unsafe {
            if size_of::<C>() == 4 {
                driver_sys::cuMemsetD2D32Async(start, pitch, 0, n, m, stream.cu_stream())
            } else {
                driver_sys::cuMemsetD2D16Async(start, pitch, 0, n, m, stream.cu_stream())
            }
        }
        .result()
        .map_err(|err| GemmError::Zero { m, n, err })
    }
}
