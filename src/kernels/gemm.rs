//! The packed f32 GEMM that `matmul` (the checked entry point) calls, BLIS / llm.c style:
//!
//! ```text
//! C (m × n, row-major, row stride ldc)  (+)=  A (m × k, any strides) · B (k × n, any strides)
//!
//! for jc in 0..n step NC                       column block of C and B
//!   for pc in 0..k step kc (≤ KC)              depth block
//!     pack B[pc.., jc..] (kb × nb)  → ⌈nb/NR⌉ panels, each kb × NR, p-major, zero-padded to NR columns
//!     for ic in 0..m step MC                   row block
//!       pack A[ic.., pc..] (mb × kb) → ⌈mb/MR⌉ panels, each kb × MR, p-major, zero-padded to MR rows
//!       for each NR panel of B, for each MR panel of A:
//!         micro-kernel: C tile (MR × NR) (+)= Ap (MR × kb) · Bp (kb × NR), accumulated in registers
//! ```
//!
//! When the block has a single B panel (narrow products such as LoRA's x·Aᵀ, n = r) packing A would cost as much
//! as using it, so full-height tiles read a row-major A in place instead.
//!
//! Each element of C is computed the same way wherever it lies: Σ_p a·b in p order (fused multiply-adds in the
//! SIMD kernels) per depth block, then added to C. Edge tiles run the same micro-kernel into a scratch tile and
//! write back only the valid part, and threads split C into rectangles (over m and n, never k): the result is
//! bit-identical for any thread count. The packing buffers live in one thread-local allocation of fixed size, so
//! once a thread has run one product, its later products allocate nothing.
use super::mat::{Mat, MatMut};
use rayon::prelude::*;
use std::cell::RefCell;

/// Depth of a block: a kc × NR panel of B (L2) meets kc × MR panels of A (L1) in the micro-kernel.
const KC: usize = 384;
/// Rows of A packed at once (rounded down to a multiple of MR): an MC × KC block, ~L2-resident.
const MC: usize = 144;
/// Columns of B packed at once (rounded down to a multiple of NR): a KC × NC block, L3-resident.
const NC: usize = 2048;
/// Slots a packed panel may hold beyond its kb · width values (a kernel's header, see [`Kernel::panel_len`]).
pub(super) const PANEL_EXTRA: usize = 96;
/// Slots of one thread's packing buffer: a KC × NC block of B and an MC × KC block of A, with room for the
/// panels' headers (at most NC / 8 panels of B and MC / 4 of A: no kernel is narrower).
const PACK_FLOATS: usize = KC * (NC + MC) + PANEL_EXTRA * (NC / 8 + MC / 4);
/// Largest MR · NR of any micro-kernel (the scratch tile for edges).
pub(super) const MAX_TILE: usize = 256;
/// Products with fewer multiply-adds than this run on the calling thread only.
const PARALLEL_WORK: usize = 1 << 18;

/// A family of micro-kernels. [`Isa::best`] is what `matmul` uses; [`gemm`] runs any available one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, vectorized by the compiler for the build target (the only family off x86-64).
    Scalar,
    /// 256-bit AVX2 + FMA: 6 × 16 tiles (8 × 8 for n ≤ 8).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// 512-bit AVX-512F: 8 × 32 tiles (8 × 16 for n ≤ 16).
    #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
    Avx512,
}

impl Isa {
    /// The fastest family this CPU runs (detected once).
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *Isa::available().last().unwrap())
    }

    /// Every family this CPU runs, slowest first.
    pub fn available() -> Vec<Isa> {
        let all = [
            Isa::Scalar,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2,
            #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
            Isa::Avx512,
        ];
        all.into_iter().filter(|isa| isa.runs_here()).collect()
    }

    /// Whether this CPU has the instructions of this family.
    pub fn runs_here(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
        }
    }
}

