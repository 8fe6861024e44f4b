//! The Gated DeltaNet's per-row ops around its recurrence on the GPU (delta_mixer.cu), as `kernels::delta_mixer`'s
//! inputs_forward / inputs_backward and gated_norm_forward / gated_norm_backward: the projections' rows (N,
//! proj_width) — qkv | z | b | a — the convolution's output (N, conv_dim), the recurrence's buffers head-major
//! (`gated_delta::DeltaViews`). Parameter gradients (dt_bias, A_log, the norm's weight) are summed by chunks of rows,
//! then added in chunk order (reduce.cu's add_chunk_sums): the same bits every run.
use super::gated_delta::{DeltaViews, DeltaViewsMut, check_heads};
use super::{CHUNK_ROWS, by_chunks, column_scratch, per_row, reduce};
use crate::kernels::cuda::device::Device;
use crate::kernels::gated_delta::{DeltaDims, DeltaNetShape};
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// What [`inputs_forward`] writes: the recurrence's inputs, and 1/‖q‖, 1/‖k‖ per row and key head (N, k_heads).
pub struct InputsMut<'a> {
    pub x: DeltaViewsMut<'a>,
    pub q_rnorm: CudaViewMut<'a, f32>,
    pub k_rnorm: CudaViewMut<'a, f32>,
}

/// What [`inputs_backward`] reads of the forward pass (`kernels::delta_mixer::InputsSaved`): the recurrence's inputs
/// (g and β are read), 1/‖q‖ and 1/‖k‖, the convolution's output and the projections.
pub struct InputsSaved<'a> {
    pub x: DeltaViews<'a>,
    pub q_rnorm: CudaView<'a, f32>,
    pub k_rnorm: CudaView<'a, f32>,
    pub conv: CudaView<'a, f32>,
    pub proj: CudaView<'a, f32>,
}

/// The shape's values as the row kernels take them — [rows, k_heads, v_heads, dk, dv, proj_width] — once the key
/// heads serve the value heads evenly and the head-major buffers of lengths `heads` (q, k, v, g, β) hold N rows.
fn shape_args(op: &str, s: &DeltaNetShape, rows: usize, heads: [usize; 5]) -> [i32; 6] {
    assert!(
        s.k_heads > 0 && s.v_heads.is_multiple_of(s.k_heads),
        "{op}: {} key heads do not serve {} value heads evenly",
        s.k_heads,
        s.v_heads
    );
    check_heads(op, heads, s.v_heads, rows, DeltaDims { dk: s.k_head_dim, dv: s.v_head_dim });
    let v = [rows, s.k_heads, s.v_heads, s.k_head_dim, s.v_head_dim, s.proj_width()];
    v.map(|x| i32::try_from(x).unwrap_or_else(|_| panic!("{op}: {x} exceeds the kernels' ints")))
}

/// q·dk^-½ of the L2-normed q: the CPU's scale, bit for bit.
fn q_scale(s: &DeltaNetShape) -> f32 {
    (s.k_head_dim as f32).powf(-0.5)
}

/// The recurrence's inputs for N rows from the convolution's output `conv` (N, conv_dim), the projections' b and a
/// columns (`proj`: N rows of proj_width) and the tensors dt_bias, A_log (v_heads).
#[allow(clippy::too_many_arguments)]
pub fn inputs_forward(
    d: &Device,
    out: &mut InputsMut,
    conv: &CudaView<f32>,
    proj: &CudaView<f32>,
    dt_bias: &CudaView<f32>,
    a_log: &CudaView<f32>,
    rows: usize,
    s: &DeltaNetShape,
) -> Result<(), DriverError> {
    let op = "delta_inputs_forward";
    let x = &out.x;
    let [rows_i, hk, hv, dk, dv, p] =
        shape_args(op, s, rows, [x.q.len(), x.k.len(), x.v.len(), x.g.len(), x.beta.len()]);
    assert!(out.q_rnorm.len() == rows * s.k_heads && out.k_rnorm.len() == rows * s.k_heads, "{op}: rnorm shapes");
    assert!(conv.len() == rows * s.conv_dim() && proj.len() == rows * s.proj_width(), "{op}: conv or proj shape");
    assert!(dt_bias.len() == s.v_heads && a_log.len() == s.v_heads, "{op}: dt_bias or A_log shape");
    if rows == 0 {
        return Ok(());
    }
    let scale = q_scale(s);
    let x = &mut out.x;
    let mut b = d.stream.launch_builder(d.function("delta_inputs_forward"));
    b.arg(&mut x.q).arg(&mut x.k).arg(&mut x.v).arg(&mut x.g).arg(&mut x.beta).arg(&mut out.q_rnorm);
    b.arg(&mut out.k_rnorm).arg(conv).arg(proj).arg(dt_bias).arg(a_log).arg(&rows_i).arg(&hk).arg(&hv).arg(&dk);
    b.arg(&dv).arg(&p).arg(&scale);
    // SAFETY: block t < N reads row t of conv and proj and the v_heads values of dt_bias and A_log, and writes row t
    // of every head of q, k, v, g, β and row t of the rnorms: every length checked against N and the shape.
    unsafe { b.launch(per_row(rows)) }.map(drop)
}

