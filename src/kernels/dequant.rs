//! GGML tensor types and their dequantization to `f32`.
//!
//! Every routine here reproduces llama.cpp's `dequantize_row_*` (and PyPI `gguf`'s
//! `gguf.quants.dequantize`, which is the oracle of the tests) bit for bit. That needs:
//! - the f16 scales/mins converted to f32 first (exact), then every product formed in f32;
//! - the same association: `(d * q) + m` for Q4_1/Q5_1, and for K-quants the per-sub-block
//!   products `d * sc` and `dmin * m` formed first, then `(d*sc) * q - (dmin*m)`;
//! - no fused multiply-add (a fused `mul_add` rounds once and differs in the last bit).
//!
//! All block layouts are little-endian. Blocks are independent, so large tensors are split into
//! chunks of whole blocks and processed with rayon; the result does not depend on the split.

use half::f16;
use rayon::prelude::*;

/// Elements per K-quant super-block.
pub(super) const QK_K: usize = 256;

/// Tensors with at least this many blocks are dequantized in parallel.
const PAR_MIN_BLOCKS: usize = 4096;
/// Blocks per rayon work item.
const PAR_CHUNK_BLOCKS: usize = 1024;

/// The GGML tensor types condlm can read, with their GGML type ids.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    BF16,
}

impl GgmlType {
    /// Every supported type, in type-id order.
    pub const ALL: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
    ];

    /// The type for a GGML type id, or `None` for an id condlm does not support.
    pub const fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// The GGML type id (`enum ggml_type`).
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 2 + 16,
            GgmlType::Q4_1 => 2 + 2 + 16,
            GgmlType::Q5_0 => 2 + 4 + 16,
            GgmlType::Q5_1 => 2 + 2 + 4 + 16,
            GgmlType::Q8_0 => 2 + 32,
            GgmlType::Q4_K => 2 + 2 + 12 + QK_K / 2,
            GgmlType::Q5_K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
            GgmlType::Q6_K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// llama.cpp's name for the type, e.g. `"Q4_K"`.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }

    /// The type with llama.cpp's name `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Bytes needed for `n_elements` elements, or `None` when `n_elements` is not a whole
    /// number of blocks or the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(self.type_size() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A mismatch between the buffers given to [`dequantize`] and the type's block geometry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    #[error(
        "{ty} data is {len} bytes, not a whole number of {type_size}-byte blocks \
         (the tensor data is truncated or its type is wrong)"
    )]
    RaggedBytes { ty: GgmlType, len: usize, type_size: usize },
    #[error("{ty} data holds {n_blocks} blocks = {expected} values, but the output has room for {got}")]
    OutputLength { ty: GgmlType, n_blocks: usize, expected: usize, got: usize },
}

/// Dequantizes `bytes` (a whole number of `ty` blocks) into `out`, which must hold exactly
/// `n_blocks * ty.block_size()` values. Bit-exact with llama.cpp / `gguf.quants.dequantize`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let ts = ty.type_size();
    let bs = ty.block_size();
    if !bytes.len().is_multiple_of(ts) {
        return Err(DequantError::RaggedBytes { ty, len: bytes.len(), type_size: ts });
    }
    let n_blocks = bytes.len() / ts;
    let expected = n_blocks.checked_mul(bs);
    if expected != Some(out.len()) {
        return Err(DequantError::OutputLength {
            ty,
            n_blocks,
            expected: expected.unwrap_or(usize::MAX),
            got: out.len(),
        });
    }
    let f = block_routine(ty);
    // Unquantized types have 1-element "blocks": chunk them by the same element count as a
    // 256-element super-block so the parallel split stays coarse.
    let blocks_per_chunk = if bs == 1 { PAR_CHUNK_BLOCKS * QK_K } else { PAR_CHUNK_BLOCKS };
    let par_min = if bs == 1 { PAR_MIN_BLOCKS * QK_K } else { PAR_MIN_BLOCKS };
    if n_blocks >= par_min {
        bytes
            .par_chunks(blocks_per_chunk * ts)
            .zip(out.par_chunks_mut(blocks_per_chunk * bs))
            .for_each(|(b, o)| f(b, o));
    } else {
        f(bytes, out);
    }
    Ok(())
}

/// Convenience wrapper: dequantizes `bytes` into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, DequantError> {
    let ts = ty.type_size();
    if !bytes.len().is_multiple_of(ts) {
        return Err(DequantError::RaggedBytes { ty, len: bytes.len(), type_size: ts });
    }
    // The output length is bounded by the input length (at most 2 values per byte), so this
    // allocation is safe for any input.
    let mut out = vec![0.0f32; bytes.len() / ts * ty.block_size()];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

