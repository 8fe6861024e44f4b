//! GGML quantization against fixtures written by tests/fixtures/make_gguf_quantize_fixtures.py
//! (oracles: PyPI `gguf` for F16/BF16 and the 32-value block types, llama.cpp's
//! `quantize_row_*_ref` for the K-quants), and round trips through the dequantizer.

use std::path::{Path, PathBuf};

use condlm::formats::gguf::quantize::{QuantizeError, quantize};
use condlm::kernels::dequant::{GgmlType, dequantize_to_vec};

/// Values per fixture row (rows.f32 holds ROWS of them, one distribution each).
const ROW_LEN: usize = 512;
const ROWS: usize = 16;

/// The types the fixtures cover, i.e. every type but F32 (whose "quantization" is a byte copy).
const TYPES: [GgmlType; 10] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_quantize")
}

fn read(name: &str) -> Vec<u8> {
    let p = fixtures().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn rows() -> Vec<f32> {
    let x = f32s(&read("rows.f32"));
    assert_eq!(x.len(), ROWS * ROW_LEN, "rows.f32 size");
    x
}

/// Compares block by block so a failure names the row, block and byte.
fn assert_blocks_eq(ty: GgmlType, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{ty}: output length");
    let ts = ty.type_size();
    let blocks_per_row = ROW_LEN / ty.block_size();
    for (i, (g, w)) in got.chunks(ts).zip(want.chunks(ts)).enumerate() {
        if let Some(b) = (0..ts).find(|&b| g[b] != w[b]) {
            panic!(
                "{ty}: row {} block {} differs at byte {b}: got {:02x?}, want {:02x?}",
                i / blocks_per_row,
                i % blocks_per_row,
                g,
                w
            );
        }
    }
}

#[test]
fn every_type_is_bit_exact() {
    let x = rows();
    for ty in TYPES {
        let got = quantize(ty, &x).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_blocks_eq(ty, &got, &read(&format!("{}.bin", ty.name())));
    }
}

#[test]
fn rows_quantize_independently() {
    // Quantizing row by row gives the same bytes as all rows at once: blocks share no state.
    let x = rows();
    for ty in [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let whole = quantize(ty, &x).unwrap();
        let by_row: Vec<u8> = x.chunks(ROW_LEN).flat_map(|r| quantize(ty, r).unwrap()).collect();
        assert_eq!(whole, by_row, "{ty}");
    }
}

#[test]
fn special_floats_match_gguf_py_or_fail_loudly() {
    // NaN payloads, infinities, zeros, subnormals and rounding ties. gguf-py turns a finite value
    // beyond the F16 range into infinity; condlm must refuse exactly those.
    let x = f32s(&read("special.f32"));
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let want = read(&format!("special.{}.bin", ty.name()));
        let mut refused = 0;
        for (i, &v) in x.iter().enumerate() {
            let w = u16::from_le_bytes([want[2 * i], want[2 * i + 1]]);
            let reference_overflows = v.is_finite() && (w & 0x7fff == 0x7c00 || w & 0x7fff == 0x7f80);
            match quantize(ty, &[v]) {
                Ok(got) => {
                    assert!(!reference_overflows, "{ty}: {v:e} ({:#010x}) should be refused", v.to_bits());
                    assert_eq!(got, w.to_le_bytes(), "{ty}: value {i} = {v:e} ({:#010x})", v.to_bits());
                }
                Err(e) => {
                    assert!(reference_overflows, "{ty}: {v:e}: unexpected error {e}");
                    assert!(matches!(e, QuantizeError::OutOfRange { .. }), "{e}");
                    refused += 1;
                }
            }
        }
        // F16 refuses the one value above 65520 in the set; BF16 refuses none
        assert_eq!(refused, usize::from(ty == GgmlType::F16), "{ty}");
    }
}

/// Rows of rows.f32 whose block scales stay in the normal f16 range (the others are all
/// zeros, 1e-30 or 1e-6 scale, where the f16 scales underflow by design).
const WELL_SCALED_ROWS: [usize; 9] = [0, 1, 5, 6, 7, 8, 13, 14, 15];

#[test]
fn round_trip_error_is_bounded() {
    let x = rows();
    for ty in TYPES {
        let back = dequantize_to_vec(ty, &quantize(ty, &x).unwrap()).unwrap();
        for r in WELL_SCALED_ROWS {
            let (xr, br) = (&x[r * ROW_LEN..][..ROW_LEN], &back[r * ROW_LEN..][..ROW_LEN]);
            if ty.block_size() == 1 || ty.block_size() == 32 {
                check_block_bound(ty, r, xr, br);
            } else {
                check_rms_bound(ty, r, xr, br);
            }
        }
    }
}

