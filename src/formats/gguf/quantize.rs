//! Quantization of `f32` values into GGML block bytes: the inverse of [`crate::kernels::dequant`], for
//! writing GGUF files.
//!
//! Every routine reproduces a reference bit for bit (tests/gguf_quantize.rs checks it against
//! fixtures written by tests/fixtures/make_gguf_quantize_fixtures.py):
//! - F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: PyPI `gguf`'s `gguf.quants.quantize`, which equals
//!   llama.cpp's `quantize_row_*_ref`;
//! - Q4_K, Q5_K, Q6_K: llama.cpp's `quantize_row_q{4,5,6}_K_ref` (gguf-py has no K-quantizer).
//!
//! Matching bit for bit needs the reference's exact float program: every operation in f32, in the
//! C source's order and association (`w*l*l` is `(w*l)*l`), no fused multiply-add (Rust never
//! contracts), f16 conversions rounding to nearest even, and llama.cpp's `nearest_int` (round half
//! to even through the 1.5·2^23 trick) where the C code uses it, but C's truncating casts and
//! `roundf` (half away from zero) where it uses those.
//!
//! Inputs a block format cannot represent are errors instead of the references' silent
//! infinities: NaN or infinite values for the block types, finite values beyond the F16/BF16
//! range, and blocks whose f16 scale or min would overflow.

use half::f16;

use crate::kernels::dequant::GgmlType;

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// Why a row cannot be quantized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantizeError {
    #[error(
        "cannot quantize {len} values to {ty}: {ty} packs {block_size} values per block, so the \
         row length must be a multiple of {block_size} (export this tensor as F16, BF16 or F32, \
         or pick a type whose block size divides the row)"
    )]
    RaggedLength { ty: GgmlType, len: usize, block_size: usize },
    #[error(
        "value {index} is {value}: a {ty} block cannot hold NaN or infinity (fix the weights, or \
         export this tensor as F32, F16 or BF16, which keep them)"
    )]
    NonFinite { ty: GgmlType, index: usize, value: f32 },
    #[error(
        "value {index} is {value}, beyond the largest finite {ty} ({max:e}); it would become \
         infinite (export this tensor as F32{alt})"
    )]
    OutOfRange { ty: GgmlType, index: usize, value: f32, max: f32, alt: &'static str },
    #[error(
        "the {ty} block holding values {start}..{end} needs a scale or min beyond the f16 range \
         (largest |value| {max_abs:e}); export this tensor as F32 or BF16"
    )]
    ScaleOverflow { ty: GgmlType, start: usize, end: usize, max_abs: f32 },
}

/// Quantizes `values` (one row, or several rows laid end to end) to `ty`'s block bytes.
/// `values.len()` must be a multiple of `ty.block_size()`.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, QuantizeError> {
    let bs = ty.block_size();
    if !values.len().is_multiple_of(bs) {
        return Err(QuantizeError::RaggedLength { ty, len: values.len(), block_size: bs });
    }
    let block: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlType::F16 => return quant_f16(values),
        GgmlType::BF16 => return quant_bf16(values),
        GgmlType::Q4_0 => quant_q4_0,
        GgmlType::Q4_1 => quant_q4_1,
        GgmlType::Q5_0 => quant_q5_0,
        GgmlType::Q5_1 => quant_q5_1,
        GgmlType::Q8_0 => quant_q8_0,
        GgmlType::Q4_K => quant_q4_k,
        GgmlType::Q5_K => quant_q5_k,
        GgmlType::Q6_K => quant_q6_k,
    };
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(QuantizeError::NonFinite { ty, index, value: values[index] });
    }
    let ts = ty.type_size();
    let mut out = vec![0u8; values.len() / bs * ts];
    for (i, (x, b)) in values.chunks_exact(bs).zip(out.chunks_exact_mut(ts)).enumerate() {
        block(x, b);
        if f16_fields(ty).iter().any(|&o| f16_le(b, o).is_infinite()) {
            let max_abs = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            return Err(QuantizeError::ScaleOverflow { ty, start: i * bs, end: (i + 1) * bs, max_abs });
        }
    }
    Ok(out)
}

/// Byte offsets of the f16 scale/min fields in one block (the layouts are documented on the
/// dequantizers in [`crate::kernels::dequant`]).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
    }
}

fn f16_le(b: &[u8], o: usize) -> f16 {
    f16::from_bits(u16::from_le_bytes([b[o], b[o + 1]]))
}

