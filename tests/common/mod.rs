//! Shared helpers for integration tests: fixture paths and the reference files make_fixtures.py writes.
#![allow(dead_code)]
pub mod alloc_count;

use safetensors::SafeTensors;
use std::path::PathBuf;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// (input ids, logits (len, vocab)) of each reference sequence in `<dir>/expected.safetensors`.
pub fn reference_sequences(dir: &str) -> Vec<(Vec<u32>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(dir).join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    (0..)
        .map_while(|i| {
            let ids = st.tensor(&format!("input_ids.{i}")).ok()?;
            let logits = st.tensor(&format!("logits.{i}")).unwrap();
            let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
            let logits = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            Some((ids, logits))
        })
        .collect()
}

pub fn expected_json(dir: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("expected.json")).unwrap()).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// All f32 tensors of a safetensors file by name, with shapes.
pub fn load_f32_tensors(path: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (n, (v.shape().to_vec(), data))
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖ in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Runs the condlm binary with `args` on 2 threads: (success, stdout, stderr).
pub fn condlm(args: &[&str]) -> (bool, String, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_condlm")).args(["--threads", "2"]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}