/// Legacy types: every value is within one quantization step of its block (half a step where the
/// reference rounds to nearest), plus the f16 rounding of the scale and min.
fn check_block_bound(ty: GgmlType, row: usize, x: &[f32], back: &[f32]) {
    for (b, (xb, bb)) in x.chunks(ty.block_size()).zip(back.chunks(ty.block_size())).enumerate() {
        let max = xb.iter().cloned().fold(f32::MIN, f32::max);
        let min = xb.iter().cloned().fold(f32::MAX, f32::min);
        let amax = max.abs().max(min.abs());
        let bound = match ty {
            GgmlType::F16 => amax * 2f32.powi(-11),
            GgmlType::BF16 => amax * 2f32.powi(-8),
            GgmlType::Q8_0 => amax / 127.0 * 0.5,
            GgmlType::Q4_0 => amax / 8.0,
            GgmlType::Q5_0 => amax / 16.0,
            GgmlType::Q4_1 => (max - min) / 15.0 * 0.5,
            GgmlType::Q5_1 => (max - min) / 31.0 * 0.5,
            _ => unreachable!("{ty}"),
        } + (max.abs() + min.abs()) * 2f32.powi(-10);
        for (i, (&v, &d)) in xb.iter().zip(bb).enumerate() {
            assert!(
                (v - d).abs() <= bound,
                "{ty}: row {row} block {b} value {i}: {v} came back as {d} (bound {bound})"
            );
        }
    }
}

/// K-quants: the root-mean-square error of each super-block, relative to its RMS value.
fn check_rms_bound(ty: GgmlType, row: usize, x: &[f32], back: &[f32]) {
    let limit = match ty {
        GgmlType::Q4_K => 0.15,
        GgmlType::Q5_K => 0.08,
        GgmlType::Q6_K => 0.04,
        _ => unreachable!("{ty}"),
    };
    for (b, (xb, bb)) in x.chunks(256).zip(back.chunks(256)).enumerate() {
        let err: f32 = xb.iter().zip(bb).map(|(v, d)| (v - d) * (v - d)).sum::<f32>().sqrt();
        let norm: f32 = xb.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(err <= limit * norm, "{ty}: row {row} super-block {b}: relative RMS error {}", err / norm);
    }
}

#[test]
fn f32_is_a_byte_copy() {
    let x = rows();
    let q = quantize(GgmlType::F32, &x).unwrap();
    let back = dequantize_to_vec(GgmlType::F32, &q).unwrap();
    assert!(x.iter().zip(&back).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(quantize(GgmlType::Q4_K, &[]).unwrap(), Vec::<u8>::new());
}

#[test]
fn ragged_length_is_refused_naming_the_block_size() {
    for (ty, len, bs) in [(GgmlType::Q4_K, 300, "256"), (GgmlType::Q8_0, 33, "32"), (GgmlType::Q6_K, 255, "256")] {
        let e = quantize(ty, &vec![0.5; len]).unwrap_err();
        assert!(matches!(e, QuantizeError::RaggedLength { .. }), "{e}");
        let msg = e.to_string();
        for word in [ty.name(), &len.to_string(), bs, "multiple"] {
            assert!(msg.contains(word), "{msg:?} lacks {word:?}");
        }
    }
}

#[test]
fn non_finite_values_are_refused_by_block_types() {
    for (ty, bad) in [(GgmlType::Q8_0, f32::NAN), (GgmlType::Q4_K, f32::INFINITY), (GgmlType::Q4_1, f32::NEG_INFINITY)]
    {
        let mut x = vec![0.25f32; 512];
        x[300] = bad;
        let e = quantize(ty, &x).unwrap_err();
        assert!(
            matches!(e, QuantizeError::NonFinite { index: 300, value, .. } if value.to_bits() == bad.to_bits()),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("value 300") && msg.contains(ty.name()), "{msg}");
    }
    // the float types keep them
    assert!(quantize(GgmlType::BF16, &[f32::NAN, f32::INFINITY]).is_ok());
    assert!(quantize(GgmlType::F16, &[f32::NAN, f32::NEG_INFINITY]).is_ok());
}

#[test]
fn scale_overflow_is_refused_naming_the_block() {
    // Q8_0: d = 1e9 / 127 > 65504. Q4_1: the min -1e5 is beyond f16. Q4_K/Q6_K: the super-block
    // scale (about 1e9 / 15 / 63 and 1e9 / 32 / 128).
    for (ty, start, end) in
        [(GgmlType::Q8_0, 32, 64), (GgmlType::Q4_1, 32, 64), (GgmlType::Q4_K, 0, 256), (GgmlType::Q6_K, 0, 256)]
    {
        let mut x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
        x[40] = if ty == GgmlType::Q4_1 { -1e5 } else { 1e9 };
        let e = quantize(ty, &x).unwrap_err();
        assert!(matches!(e, QuantizeError::ScaleOverflow { .. }), "{ty}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("values {start}..{end}")) && msg.contains(ty.name()), "{msg}");
    }
    // just inside the range is fine
    assert!(quantize(GgmlType::Q8_0, &[65504.0 * 127.0 * 0.999; 32]).is_ok());
}

#[test]
fn out_of_range_floats_are_refused() {
    let e = quantize(GgmlType::F16, &[1.0, -70000.0]).unwrap_err();
    assert!(matches!(e, QuantizeError::OutOfRange { index: 1, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("value 1") && msg.contains("F16") && msg.contains("BF16"), "{msg}");
    assert!(quantize(GgmlType::F16, &[65519.0]).is_ok(), "65519 rounds down to 65504");
    let e = quantize(GgmlType::BF16, &[f32::MAX]).unwrap_err();
    assert!(matches!(e, QuantizeError::OutOfRange { index: 0, .. }), "{e}");
}