#[inline]
pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// F32: plain little-endian floats (bits copied unchanged, NaN payloads included).
fn dequant_f32(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(4).zip(out.iter_mut()) {
        *o = f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    }
}

/// F16: IEEE half precision, widened exactly.
fn dequant_f16(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
        *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

/// BF16: the top 16 bits of an f32.
fn dequant_bf16(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
        *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

/// Q4_0, 18 bytes / 32 values: `d: f16`, `qs: [u8; 16]`.
/// Value j (< 16) is the low nibble of qs[j], value j + 16 its high nibble; x = d * (q - 8).
fn dequant_q4_0(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qs = &b[2..18];
        for j in 0..16 {
            o[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
            o[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1, 20 bytes / 32 values: `d: f16`, `m: f16`, `qs: [u8; 16]`.
/// Low nibbles are values 0..16, high nibbles 16..32; x = (d * q) + m.
fn dequant_q4_1(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qs = &b[4..20];
        for j in 0..16 {
            o[j] = d * (qs[j] & 0x0F) as f32 + m;
            o[j + 16] = d * (qs[j] >> 4) as f32 + m;
        }
    }
}

/// Q5_0, 22 bytes / 32 values: `d: f16`, `qh: u32` (bit j = 5th bit of value j), `qs: [u8; 16]`
/// (nibbles as Q4_0). x = d * (q - 16).
fn dequant_q5_0(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        for j in 0..16 {
            let h0 = ((qh >> j) & 1) as i32;
            let h1 = ((qh >> (j + 16)) & 1) as i32;
            o[j] = d * (((qs[j] & 0x0F) as i32 | (h0 << 4)) - 16) as f32;
            o[j + 16] = d * (((qs[j] >> 4) as i32 | (h1 << 4)) - 16) as f32;
        }
    }
}

/// Q5_1, 24 bytes / 32 values: `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]`
/// (bits as Q5_0). x = (d * q) + m.
fn dequant_q5_1(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(24).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = &b[8..24];
        for j in 0..16 {
            let h0 = (qh >> j) & 1;
            let h1 = (qh >> (j + 16)) & 1;
            o[j] = d * ((qs[j] & 0x0F) as u32 | (h0 << 4)) as f32 + m;
            o[j + 16] = d * ((qs[j] >> 4) as u32 | (h1 << 4)) as f32 + m;
        }
    }
}

/// Q8_0, 34 bytes / 32 values: `d: f16`, `qs: [i8; 32]`; x = d * q.
fn dequant_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(b, 0);
        for (x, &q) in o.iter_mut().zip(&b[2..34]) {
            *x = d * (q as i8) as f32;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block, packed in 12 bytes
/// (llama.cpp `get_scale_min_k4`):
/// ```text
///  bytes 0..4:  bits 0-5 = scale[0..4], bits 6-7 = high 2 bits of scale[4..8]
///  bytes 4..8:  bits 0-5 = min[0..4],   bits 6-7 = high 2 bits of min[4..8]
///  bytes 8..12: bits 0-3 = low 4 bits of scale[4..8], bits 4-7 = low 4 bits of min[4..8]
/// ```
#[inline]
pub(super) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K, 144 bytes / 256 values: `d: f16`, `dmin: f16`, `scales: [u8; 12]` (8 × 6-bit scale and
/// min, see [`scale_min_k4`]), `qs: [u8; 128]`. Each 32-byte chunk c of qs holds sub-block 2c in
/// its low nibbles and 2c + 1 in its high nibbles. x = (d * sc) * q - (dmin * m).
fn dequant_q4_k(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for c in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * c, scales);
            let (sc1, m1) = scale_min_k4(2 * c + 1, scales);
            let (d0, min0) = (d * sc0 as f32, dmin * m0 as f32);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let q = &qs[32 * c..32 * c + 32];
            let y = &mut o[64 * c..64 * c + 64];
            for l in 0..32 {
                y[l] = d0 * (q[l] & 0x0F) as f32 - min0;
                y[l + 32] = d1 * (q[l] >> 4) as f32 - min1;
            }
        }
    }
}

/// Q5_K, 176 bytes / 256 values: `d: f16`, `dmin: f16`, `scales: [u8; 12]` (as Q4_K),
/// `qh: [u8; 32]` (bit s of qh[l] = 5th bit of value l of sub-block s), `qs: [u8; 128]`
/// (nibbles as Q4_K). x = (d * sc) * q - (dmin * m).
fn dequant_q5_k(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for c in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * c, scales);
            let (sc1, m1) = scale_min_k4(2 * c + 1, scales);
            let (d0, min0) = (d * sc0 as f32, dmin * m0 as f32);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let q = &qs[32 * c..32 * c + 32];
            let y = &mut o[64 * c..64 * c + 64];
            for l in 0..32 {
                let h0 = (qh[l] >> (2 * c)) & 1;
                let h1 = (qh[l] >> (2 * c + 1)) & 1;
                y[l] = d0 * ((q[l] & 0x0F) | (h0 << 4)) as f32 - min0;
                y[l + 32] = d1 * ((q[l] >> 4) | (h1 << 4)) as f32 - min1;
            }
        }
    }
}