fn put_f16(b: &mut [u8], o: usize, v: f32) {
    b[o..o + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// F16: IEEE half, rounded to nearest even (numpy's `astype(float16)`). Infinities are kept, and
/// NaNs as numpy keeps them: the top 10 payload bits, not made quiet (`half` would set the quiet
/// bit), and bumped to 1 if they are all zero. A finite value that would round to infinity is an
/// error.
fn quant_f16(values: &[f32]) -> Result<Vec<u8>, QuantizeError> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for (index, &v) in values.iter().enumerate() {
        let h = if v.is_nan() {
            let bits = v.to_bits();
            let payload = (((bits & 0x007f_ffff) >> 13) as u16).max(1);
            f16::from_bits(((bits >> 16) as u16 & 0x8000) | 0x7c00 | payload)
        } else {
            f16::from_f32(v)
        };
        if h.is_infinite() && v.is_finite() {
            let max = f16::MAX.to_f32();
            return Err(QuantizeError::OutOfRange { ty: GgmlType::F16, index, value: v, max, alt: " or BF16" });
        }
        out.extend_from_slice(&h.to_bits().to_le_bytes());
    }
    Ok(out)
}

/// BF16: the top half of the f32, rounded to nearest even; NaNs are made quiet first
/// (gguf-py's `BF16.quantize_blocks` = ggml's `ggml_compute_fp32_to_bf16`).
fn quant_bf16(values: &[f32]) -> Result<Vec<u8>, QuantizeError> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for (index, &v) in values.iter().enumerate() {
        let mut n = v.to_bits();
        if n & 0x7fff_ffff > 0x7f80_0000 {
            n = (n & 0xffff_0000) | (64 << 16);
        }
        // u64 so that rounding the largest bit patterns cannot wrap (as gguf-py does)
        let h = ((n as u64 + 0x7fff + ((n as u64 >> 16) & 1)) >> 16) as u16;
        if h & 0x7fff == 0x7f80 && v.is_finite() {
            let max = f32::from_bits(0x7f7f_0000);
            return Err(QuantizeError::OutOfRange { ty: GgmlType::BF16, index, value: v, max, alt: "" });
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    Ok(out)
}

/// The value of largest magnitude (the first one on ties), signed.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (if v < lo { v } else { lo }, if v > hi { v } else { hi }))
}

/// `1/d`, or 0 for an all-zero block.
fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// Symmetric 4/5-bit blocks (Q4_0, Q5_0): `d = max / -half` so the value of largest magnitude
/// maps to level 0, then `q = trunc(x/d + half + 0.5)` clamped to the top level.
fn symmetric_levels(x: &[f32], b: &mut [u8], half: f32, top: i32) -> [u8; 32] {
    let d = signed_absmax(x) / -half;
    let id = inverse(d);
    put_f16(b, 0, d);
    std::array::from_fn(|j| ((x[j] * id + (half + 0.5)) as i32).min(top) as u8)
}

/// Affine 4/5-bit blocks (Q4_1, Q5_1): `d = (max - min) / top`, `m = min`,
/// `q = trunc((x - min)/d + 0.5)` clamped to the top level.
fn affine_levels(x: &[f32], b: &mut [u8], top: i32) -> [u8; 32] {
    let (min, max) = min_max(x);
    let d = (max - min) / top as f32;
    let id = inverse(d);
    put_f16(b, 0, d);
    put_f16(b, 2, min);
    std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as i32).min(top) as u8)
}

/// Value j (< 16) in the low nibble of byte j, value j + 16 in its high nibble.
fn pack_nibbles(q: &[u8; 32], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
    }
}

/// Bit j of the little-endian u32 = the 5th bit of value j.
fn pack_fifth_bits(q: &[u8; 32], qh: &mut [u8]) {
    let bits = q.iter().enumerate().fold(0u32, |acc, (j, &v)| acc | (((v >> 4) & 1) as u32) << j);
    qh.copy_from_slice(&bits.to_le_bytes());
}

fn quant_q4_0(x: &[f32], b: &mut [u8]) {
    let q = symmetric_levels(x, b, 8.0, 15);
    pack_nibbles(&q, &mut b[2..18]);
}

fn quant_q5_0(x: &[f32], b: &mut [u8]) {
    let q = symmetric_levels(x, b, 16.0, 31);
    pack_fifth_bits(&q, &mut b[2..6]);
    pack_nibbles(&q, &mut b[6..22]);
}

fn quant_q4_1(x: &[f32], b: &mut [u8]) {
    let q = affine_levels(x, b, 15);
    pack_nibbles(&q, &mut b[4..20]);
}

fn quant_q5_1(x: &[f32], b: &mut [u8]) {
    let q = affine_levels(x, b, 31);
    pack_fifth_bits(&q, &mut b[4..8]);
    pack_nibbles(&q, &mut b[8..24]);
}

/// Q8_0: `d = amax / 127`, `q = roundf(x / d)` (half away from zero, as C's `roundf`).
fn quant_q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    put_f16(b, 0, d);
    for (o, &v) in b[2..34].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
}