/// Backward of [`inputs_forward`] from the recurrence's input gradients `grads` (head-major): `dconv` (N, conv_dim)
/// and dproj's b and a columns (N rows of proj_width) written; ∂dt_bias and ∂A_log **+=** when given, summed by
/// chunks of rows in `partials` (`column_scratch(N, 2·v_heads)` values).
#[allow(clippy::too_many_arguments)]
pub fn inputs_backward(
    d: &Device,
    dconv: &mut CudaViewMut<f32>,
    dproj: &mut CudaViewMut<f32>,
    ddt_bias: Option<&mut CudaViewMut<f32>>,
    da_log: Option<&mut CudaViewMut<f32>>,
    grads: &DeltaViews,
    saved: &InputsSaved,
    dt_bias: &CudaView<f32>,
    a_log: &CudaView<f32>,
    rows: usize,
    s: &DeltaNetShape,
    partials: &mut CudaViewMut<f32>,
) -> Result<(), DriverError> {
    let op = "delta_inputs_backward";
    let gr = grads;
    let [rows_i, hk, hv, dk, dv, p] =
        shape_args(op, s, rows, [gr.q.len(), gr.k.len(), gr.v.len(), gr.g.len(), gr.beta.len()]);
    let x = &saved.x;
    shape_args(op, s, rows, [x.q.len(), x.k.len(), x.v.len(), x.g.len(), x.beta.len()]);
    let (c, pw) = (s.conv_dim(), s.proj_width());
    assert!(saved.q_rnorm.len() == rows * s.k_heads && saved.k_rnorm.len() == rows * s.k_heads, "{op}: rnorm shapes");
    assert!(saved.conv.len() == rows * c && dconv.len() == rows * c, "{op}: conv or dconv shape");
    assert!(saved.proj.len() == rows * pw && dproj.len() == rows * pw, "{op}: proj or dproj shape");
    assert!(dt_bias.len() == s.v_heads && a_log.len() == s.v_heads, "{op}: dt_bias or A_log shape");
    let fits = |t: &Option<&mut CudaViewMut<f32>>| t.as_ref().is_none_or(|t| t.len() == s.v_heads);
    assert!(fits(&ddt_bias) && fits(&da_log), "{op}: ∂dt_bias or ∂A_log shape");
    if rows == 0 {
        return Ok(());
    }
    let scale = q_scale(s);
    let mut b = d.stream.launch_builder(d.function("delta_inputs_backward"));
    b.arg(&mut *dconv).arg(&mut *dproj).arg(&gr.q).arg(&gr.k).arg(&gr.v).arg(&gr.g).arg(&gr.beta);
    b.arg(&x.g).arg(&x.beta);
    b.arg(&saved.q_rnorm).arg(&saved.k_rnorm).arg(&saved.conv).arg(&saved.proj).arg(dt_bias).arg(a_log);
    b.arg(&rows_i).arg(&hk).arg(&hv).arg(&dk).arg(&dv).arg(&p).arg(&scale);
    // SAFETY: block t < N reads row t of every head of the gradients and of g and β, row t of the rnorms, conv and
    // proj, the v_heads values of dt_bias and A_log, and writes row t of dconv and dproj's b and a columns of row t:
    // every length checked against N and the shape.
    unsafe { b.launch(per_row(rows)) }?;
    if ddt_bias.is_none() && da_log.is_none() {
        return Ok(());
    }
    let per = column_scratch(rows, s.v_heads);
    assert!(partials.len() >= 2 * per, "{op}: scratch of {}", partials.len());
    let ((cfg, chunks), chunk_rows) = (by_chunks(rows, 2 * s.v_heads), CHUNK_ROWS as i32);
    let a_col = (c + s.value_dim() + s.v_heads) as i32;
    let dproj = dproj.as_view();
    let mut b = d.stream.launch_builder(d.function("delta_decay_grads_partial"));
    b.arg(&mut *partials).arg(&dproj).arg(&gr.g).arg(&x.g).arg(&rows_i).arg(&hv).arg(&a_col).arg(&p);
    b.arg(&chunk_rows);
    // SAFETY: thread (e, chunk), e < 2·v_heads, reads its chunk's rows (< N) of dproj's a column e (inside rows of
    // proj_width) or of head e − v_heads of dg and g (v_heads·N values), and writes partials[chunk·v_heads + e] or
    // partials[(chunks + chunk)·v_heads + e − v_heads], below 2·chunks·v_heads = 2·per ≤ partials.len() (checked).
    unsafe { b.launch(cfg) }?;
    let parts = partials.as_view();
    if let Some(dt) = ddt_bias {
        reduce::add_chunk_sums(d, dt, &parts.slice(..per), chunks)?;
    }
    if let Some(dl) = da_log {
        reduce::add_chunk_sums(d, dl, &parts.slice(per..2 * per), chunks)?;
    }
    Ok(())
}