/// Q6_K, 210 bytes / 256 values: `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`
/// (note: d comes last). Two halves of 128 values; in half h, value r (0..128) has low 4 bits
/// `ql[64h + r % 64] >> (4 * (r / 64))` and high 2 bits `qh[32h + r % 32] >> (2 * (r / 32))`.
/// Sub-blocks of 16 values each have their own scale. x = (d * scale) * (q - 32).
fn dequant_q6_k(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        for h in 0..2 {
            let ql: &[u8; 64] = b[64 * h..64 * h + 64].try_into().expect("64 bytes");
            let qh: &[u8; 32] = b[128 + 32 * h..128 + 32 * h + 32].try_into().expect("32 bytes");
            let sc = &b[192 + 8 * h..192 + 8 * h + 8];
            let y: &mut [f32; 128] = (&mut o[128 * h..128 * h + 128]).try_into().expect("128 values");
            // value r of the half: low 4 bits from ql[r % 64] (nibble r / 64), high 2 bits from qh[r % 32]
            // (pair r / 32), scale sc[r / 16]; the four values l, l + 32, l + 64, l + 96 share ql and qh bytes.
            for g in 0..2 {
                let ds: [f32; 4] = std::array::from_fn(|k| d * sc[g + 2 * k] as i8 as f32);
                for l in 16 * g..16 * g + 16 {
                    let q = |lo: u8, hi: u8| ((lo & 0x0F) | ((hi & 0x03) << 4)) as i32 - 32;
                    y[l] = ds[0] * q(ql[l], qh[l]) as f32;
                    y[l + 32] = ds[1] * q(ql[l + 32], qh[l] >> 2) as f32;
                    y[l + 64] = ds[2] * q(ql[l] >> 4, qh[l] >> 4) as f32;
                    y[l + 96] = ds[3] * q(ql[l + 32] >> 4, qh[l] >> 6) as f32;
                }
            }
        }
    }
}

/// The block routine of `ty` for any CPU.
fn portable(ty: GgmlType) -> fn(&[u8], &mut [f32]) {
    match ty {
        GgmlType::F32 => dequant_f32,
        GgmlType::F16 => dequant_f16,
        GgmlType::BF16 => dequant_bf16,
        GgmlType::Q4_0 => dequant_q4_0,
        GgmlType::Q4_1 => dequant_q4_1,
        GgmlType::Q5_0 => dequant_q5_0,
        GgmlType::Q5_1 => dequant_q5_1,
        GgmlType::Q8_0 => dequant_q8_0,
        GgmlType::Q4_K => dequant_q4_k,
        GgmlType::Q5_K => dequant_q5_k,
        GgmlType::Q6_K => dequant_q6_k,
    }
}