/// A register-blocked micro-kernel computing one MR × NR tile of C from packed panels of A and B — the f32
/// kernels here, and the bf16 ones of `gemm_bf16`, which pack panels their own way.
pub(super) trait Kernel {
    const MR: usize;
    const NR: usize;
    /// Full-height tiles of a single-panel product may read a row-major A in place (`lda > 0` in [`Self::tile`])
    /// instead of packing it: the kernel's panels hold A's values unchanged.
    const DIRECT: bool;
    /// 32-bit slots of a packed panel of `kb` depths and `width` lines: kb · width, plus at most [`PANEL_EXTRA`].
    fn panel_len(kb: usize, width: usize) -> usize {
        kb * width
    }
    /// Packs `w ≤ width` lines of `kb` depths, line l at depth p being `src[l·ld_line + p·ld_depth]`, into the
    /// panel `dst` ([`Self::panel_len`] slots), zero-padding lines w..width.
    ///
    /// # Safety
    /// As [`pack`]; the CPU runs the kernel's instruction set.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack(
        dst: &mut [f32],
        width: usize,
        src: *const f32,
        w: usize,
        kb: usize,
        ld_line: usize,
        ld_depth: usize,
    );
    /// `c[i·ldc + j] = (c[i·ldc + j] if load else 0) + Σ_p A[i, p] · B[p, j]` for i < MR, j < NR over the kb
    /// depths of packed panels `a` (when `lda == 0`) and `b`; the f32 kernels read `A[i, p] = a[p·MR + i]`,
    /// `B[p, j] = b[p·NR + j]`, or when `lda > 0` (see [`Self::DIRECT`]) MR rows of a row-major matrix,
    /// `A[i, p] = a[i·lda + p]`.
    ///
    /// # Safety
    /// `a` and `b` hold packed panels of kb depths (or those kb · MR elements of A are readable in place); `c`
    /// is writable at every `i·ldc + j` above; the CPU runs the kernel's instruction set.
    unsafe fn tile(kb: usize, a: *const f32, lda: usize, b: *const f32, c: *mut f32, ldc: usize, load: bool);
}

/// A family of kernels built on each f32 kernel (`Of<K>` for the f32 kernel K), so that one dispatch on
/// [`Isa`] and the product's width serves the f32 GEMM ([`F32`]) and kernels that wrap it (bf16's emulation).
pub(super) trait Family {
    type Of<K: Kernel>: Kernel;
}

/// The f32 kernels themselves.
pub(super) struct F32;
impl Family for F32 {
    type Of<K: Kernel> = K;
}

/// `out = a · b`, or `out += a · b` when `accumulate`, with the micro-kernels of `isa` (which the CPU must run:
/// one of [`Isa::available`]). Rows of `out` must not overlap (`row_stride ≥ cols`).
pub fn gemm(isa: Isa, out: MatMut, a: Mat, b: Mat, accumulate: bool) {
    gemm_with::<F32>(isa, out, a, b, accumulate);
}

/// [`gemm`] with the kernels of family `W` built on `isa`'s f32 kernels.
pub(super) fn gemm_with<W: Family>(isa: Isa, out: MatMut, a: Mat, b: Mat, accumulate: bool) {
    assert!(isa.runs_here(), "gemm: {isa:?} kernels need CPU features this CPU lacks");
    let n = b.cols;
    match isa {
        Isa::Scalar => product::<W::Of<scalar::Tile<4, 8>>>(out, a, b, accumulate),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if n <= 8 => product::<W::Of<avx2::Tile<8, 1>>>(out, a, b, accumulate),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => product::<W::Of<avx2::Tile<6, 2>>>(out, a, b, accumulate),
        #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
        Isa::Avx512 if n <= 16 => product::<W::Of<avx512::Tile<8, 1>>>(out, a, b, accumulate),
        #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
        Isa::Avx512 => product::<W::Of<avx512::Tile<8, 2>>>(out, a, b, accumulate),
    }
}

/// Checks the shapes and views, then runs the blocked loop with kernel `K` (which the CPU must run).
pub(super) fn product<K: Kernel>(out: MatMut, a: Mat, b: Mat, accumulate: bool) {
    assert!(a.cols == b.rows && out.rows == a.rows && out.cols == b.cols, "gemm: shape mismatch");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    a.check("lhs");
    b.check("rhs");
    assert!((m - 1) * out.row_stride + n <= out.data.len(), "gemm: dst out of bounds");
    assert!(m == 1 || out.row_stride >= n, "gemm: dst rows overlap");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                out.data[r * out.row_stride..][..n].fill(0.0);
            }
        }
        return;
    }
    drive::<K>(out, a, b, accumulate);
}

/// The depth of the GEMM's blocks for a product of depth `k`: equal blocks of at most KC, a function of k alone, so
/// the summation order never depends on how C is split (and a caller that cuts k at these points gets the same
/// bits, see `packed`).
pub fn depth_block(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC))
}