/// Checks the gated norm's buffers — o (v_heads, N, dv) head-major, proj N rows of proj_width, w (dv), rstd (N,
/// v_heads), y or dy (N, value_dim) — and returns [rows, v_heads, dv, z_col, proj_width] as ints.
fn norm_shape(op: &str, s: &DeltaNetShape, rows: usize, lens: [usize; 5]) -> [i32; 5] {
    let (hv, dv) = (s.v_heads, s.v_head_dim);
    let want = [hv * rows * dv, rows * s.proj_width(), dv, rows * hv, rows * s.value_dim()];
    assert_eq!(lens, want, "{op}: o, proj, w, rstd and y must hold {rows} rows of {hv} heads of {dv}");
    let v = [rows, hv, dv, s.conv_dim(), s.proj_width()];
    v.map(|x| i32::try_from(x).unwrap_or_else(|_| panic!("{op}: {x} exceeds the kernels' ints")))
}

/// y (N, value_dim) = w ⊙ (o / rms(o)) ⊙ silu(z) per row and value head, o head-major, z proj's columns after
/// conv_dim; 1/rms kept in `rstd` (N, v_heads).
#[allow(clippy::too_many_arguments)]
pub fn norm_forward(
    d: &Device,
    y: &mut CudaViewMut<f32>,
    rstd: &mut CudaViewMut<f32>,
    o: &CudaView<f32>,
    proj: &CudaView<f32>,
    w: &CudaView<f32>,
    rows: usize,
    s: &DeltaNetShape,
    eps: f32,
) -> Result<(), DriverError> {
    let op = "delta_norm_forward";
    let [rows_i, hv, dv, z_col, p] = norm_shape(op, s, rows, [o.len(), proj.len(), w.len(), rstd.len(), y.len()]);
    if rows == 0 {
        return Ok(());
    }
    let mut b = d.stream.launch_builder(d.function("delta_norm_forward"));
    b.arg(y).arg(rstd).arg(o).arg(proj).arg(w).arg(&rows_i).arg(&hv).arg(&dv).arg(&z_col).arg(&p).arg(&eps);
    // SAFETY: block t < N reads row t of every head of o, its z columns (conv_dim + value_dim ≤ proj_width) and w,
    // and writes row t of y and rstd: lengths checked.
    unsafe { b.launch(per_row(rows)) }.map(drop)
}

/// Backward of [`norm_forward`] from dy (N, value_dim): dproj's z columns and `d_o` (head-major) written; ∂w **+=**
/// when given, summed by chunks of (row, head) pairs in `partials` (`column_scratch(N·v_heads, dv)` values).
#[allow(clippy::too_many_arguments)]
pub fn norm_backward(
    d: &Device,
    dproj: &mut CudaViewMut<f32>,
    d_o: &mut CudaViewMut<f32>,
    dw: Option<&mut CudaViewMut<f32>>,
    dy: &CudaView<f32>,
    o: &CudaView<f32>,
    rstd: &CudaView<f32>,
    proj: &CudaView<f32>,
    w: &CudaView<f32>,
    rows: usize,
    s: &DeltaNetShape,
    partials: &mut CudaViewMut<f32>,
) -> Result<(), DriverError> {
    let op = "delta_norm_backward";
    let [rows_i, hv, dv, z_col, p] = norm_shape(op, s, rows, [o.len(), proj.len(), w.len(), rstd.len(), dy.len()]);
    assert!(dproj.len() == proj.len() && d_o.len() == o.len(), "{op}: dproj or d_o shape");
    if rows == 0 {
        return Ok(());
    }
    let mut b = d.stream.launch_builder(d.function("delta_norm_backward"));
    b.arg(&mut *dproj).arg(&mut *d_o).arg(dy).arg(o).arg(rstd).arg(proj).arg(w).arg(&rows_i).arg(&hv).arg(&dv);
    b.arg(&z_col).arg(&p);
    // SAFETY: block t < N reads what norm_forward's reads and row t of dy, and writes row t's z columns of dproj
    // and row t of every head of d_o: lengths checked.
    unsafe { b.launch(per_row(rows)) }?;
    let Some(dw) = dw else { return Ok(()) };
    assert_eq!(dw.len(), s.v_head_dim, "{op}: dw shape");
    let pairs = rows * s.v_heads;
    assert!(partials.len() >= column_scratch(pairs, s.v_head_dim), "{op}: scratch of {}", partials.len());
    let ((cfg, chunks), chunk_rows) = (by_chunks(pairs, s.v_head_dim), CHUNK_ROWS as i32);
    let mut b = d.stream.launch_builder(d.function("delta_norm_backward_dw"));
    b.arg(&mut *partials).arg(dy).arg(o).arg(rstd).arg(proj).arg(&rows_i).arg(&hv).arg(&dv).arg(&z_col).arg(&p);
    b.arg(&chunk_rows);
    // SAFETY: thread (j, chunk), j < dv, reads feature j of its chunk's (row, head) pairs (< N·v_heads) of dy, o and
    // proj's z columns and their rstd, and writes partials[chunk·dv + j] < column_scratch(N·v_heads, dv) ≤
    // partials.len() (checked).
    unsafe { b.launch(cfg) }?;
    reduce::add_chunk_sums(d, dw, &partials.as_view(), chunks)
}