/// llama.cpp's `nearest_int`: round half to even by adding 1.5·2^23 and reading the mantissa.
/// Exact for |v| < 2^22, which every caller guarantees (levels are at most 63 in magnitude).
fn nearest_int(v: f32) -> i32 {
    debug_assert!(v.abs() <= 4_194_303.0, "nearest_int({v})");
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// llama.cpp's `make_qkx2_quants` with `use_mad = false`: the scale and (negated) min of an
/// affine sub-block with levels 0..=nmax, refined by a weighted least-squares search over
/// `nstep + 1` trial inverse scales. Writes the levels to `levels`; returns `(scale, -min)`.
fn make_qkx2_quants(nmax: i32, x: &[f32], weights: &[f32], levels: &mut [u8], rmin: f32, nstep: i32) -> (f32, f32) {
    const RDELTA: f32 = 0.1;
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        levels[i] = level(iscale, x[i], min) as u8;
        let diff = scale * levels[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + RDELTA * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = level(iscale, x[i], min);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                levels.copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The shared first half of Q4_K and Q5_K (`quantize_row_q{4,5}_K_ref`): per 32-value sub-block
/// an affine scale and min from [`make_qkx2_quants`], quantized to 6 bits against the
/// super-block's f16 `d` and `dmin`, then every value re-quantized against the rounded scales.
/// Writes `d`, `dmin` and the 12 packed scale bytes to `b[0..16]`; returns the levels 0..=nmax.
fn k_affine_levels(x: &[f32], b: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        let lv = &mut levels[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &weights, lv, rmin, nstep);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // C stores nearest_int into a uint8_t (wrapping) before clamping to 63
    let sc: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let m: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    put_f16(b, 0, max_scale / 63.0);
    put_f16(b, 2, max_min / 63.0);
    // the inverse of dequant's scale_min_k4 layout
    for j in 0..4 {
        b[4 + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        b[8 + j] = m[j] | ((m[j + 4] >> 4) << 6);
        b[12 + j] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
    let d_all = f16_le(b, 0).to_f32();
    let dmin_all = f16_le(b, 2).to_f32();
    for j in 0..8 {
        let d = d_all * sc[j] as f32;
        // a zero scale keeps make_qkx2_quants' levels, as the reference does
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m[j] as f32;
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    levels
}

/// Q4_K: see [`k_affine_levels`]; the 4-bit levels are packed as the Q4_K dequantizer reads them.
fn quant_q4_k(x: &[f32], b: &mut [u8]) {
    let l = k_affine_levels(x, b, 15, -1.0, 20);
    for c in 0..4 {
        for i in 0..32 {
            b[16 + 32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

/// Q5_K: see [`k_affine_levels`]; low nibbles as Q4_K, the 5th bits in `qh`.
fn quant_q5_k(x: &[f32], b: &mut [u8]) {
    let l = k_affine_levels(x, b, 31, -0.5, 15);
    b[16..48].fill(0);
    for c in 0..4 {
        for i in 0..32 {
            let (l1, l2) = (l[64 * c + i], l[64 * c + 32 + i]);
            b[16 + i] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
            b[48 + 32 * c + i] = (l1 & 0x0F) | ((l2 & 0x0F) << 4);
        }
    }
}

/// llama.cpp's `make_qx_quants` with `rmse_type = 1` and no importance weights (the Q6_K case):
/// a symmetric scale for levels -nmax..nmax-1, refined by trying 18 nearby inverse scales and
/// keeping the best `x²`-weighted least-squares fit. Writes `level + nmax` to `levels`.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let (w, l) = (v * v, level(iscale, v) as f32);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut set_levels = |iscale: f32| {
        for (o, &v) in levels.iter_mut().zip(x) {
            *o = (level(iscale, v) + nmax) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    set_levels(iscale);
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            set_levels(iscale);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q6_K (`quantize_row_q6_K_ref`): a symmetric scale per 16-value sub-block, quantized to i8
/// against the f16 super-block scale `d` (stored last), then the values re-quantized to 6 bits.
fn quant_q6_k(x: &[f32], b: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        scales[ib] = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut levels[16 * ib..16 * ib + 16]);
        if scales[ib].abs() > max_abs_scale {
            max_abs_scale = scales[ib].abs();
            max_scale = scales[ib];
        }
    }
    if max_abs_scale < 1e-15 {
        b.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(b, 208, 1.0 / iscale);
    let d_all = f16_le(b, 208).to_f32();
    for j in 0..16 {
        let sc = nearest_int(iscale * scales[j]).min(127) as i8;
        b[192 + j] = sc as u8;
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            levels[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    // the layout dequant_q6_k reads: per half h, ql holds values r and r + 64 as nibbles,
    // qh holds the top 2 bits of values r, r + 32, r + 64, r + 96
    for h in 0..2 {
        let l = &levels[128 * h..128 * h + 128];
        for i in 0..32 {
            b[64 * h + i] = (l[i] & 0x0F) | ((l[i + 64] & 0x0F) << 4);
            b[64 * h + 32 + i] = (l[i + 32] & 0x0F) | ((l[i + 96] & 0x0F) << 4);
            b[128 + 32 * h + i] =
                (l[i] >> 4) | ((l[i + 32] >> 4) << 2) | ((l[i + 64] >> 4) << 4) | ((l[i + 96] >> 4) << 6);
        }
    }
}