/// The destination pointer, shared by the threads that write disjoint rectangles of it.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: each thread writes only its own rectangle of C (disjoint rows × columns), see `drive`.
unsafe impl Send for Dst {}
// SAFETY: as above.
unsafe impl Sync for Dst {}
impl Dst {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Splits C over the threads of the current rayon pool and runs the blocked loop on each rectangle.
fn drive<K: Kernel>(out: MatMut, a: Mat, b: Mat, accumulate: bool) {
    const { assert!(K::MR * K::NR <= MAX_TILE && MC >= K::MR && NC >= K::NR) };
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let threads = if m * n * k >= PARALLEL_WORK { rayon::current_num_threads() } else { 1 };
    let (mt, nt) = (m.div_ceil(K::MR), n.div_ceil(K::NR));
    let (tm, tn) = split(mt, nt, K::MR, K::NR, threads);
    let (ldc, c) = (out.row_stride, Dst(out.data.as_mut_ptr()));
    // Part t covers tile rows [mt·ti/tm, mt·(ti+1)/tm) and tile columns [nt·tj/tn, nt·(tj+1)/tn).
    let part = |t: usize| {
        let (ti, tj) = (t / tn, t % tn);
        let rows = (mt * ti / tm * K::MR).min(m)..(mt * (ti + 1) / tm * K::MR).min(m);
        let cols = (nt * tj / tn * K::NR).min(n)..(nt * (tj + 1) / tn * K::NR).min(n);
        if !rows.is_empty() && !cols.is_empty() {
            with_pack_buffer(|buf| {
                // SAFETY: `gemm` checked that every element of `a`, `b` and the m × n window of C (row stride
                // ldc ≥ n) is in bounds; the parts' rectangles are disjoint, and `out` is borrowed mutably for
                // the whole call, so nothing else reads or writes C meanwhile; `K` runs on this CPU (`gemm`).
                unsafe { blocked::<K>(c.get(), ldc, a, b, rows, cols, accumulate, buf) }
            })
        }
    };
    if tm * tn == 1 {
        part(0);
    } else {
        (0..tm * tn).into_par_iter().for_each(part);
    }
}

/// The grid (tm, tn), tm·tn ≤ threads, of parts over mt × nt tiles that minimizes one part's cost: its
/// multiply-adds (rows · cols) plus the packing each part repeats for its A rows and B columns (~8·(rows + cols)).
/// Tall products split m, wide ones n.
fn split(mt: usize, nt: usize, mr: usize, nr: usize, threads: usize) -> (usize, usize) {
    let cost = |tm: usize, tn: usize| {
        let (rows, cols) = (mt.div_ceil(tm) * mr, nt.div_ceil(tn) * nr);
        rows * cols + 8 * (rows + cols)
    };
    let mut best = (1, 1);
    for tm in 1..=threads.min(mt) {
        let tn = (threads / tm).min(nt);
        if cost(tm, tn) < cost(best.0, best.1) {
            best = (tm, tn);
        }
    }
    best
}

thread_local! {
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's packing buffer (PACK_FLOATS floats, 64-byte aligned). It is allocated on the
/// thread's first product at its full, fixed size (zeroed by the allocator, so pages are only touched when
/// used), so no later product on this thread allocates, whatever its shape and whichever part of it runs here.
fn with_pack_buffer<R>(f: impl FnOnce(&mut [f32]) -> R) -> R {
    PACK.with(|cell| {
        let mut v = cell.borrow_mut();
        if v.is_empty() {
            *v = vec![0.0; PACK_FLOATS + 16];
        }
        let skip = v.as_ptr().align_offset(64).min(16);
        f(&mut v[skip..skip + PACK_FLOATS])
    })
}

/// The blocked loop over one rectangle `rows × cols` of C (see the module docs).
///
/// # Safety
/// C is writable at `c + i·ldc + j` for every (i, j) of the rectangle, and no one else accesses it meanwhile;
/// every element of `a` and `b` is in bounds of its slice; the CPU runs `K`.
#[allow(clippy::too_many_arguments)]
unsafe fn blocked<K: Kernel>(
    c: *mut f32,
    ldc: usize,
    a: Mat,
    b: Mat,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    accumulate: bool,
    buf: &mut [f32],
) {
    let (mr, nr, k) = (K::MR, K::NR, a.cols);
    let (mc, nc) = (MC / mr * mr, NC / nr * nr);
    let kc = depth_block(k);
    let (bp, ap) = buf.split_at_mut(nc / nr * (KC * nr + PANEL_EXTRA));
    let mut scratch = [0.0f32; MAX_TILE];
    for jc in cols.clone().step_by(nc) {
        let nb = nc.min(cols.end - jc);
        // A single B panel: full-height tiles read a row-major A in place (see the module docs).
        let direct = K::DIRECT && nb <= nr && a.col_stride == 1 && a.row_stride > 0;
        for pc in (0..k).step_by(kc) {
            let kb = kc.min(k - pc);
            let load = accumulate || pc > 0;
            let (bl, al) = (K::panel_len(kb, nr), K::panel_len(kb, mr));
            debug_assert!(bl <= kb * nr + PANEL_EXTRA && al <= kb * mr + PANEL_EXTRA);
            // Bp: ⌈nb/NR⌉ panels of kb × NR, bl slots each (f32 kernels: B[pc + p, jc + jp·NR + j] at
            // [jp·kb·NR + p·NR + j]).
            for (jp, panel) in bp[..nb.div_ceil(nr) * bl].chunks_exact_mut(bl).enumerate() {
                let j0 = jc + jp * nr;
                // SAFETY: the panel's source elements B[pc..pc + kb, j0..j0 + w] are inside the checked view.
                unsafe {
                    let src = b.data.as_ptr().add(pc * b.row_stride + j0 * b.col_stride);
                    K::pack(panel, nr, src, nr.min(cols.end - j0), kb, b.col_stride, b.row_stride)
                }
            }
            for ic in rows.clone().step_by(mc) {
                let mb = mc.min(rows.end - ic);
                // Ap: ⌈mb/MR⌉ panels of kb × MR, al slots each (f32 kernels: A[ic + ip·MR + i, pc + p] at
                // [ip·kb·MR + p·MR + i]).
                for (ip, panel) in ap[..mb.div_ceil(mr) * al].chunks_exact_mut(al).enumerate() {
                    let (i0, h) = (ic + ip * mr, mr.min(rows.end - ic - ip * mr));
                    if !(direct && h == mr) {
                        // SAFETY: the source elements A[i0..i0 + h, pc..pc + kb] are inside the checked view.
                        unsafe {
                            let src = a.data.as_ptr().add(i0 * a.row_stride + pc * a.col_stride);
                            K::pack(panel, mr, src, h, kb, a.row_stride, a.col_stride)
                        }
                    }
                }
                for jp in 0..nb.div_ceil(nr) {
                    let (j0, w) = (jc + jp * nr, nr.min(cols.end - jc - jp * nr));
                    let bpanel = bp[jp * bl..].as_ptr();
                    for ip in 0..mb.div_ceil(mr) {
                        let (i0, h) = (ic + ip * mr, mr.min(rows.end - ic - ip * mr));
                        // SAFETY: A's rows i0..i0 + MR at depths pc..pc + kb are in the checked view when read in
                        // place, else the panel holds al packed slots; Bp holds bl; the tile (i0.., j0..)
                        // of C is inside this rectangle (caller's guarantee) when full, else goes via `scratch`.
                        unsafe {
                            let (at, lda) = if direct && h == mr {
                                (a.data.as_ptr().add(i0 * a.row_stride + pc), a.row_stride)
                            } else {
                                (ap[ip * al..].as_ptr(), 0)
                            };
                            let ct = c.add(i0 * ldc + j0);
                            if h == mr && w == nr {
                                K::tile(kb, at, lda, bpanel, ct, ldc, load);
                            } else {
                                K::tile(kb, at, lda, bpanel, scratch.as_mut_ptr(), nr, false);
                                for (i, acc) in scratch.chunks_exact(nr).take(h).enumerate() {
                                    let dst = std::slice::from_raw_parts_mut(ct.add(i * ldc), w);
                                    for (d, &s) in dst.iter_mut().zip(acc) {
                                        *d = if load { *d + s } else { s };
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packs `w ≤ width` lines of length `kb` into a p-major panel `width` wide, zero-padding lines w..width:
/// `dst[p·width + l] = src[l·ld_line + p·ld_depth]`. `avx`: the CPU has AVX (for the transposing case).
///
/// # Safety
/// `src` is readable at every `l·ld_line + p·ld_depth`, l < w, p < kb; `dst` has kb · width floats.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn pack(
    dst: &mut [f32],
    width: usize,
    src: *const f32,
    w: usize,
    kb: usize,
    ld_line: usize,
    ld_depth: usize,
    avx: bool,
) {
    let dst = &mut dst[..kb * width];
    if w < width {
        for row in dst.chunks_exact_mut(width) {
            row[w..].fill(0.0);
        }
    }
    // SAFETY (all reads below): in bounds by the caller's guarantee.
    if ld_line == 1 {
        // Lines contiguous (row-major B, column-strided A such as dyᵀ): a row copy per depth step.
        for (p, row) in dst.chunks_exact_mut(width).enumerate() {
            let s = unsafe { std::slice::from_raw_parts(src.add(p * ld_depth), w) };
            if w == width {
                row.copy_from_slice(s); // constant length: the compiler unrolls it
            } else {
                row[..w].copy_from_slice(s);
            }
        }
    } else if ld_depth == 1 {
        // Each line contiguous in depth (row-major A, transposed B such as Wᵀ): a transpose, by 8 × 8 (or 4 × 8)
        // blocks in registers when the CPU has AVX.
        let mut l = 0;
        #[cfg(target_arch = "x86_64")]
        if avx {
            while l + 4 <= w {
                let lines = if l + 8 <= w { 8 } else { 4 };
                let mut p = 0;
                while p + 8 <= kb {
                    // SAFETY: lines l..l + lines at depths p..p + 8 are readable; `dst` rows p..p + 8 hold
                    // `width ≥ l + lines` floats; the caller says the CPU has AVX.
                    unsafe {
                        let (s, d) = (src.add(l * ld_line + p), dst.as_mut_ptr().add(p * width + l));
                        if lines == 8 {
                            x86::transpose_8x8(s, ld_line, d, width)
                        } else {
                            x86::transpose_4x8(s, ld_line, d, width)
                        }
                    }
                    p += 8;
                }
                for p in p..kb {
                    for r in l..l + lines {
                        dst[p * width + r] = unsafe { *src.add(r * ld_line + p) };
                    }
                }
                l += lines;
            }
        }
        let _ = avx;
        for l in l..w {
            let s = unsafe { std::slice::from_raw_parts(src.add(l * ld_line), kb) };
            for (p, &v) in s.iter().enumerate() {
                dst[p * width + l] = v;
            }
        }
    } else {
        for (p, row) in dst.chunks_exact_mut(width).enumerate() {
            for (l, d) in row[..w].iter_mut().enumerate() {
                *d = unsafe { *src.add(l * ld_line + p * ld_depth) };
            }
        }
    }
}

/// In-register transposes for packing row-major A and transposed B.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `dst[q·ldd + r] = src[r·lds + q]` for r, q < 8.
    ///
    /// # Safety
    /// Those elements are readable / writable; the CPU has AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_8x8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: the caller guarantees the 8 source rows of 8 floats.
        let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * lds)) });
        // Rows a..h → t: (a0 b0 a1 b1 | a4 b4 a5 b5), (a2 b2 a3 b3 | a6 b6 a7 b7), the same for cd, ef, gh.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { _mm256_unpacklo_ps(x, y) } else { _mm256_unpackhi_ps(x, y) }
        });
        // u: (a0 b0 c0 d0 | a4 b4 c4 d4), (a1 .. d1 | a5 .. d5), (a2 .. | a6 ..), (a3 .. | a7 ..), then e..h.
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let (x, y) = (t[i / 4 * 4 + i % 4 / 2], t[i / 4 * 4 + i % 4 / 2 + 2]);
            if i % 2 == 0 { _mm256_shuffle_ps::<0x44>(x, y) } else { _mm256_shuffle_ps::<0xEE>(x, y) }
        });
        for q in 0..4 {
            // SAFETY: the caller guarantees the 8 destination rows of 8 floats.
            unsafe {
                _mm256_storeu_ps(dst.add(q * ldd), _mm256_permute2f128_ps::<0x20>(u[q], u[q + 4]));
                _mm256_storeu_ps(dst.add((q + 4) * ldd), _mm256_permute2f128_ps::<0x31>(u[q], u[q + 4]));
            }
        }
    }

    /// `dst[q·ldd + r] = src[r·lds + q]` for r < 4, q < 8.
    ///
    /// # Safety
    /// Those elements are readable / writable; the CPU has AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_4x8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: the caller guarantees the 4 source rows of 8 floats.
        let r: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * lds)) });
        let t: [__m256; 4] = std::array::from_fn(|i| {
            let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { _mm256_unpacklo_ps(x, y) } else { _mm256_unpackhi_ps(x, y) }
        });
        // u: (a0 b0 c0 d0 | a4 b4 c4 d4), (a1 .. | a5 ..), (a2 .. | a6 ..), (a3 .. | a7 ..).
        let u: [__m256; 4] = std::array::from_fn(|i| {
            let (x, y) = (t[i / 2], t[i / 2 + 2]);
            if i % 2 == 0 { _mm256_shuffle_ps::<0x44>(x, y) } else { _mm256_shuffle_ps::<0xEE>(x, y) }
        });
        for (q, &u) in u.iter().enumerate() {
            // SAFETY: the caller guarantees the 8 destination rows of 4 floats.
            unsafe {
                _mm_storeu_ps(dst.add(q * ldd), _mm256_castps256_ps128(u));
                _mm_storeu_ps(dst.add((q + 4) * ldd), _mm256_extractf128_ps::<1>(u));
            }
        }
    }
}