/// The block routine of `ty`, the block-quantized ones compiled for AVX2 when the CPU has it: the same operations
/// in the same order (Rust never fuses a multiply and an add), so the same bits, in vector registers.
fn block_routine(ty: GgmlType) -> fn(&[u8], &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        macro_rules! wide {
            ($f:ident) => {{
                #[target_feature(enable = "avx2")]
                unsafe fn wide(b: &[u8], o: &mut [f32]) {
                    $f(b, o)
                }
                fn run(b: &[u8], o: &mut [f32]) {
                    // SAFETY: chosen only when the CPU reports AVX2 (above).
                    unsafe { wide(b, o) }
                }
                run
            }};
        }
        match ty {
            GgmlType::Q4_0 => return wide!(dequant_q4_0),
            GgmlType::Q4_1 => return wide!(dequant_q4_1),
            GgmlType::Q5_0 => return wide!(dequant_q5_0),
            GgmlType::Q5_1 => return wide!(dequant_q5_1),
            GgmlType::Q8_0 => return wide!(dequant_q8_0),
            GgmlType::Q4_K => return wide!(dequant_q4_k),
            GgmlType::Q5_K => return wide!(dequant_q5_k),
            GgmlType::Q6_K => return wide!(dequant_q6_k),
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {}
        }
    }
    portable(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_and_portable_routines_give_the_same_bits() {
        // Blocks of pseudo-random bytes with small finite f16 scales (0x2000..0x2fff): every value is finite.
        for ty in GgmlType::ALL.into_iter().filter(|t| t.block_size() > 1) {
            let n_blocks = 37;
            let mut bytes: Vec<u8> =
                (0..n_blocks * ty.type_size()).map(|i| ((i * 2654435761usize) >> 13) as u8).collect();
            for blk in bytes.chunks_exact_mut(ty.type_size()) {
                for off in f16_offsets(ty) {
                    blk[off] = 0x00;
                    blk[off + 1] = 0x20 | (blk[off + 1] & 0x0F);
                }
            }
            let mut wide = vec![0.0; n_blocks * ty.block_size()];
            block_routine(ty)(&bytes, &mut wide);
            let mut plain = vec![0.0; wide.len()];
            portable(ty)(&bytes, &mut plain);
            assert!(wide.iter().all(|v| v.is_finite()), "{ty}");
            assert!(wide.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty}");
        }
    }

    /// Byte offsets of the f16 fields (scales, mins) in a block of `ty`.
    fn f16_offsets(ty: GgmlType) -> Vec<usize> {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => vec![0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => vec![0, 2],
            GgmlType::Q6_K => vec![208],
            _ => vec![],
        }
    }

    #[test]
    fn ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        for id in [4, 5, 9, 10, 11, 15, 16, 29, 31, 1000, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None);
        }
    }

    #[test]
    fn sizes_match_ggml() {
        let expect = [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::BF16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q5_0, 32, 22),
            (GgmlType::Q5_1, 32, 24),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q5_K, 256, 176),
            (GgmlType::Q6_K, 256, 210),
        ];
        for (t, bs, ts) in expect {
            assert_eq!((t.block_size(), t.type_size()), (bs, ts), "{t}");
        }
    }

    #[test]
    fn length_checks() {
        let mut out = vec![0.0; 32];
        assert!(matches!(dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out), Err(DequantError::RaggedBytes { .. })));
        assert!(matches!(dequantize(GgmlType::Q4_0, &[0u8; 36], &mut out), Err(DequantError::OutputLength { .. })));
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out).is_ok());
        assert!(dequantize(GgmlType::F32, &[], &mut []).is_ok());
    }

    #[test]
    fn q4_0_hand_block() {
        // d = 0.5, qs[j] = low j | high (15 - j)
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        for j in 0..16 {
            b[2 + j] = (j as u8) | (((15 - j) as u8) << 4);
        }
        let out = dequantize_to_vec(GgmlType::Q4_0, &b).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 0.5 * ((15 - j) as f32 - 8.0));
        }
    }

    #[test]
    fn q4_1_nibble_order() {
        // low nibbles are values 0..16, high nibbles 16..32
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-2.0).to_bits().to_le_bytes());
        for j in 0..16 {
            b[4 + j] = 0x31;
        }
        let out = dequantize_to_vec(GgmlType::Q4_1, &b).unwrap();
        assert!(out[..16].iter().all(|&x| x == -1.0));
        assert!(out[16..].iter().all(|&x| x == 1.0));
    }

    #[test]
    fn k_scale_unpacking() {
        // scale[j] = j + 1 + 40 * (j >= 4), min[j] = 63 - j: exercises the high bits.
        let sc: Vec<u8> = (0..8).map(|j| (j + 1 + if j >= 4 { 40 } else { 0 }) as u8).collect();
        let mn: Vec<u8> = (0..8).map(|j| 63 - j as u8).collect();
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], mn[j]), "sub-block {j}");
        }
    }

    #[test]
    fn parallel_equals_serial() {
        // Enough Q8_0 blocks to take the parallel path; compare with per-block results.
        let n_blocks = PAR_MIN_BLOCKS + 77;
        let mut bytes = vec![0u8; n_blocks * 34];
        let mut state = 0x1234_5678_9abc_def0u64;
        for (i, x) in bytes.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *x = (state >> 24) as u8;
            if i % 34 == 1 {
                *x &= 0x3b; // keep the f16 scale finite
            }
        }
        let par = dequantize_to_vec(GgmlType::Q8_0, &bytes).unwrap();
        let mut ser = vec![0.0f32; n_blocks * 32];
        dequant_q8_0(&bytes, &mut ser);
        assert!(par.iter().zip(&ser).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