/// Portable micro-kernel: an MR × NR block of f32 accumulators the compiler vectorizes for the target.
mod scalar {
    pub(super) struct Tile<const MR: usize, const NR: usize>;

    impl<const MR: usize, const NR: usize> super::Kernel for Tile<MR, NR> {
        const MR: usize = MR;
        const NR: usize = NR;
        const DIRECT: bool = true;
        unsafe fn pack(d: &mut [f32], width: usize, s: *const f32, w: usize, kb: usize, ll: usize, ld: usize) {
            // SAFETY: forwarded caller guarantees.
            unsafe { super::pack(d, width, s, w, kb, ll, ld, false) }
        }
        unsafe fn tile(kb: usize, a: *const f32, lda: usize, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
            let mut acc = [[0.0f32; NR]; MR];
            for p in 0..kb {
                // SAFETY: the caller guarantees kb·NR floats at `b` and A's elements (i < MR, p < kb).
                let bp = unsafe { &*b.add(p * NR).cast::<[f32; NR]>() };
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = unsafe { if lda == 0 { *a.add(p * MR + i) } else { *a.add(i * lda + p) } };
                    for (s, &bj) in row.iter_mut().zip(bp) {
                        *s += ai * bj;
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                // SAFETY: row i of the tile, NR floats, is writable (caller's guarantee).
                let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
                for (d, &s) in dst.iter_mut().zip(row) {
                    *d = if load { *d + s } else { s };
                }
            }
        }
    }
}

/// A SIMD micro-kernel family: MR rows × NV vectors of `$lanes` columns, the accumulators in registers. One
/// template for AVX2 and AVX-512, which differ only in vector type, width and intrinsics.
macro_rules! simd_kernel {
    ($name:ident, $feature:literal, $vec:ty, $lanes:literal,
     $zero:ident, $load:ident, $splat:ident, $fma:ident, $add:ident, $store:ident) => {
        mod $name {
            use std::arch::x86_64::*;

            pub(super) struct Tile<const MR: usize, const NV: usize>;

            impl<const MR: usize, const NV: usize> super::Kernel for Tile<MR, NV> {
                const MR: usize = MR;
                const NR: usize = $lanes * NV;
                const DIRECT: bool = true;
                unsafe fn pack(d: &mut [f32], width: usize, s: *const f32, w: usize, kb: usize, ll: usize, ld: usize) {
                    // SAFETY: forwarded caller guarantees; this family's CPUs have AVX.
                    unsafe { super::pack(d, width, s, w, kb, ll, ld, true) }
                }
                unsafe fn tile(
                    kb: usize,
                    a: *const f32,
                    lda: usize,
                    b: *const f32,
                    c: *mut f32,
                    ldc: usize,
                    load: bool,
                ) {
                    // SAFETY: forwarded caller guarantees; this family only runs on CPUs with its features
                    // (`Isa::available` checks them).
                    unsafe { tile::<MR, NV>(kb, a, lda, b, c, ldc, load) }
                }
            }

            /// Σ_p A[i, p] · Bp[p, v·L..v·L + L] for i < MR, v < NV, L lanes (A packed when `ROWS` is false, else
            /// rows at `lda`).
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn dot<const MR: usize, const NV: usize, const ROWS: bool>(
                kb: usize,
                a: *const f32,
                lda: usize,
                b: *const f32,
            ) -> [[$vec; NV]; MR] {
                let mut acc = [[$zero(); NV]; MR];
                for p in 0..kb {
                    // SAFETY: p·NR + (v + 1)·L ≤ kb·NR floats at `b`.
                    let bv: [$vec; NV] = std::array::from_fn(|v| unsafe { $load(b.add((p * NV + v) * $lanes)) });
                    for (i, row) in acc.iter_mut().enumerate() {
                        // SAFETY: A[i, p] is readable (caller's guarantee).
                        let ai = $splat(unsafe { if ROWS { *a.add(i * lda + p) } else { *a.add(p * MR + i) } });
                        for (s, &x) in row.iter_mut().zip(&bv) {
                            *s = $fma(ai, x, *s);
                        }
                    }
                }
                acc
            }

            #[target_feature(enable = $feature)]
            unsafe fn tile<const MR: usize, const NV: usize>(
                kb: usize,
                a: *const f32,
                lda: usize,
                b: *const f32,
                c: *mut f32,
                ldc: usize,
                load: bool,
            ) {
                // Start fetching the C tile: it is read and written only at the end, and C is usually larger than
                // L2. Every cache line of each row: the first float of each vector, and the last float (rows need
                // not be aligned).
                for i in 0..MR {
                    let row = c.wrapping_add(i * ldc);
                    for v in 0..NV {
                        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add($lanes * v).cast());
                    }
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add($lanes * NV - 1).cast());
                }
                // SAFETY: forwarded caller guarantees.
                let acc = unsafe {
                    if lda == 0 { dot::<MR, NV, false>(kb, a, 0, b) } else { dot::<MR, NV, true>(kb, a, lda, b) }
                };
                for (i, row) in acc.iter().enumerate() {
                    for (v, &s) in row.iter().enumerate() {
                        // SAFETY: the MR × NR tile at `c` (row stride ldc) is writable.
                        unsafe {
                            let dst = c.add(i * ldc + v * $lanes);
                            let s = if load { $add($load(dst), s) } else { s };
                            $store(dst, s);
                        }
                    }
                }
            }
        }
    };
}

// AVX2 + FMA: 8 columns per vector, 16 ymm registers.
#[cfg(target_arch = "x86_64")]
simd_kernel!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_storeu_ps
);

// AVX-512F: 16 columns per vector, 32 zmm registers.
#[cfg(all(target_arch = "x86_64", feature = "avx512"))]
simd_kernel!(
    avx512,
    "avx512f",
    __m512,
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_storeu_ps
);

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f32> {
        (0..len).map(|i| (2.0 * crate::rng::uniform(seed, 0, i as u64) - 1.0) as f32).collect()
    }

    /// How a test operand (rows × cols) is laid out in its buffer.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        /// Dense row-major.
        Rows,
        /// The transpose view of a dense (cols × rows) buffer, like `Wᵀ` or `dyᵀ`.
        Transposed,
        /// Neither stride 1: row stride 2·cols + 3, column stride 2.
        Strided,
        /// A column block (from column 5) of a row-major buffer 7 columns wider.
        Block,
    }

    /// A buffer holding a rows × cols operand in `layout`, and the view of it.
    fn operand(rows: usize, cols: usize, layout: Layout, seed: u64) -> (Vec<f32>, usize, usize, usize) {
        let (len, offset, rs, cs) = match layout {
            Layout::Rows => (rows * cols, 0, cols, 1),
            Layout::Transposed => (rows * cols, 0, 1, rows),
            Layout::Strided => ((2 * cols + 3) * rows.max(1), 0, 2 * cols + 3, 2),
            Layout::Block => ((cols + 7) * rows.max(1), 5, cols + 7, 1),
        };
        (random(len.max(1), seed), offset, rs, cs)
    }

    fn view(buf: &(Vec<f32>, usize, usize, usize), rows: usize, cols: usize) -> Mat<'_> {
        Mat { data: &buf.0[buf.1..], rows, cols, row_stride: buf.2, col_stride: buf.3 }
    }

    /// Runs `gemm` on an m × n block (columns 3.., row stride n + 5) of a buffer pre-filled with `c0`, checks the
    /// block against the f64 product within the f32 rounding bound, and everything else untouched.
    fn check(isa: Isa, m: usize, k: usize, n: usize, la: Layout, lb: Layout, accumulate: bool) -> Vec<f32> {
        let (abuf, bbuf) = (operand(m, k, la, 1), operand(k, n, lb, 2));
        let (a, b) = (view(&abuf, m, k), view(&bbuf, k, n));
        let ldc = n + 5;
        let c0 = random(m * ldc + 3, 3);
        let mut c = c0.clone();
        gemm(isa, MatMut { data: &mut c[3..], rows: m, cols: n, row_stride: ldc }, a, b, accumulate);
        for (idx, (&got, &was)) in c.iter().zip(&c0).enumerate() {
            let (i, j) = ((idx.max(3) - 3) / ldc, (idx.max(3) - 3) % ldc);
            if idx < 3 || j >= n {
                assert_eq!(got.to_bits(), was.to_bits(), "{isa:?}: element {idx} outside C was written");
                continue;
            }
            let (mut want, mut mag) = if accumulate { (was as f64, was.abs() as f64) } else { (0.0, 0.0) };
            for p in 0..k {
                let t = a.data[i * a.row_stride + p * a.col_stride] as f64
                    * b.data[p * b.row_stride + j * b.col_stride] as f64;
                want += t;
                mag += t.abs();
            }
            let tol = 2.0 * (k + 2) as f64 * f32::EPSILON as f64 * mag;
            assert!(
                (got as f64 - want).abs() <= tol,
                "{isa:?} m={m} k={k} n={n} {la:?}·{lb:?} acc={accumulate}: C[{i},{j}] = {got}, want {want}"
            );
        }
        c
    }

    #[test]
    fn every_isa_matches_f64_on_awkward_shapes_and_views() {
        use Layout::*;
        let shapes = [
            (1, 1, 1),
            (1, 45, 300),   // one row
            (300, 45, 1),   // one column
            (7, 0, 9),      // no depth
            (37, 71, 53),   // nothing a multiple of a tile
            (9, 70, 16),    // narrow kernels, one panel
            (33, 40, 5),    // narrow, edge panel
            (50, 30, 20),   // one main-kernel panel, read in place
            (150, 900, 40), // several row blocks (MC) and depth blocks (KC)
            (3, 5, 2100),   // several column blocks (NC)
        ];
        for isa in Isa::available() {
            for &(m, k, n) in &shapes {
                for (la, lb) in
                    [(Rows, Transposed), (Rows, Rows), (Transposed, Rows), (Strided, Block), (Block, Strided)]
                {
                    for accumulate in [false, true] {
                        check(isa, m, k, n, la, lb, accumulate);
                    }
                }
            }
        }
    }

    /// A view whose rows all alias one buffer row (row stride 0) must not be mistaken for a packed panel.
    #[test]
    fn zero_row_stride_reads_one_row_for_all() {
        let x = random(40, 4);
        let w = random(40 * 24, 5);
        for isa in Isa::available() {
            let mut c = vec![0.0; 16 * 24];
            let a = Mat { data: &x, rows: 16, cols: 40, row_stride: 0, col_stride: 1 };
            gemm(isa, MatMut::new(&mut c, 16, 24), a, Mat::new(&w, 40, 24), false);
            let mut one = vec![0.0; 24];
            gemm(isa, MatMut::new(&mut one, 1, 24), Mat::new(&x, 1, 40), Mat::new(&w, 40, 24), false);
            for row in c.chunks_exact(24) {
                assert_eq!(row, &one[..], "{isa:?}");
            }
        }
    }

    /// Threads split over m and n only, and edge tiles run the full kernel: any thread count gives the same bits.
    #[test]
    fn bit_identical_for_any_thread_count() {
        use Layout::*;
        let cases = [
            (200, 300, 260, Rows, Transposed), // both dimensions split unevenly
            (2048, 64, 40, Rows, Transposed),  // tall
            (20, 100, 3000, Rows, Rows),       // wide
            (130, 700, 9, Transposed, Rows),   // narrow
        ];
        for isa in Isa::available() {
            for &(m, k, n, la, lb) in &cases {
                let (abuf, bbuf) = (operand(m, k, la, 6), operand(k, n, lb, 7));
                let (a, b) = (view(&abuf, m, k), view(&bbuf, k, n));
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut c = random(m * n, 8);
                    pool.install(|| gemm(isa, MatMut::new(&mut c, m, n), a, b, true));
                    c
                };
                let one = run(1);
                for threads in [2, 3, 4] {
                    let many = run(threads);
                    assert!(
                        one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{isa:?} {m}×{k}×{n}, {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn split_keeps_all_threads_busy() {
        // (m, n) in tiles of 8 × 32: tall splits m, wide and weight-gradient shapes split n.
        assert_eq!(split(2048 / 8, 576 / 32, 8, 32, 2), (2, 1));
        assert_eq!(split(64 / 8, 49152 / 32, 8, 32, 2), (1, 2));
        assert_eq!(split(576 / 8, 1536 / 32, 8, 32, 2), (1, 2));
        assert_eq!(split(1024 / 8, 1024 / 32, 8, 32, 4), (2, 2));
        assert_eq!(split(1, 1, 8, 32, 4), (1, 1));
        assert_eq!(split(1, 100, 8, 32, 3), (1, 3));
    }
}
