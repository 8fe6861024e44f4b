//! GGUF reading and GGML dequantization against fixtures written by
//! tests/fixtures/make_gguf_quant_fixtures.py (oracle: PyPI `gguf`, i.e. llama.cpp).

use std::path::{Path, PathBuf};

use condlm::formats::gguf::file::{GgufFile, MetaValue};
use condlm::kernels::dequant::{DequantError, GgmlType, dequantize, dequantize_to_vec};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_quants")
}

fn read(name: &str) -> Vec<u8> {
    let p = fixtures().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn every_type_is_bit_exact() {
    for ty in GgmlType::ALL {
        let raw = read(&format!("{}.bin", ty.name()));
        let want = f32s(&read(&format!("{}.f32", ty.name())));
        assert_eq!(raw.len() % ty.type_size(), 0, "{ty}: fixture size");
        let mut got = vec![f32::NAN; want.len()];
        dequantize(ty, &raw, &mut got).unwrap();
        assert_bits_eq(&got, &want, ty.name());
        assert!(got.iter().all(|x| x.is_finite()), "{ty}: non-finite output");
    }
}

#[test]
fn parallel_path_is_bit_exact() {
    // Repeat each fixture enough times to cross the parallel threshold (several chunks, with a
    // ragged last chunk), and compare with the repeated expectation.
    for ty in GgmlType::ALL {
        let raw = read(&format!("{}.bin", ty.name()));
        let want = f32s(&read(&format!("{}.f32", ty.name())));
        let blocks = raw.len() / ty.type_size();
        let min_blocks: usize = if ty.block_size() == 1 { 4096 * 256 * 3 + 5 } else { 4096 * 3 + 5 };
        let reps = min_blocks.div_ceil(blocks);
        let big_raw = raw.repeat(reps);
        let big_want = want.repeat(reps);
        let got = dequantize_to_vec(ty, &big_raw).unwrap();
        assert_bits_eq(&got, &big_want, &format!("{ty} x{reps}"));
    }
}

#[test]
fn dequantize_checks_lengths() {
    let raw = read("Q4_K.bin");
    let mut out = vec![0.0f32; 8 * 256];
    let e = dequantize(GgmlType::Q4_K, &raw[..raw.len() - 1], &mut out).unwrap_err();
    assert!(matches!(e, DequantError::RaggedBytes { .. }), "{e}");
    assert!(e.to_string().contains("Q4_K"), "{e}");
    let e = dequantize(GgmlType::Q4_K, &raw, &mut out[..8 * 256 - 1]).unwrap_err();
    assert!(matches!(e, DequantError::OutputLength { .. }), "{e}");
    let e = dequantize(GgmlType::Q4_K, &raw[..144], &mut out).unwrap_err();
    assert!(matches!(e, DequantError::OutputLength { .. }), "{e}");
    assert!(dequantize_to_vec(GgmlType::F32, &[0u8; 7]).is_err());
}

fn check_meta(got: &MetaValue, want: &Value, ty: &str, key: &str) {
    match (ty, got) {
        ("str", MetaValue::Str(s)) => assert_eq!(s, want.as_str().unwrap(), "{key}"),
        ("u8", MetaValue::U8(_))
        | ("i8", MetaValue::I8(_))
        | ("u16", MetaValue::U16(_))
        | ("i16", MetaValue::I16(_))
        | ("u32", MetaValue::U32(_))
        | ("i32", MetaValue::I32(_))
        | ("u64", MetaValue::U64(_))
        | ("i64", MetaValue::I64(_)) => {
            assert_eq!(got.as_i64(), want.as_i64(), "{key}")
        }
        ("f32", MetaValue::F32(v)) => assert_eq!(*v, want.as_f64().unwrap() as f32, "{key}"),
        ("f64", MetaValue::F64(v)) => assert_eq!(*v, want.as_f64().unwrap(), "{key}"),
        ("bool", MetaValue::Bool(v)) => assert_eq!(*v, want.as_bool().unwrap(), "{key}"),
        ("array", MetaValue::Array(items)) => {
            let w = want.as_array().unwrap();
            assert_eq!(items.len(), w.len(), "{key}");
            for (g, w) in items.iter().zip(w) {
                // element type follows gguf.GGUFValueType.get_type: str, i32, f32, nested array
                let t = match w {
                    Value::String(_) => "str",
                    Value::Number(n) if n.is_i64() => "i32",
                    Value::Number(_) => "f32",
                    Value::Array(_) => "array",
                    other => panic!("{key}: unexpected fixture value {other}"),
                };
                check_meta(g, w, t, key);
            }
        }
        _ => panic!("{key}: got {} {got}, fixture says {ty} {want}", got.type_name()),
    }
}

fn check_gguf_fixture(stem: &str) {
    let path = fixtures().join(format!("{stem}.gguf"));
    let exp: Value = serde_json::from_slice(&read(&format!("{stem}.json"))).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), exp["version"].as_u64().unwrap() as u32);
    assert_eq!(f.alignment(), exp["alignment"].as_u64().unwrap());
    assert_eq!(f.data_offset(), exp["data_offset"].as_u64().unwrap());
    assert_eq!(f.file_len(), exp["file_size"].as_u64().unwrap());

    let meta = exp["metadata"].as_object().unwrap();
    assert_eq!(f.metadata.len(), meta.len());
    for (key, m) in meta {
        let got = f.get(key).unwrap_or_else(|| panic!("missing key {key}"));
        check_meta(got, &m["value"], m["type"].as_str().unwrap(), key);
    }

    // typed getters
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_str("general.name").unwrap(), "tiny test model ✓");
    assert_eq!(f.get_u32("llama.context_length").unwrap(), 128);
    assert_eq!(f.get_usize("test.u8").unwrap(), 200);
    assert_eq!(f.get_usize("test.u64").unwrap(), 1 << 40);
    assert_eq!(f.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i64("test.i64").unwrap(), -(1 << 40));
    assert_eq!(f.get_f32("test.f32").unwrap(), 0.5);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(f.get_f32("test.f64").unwrap(), 0.1f64 as f32);
    assert!(f.get_bool("test.bool").unwrap());
    assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap(), vec!["<s>", "</s>", "a", "b", "Ġhello", ""]);
    assert_eq!(f.get_i32_array("tokenizer.ggml.token_type").unwrap(), vec![3, 3, 1, 1, 1, -1]);
    assert_eq!(f.get_f32_array("tokenizer.ggml.scores").unwrap(), vec![0.0, -1.5, 2.25]);
    assert_eq!(f.opt_u32("llama.nonexistent").unwrap(), None);
    assert_eq!(f.opt_u32("llama.context_length").unwrap(), Some(128));

    // typed getter errors name the key and the file
    let p = path.display().to_string();
    for e in [
        f.get_u32("test.i32").unwrap_err(),                        // negative
        f.get_u32("test.u64").unwrap_err(),                        // too large
        f.get_usize("test.i8").unwrap_err(),                       // negative
        f.get_str("test.u32").unwrap_err(),                        // wrong type
        f.get_u32("no.such.key").unwrap_err(),                     // missing
        f.opt_str("test.bool").unwrap_err(),                       // present, wrong type
        f.get_str_array("test.f32").unwrap_err(),                  // not an array
        f.get_u32_array("tokenizer.ggml.token_type").unwrap_err(), // -1 element
    ] {
        let msg = format!("{e:#}");
        assert!(msg.contains(&p), "{msg}");
        assert!(msg.contains("test.") || msg.contains("no.such.key") || msg.contains("tokenizer"));
    }

    // tensors
    let tensors = exp["tensors"].as_array().unwrap();
    assert_eq!(f.tensors.len(), tensors.len());
    let offsets = exp["tensor_data_offsets"].as_array().unwrap();
    for (t, off) in tensors.iter().zip(offsets) {
        let name = t["name"].as_str().unwrap();
        let info = f.tensor(name).unwrap_or_else(|| panic!("missing tensor {name}"));
        assert_eq!(info.ty.name(), t["type"].as_str().unwrap(), "{name}");
        let dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(info.dims, dims, "{name}");
        assert_eq!(f.data_offset() + info.offset, off.as_u64().unwrap(), "{name}");
        assert_eq!(info.offset % f.alignment(), 0, "{name}");
        let want: Vec<f32> = t["values_f32_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| f32::from_bits(b.as_u64().unwrap() as u32))
            .collect();
        assert_eq!(info.n_elements() as usize, want.len(), "{name}");
        assert_eq!(f.tensor_bytes(info).unwrap().len() as u64, info.n_bytes().unwrap());
        assert_bits_eq(&f.tensor_f32(name).unwrap(), &want, name);
    }
    let e = f.tensor_f32("no.such.tensor").unwrap_err().to_string();
    assert!(e.contains(&p) && e.contains("no.such.tensor"), "{e}");
    // the quantized 2-D tensor is Q8_0 with rows of 64
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ty, q.shape()), (GgmlType::Q8_0, vec![3, 64]));
}

#[test]
fn small_gguf_parses() {
    check_gguf_fixture("small");
}

#[test]
fn custom_alignment_gguf_parses() {
    check_gguf_fixture("align64");
}

#[test]
fn display_of_metadata() {
    let f = GgufFile::open(&fixtures().join("small.gguf")).unwrap();
    assert_eq!(f.get("test.u32").unwrap().to_string(), "4000000000");
    assert_eq!(
        f.get("tokenizer.ggml.tokens").unwrap().to_string(),
        r#"[string; 6] ["<s>", "</s>", "a", "b", "Ġhello", ""]"#
    );
    assert_eq!(f.get("test.nested").unwrap().to_string(), "[array; 2] [[2 items], [1 items]]");
}

/// Writes `bytes` to a fresh temp file, opens it, and returns the error message (the open must
/// fail) and the path.
fn open_err(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> (String, String) {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let p = path.display().to_string();
    match GgufFile::open(&path) {
        Ok(_) => panic!("{name}: opening a bad file succeeded"),
        Err(e) => (format!("{e:#}"), p),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("needle in fixture")
}

#[test]
fn truncated_files_fail_cleanly() {
    let full = read("small.gguf");
    let exp: Value = serde_json::from_slice(&read("small.json")).unwrap();
    let data_offset = exp["data_offset"].as_u64().unwrap() as usize;
    let dir = tempfile::tempdir().unwrap();
    // GGUFWriter pads the last tensor's data to the alignment: only cuts before the end of the
    // data itself make the file invalid.
    let g = GgufFile::open(&fixtures().join("small.gguf")).unwrap();
    let data_end = g.tensors.iter().map(|t| g.data_offset() + t.offset + t.n_bytes().unwrap()).max().unwrap() as usize;
    assert!(data_end <= full.len() && data_end + 32 > full.len());

    // The first tensor name's first occurrence is in the tensor-info table.
    let ti = find(&full, b"blk.0.attn_q.weight");
    let named = [
        (0, "empty"),
        (3, "in the magic"),
        (10, "in the header"),
        (30, "in the first key"),
        (100, "in the metadata"),
        (ti + 5, "in a tensor name"),
        (ti + 25, "in a tensor's dims"),
        (data_offset - 1, "in the padding"),
        (data_offset + 5, "in the data"),
        (data_end - 1, "one byte short"),
    ];
    for (cut, what) in named {
        let (msg, p) = open_err(&dir, &format!("cut{cut}.gguf"), &full[..cut]);
        assert!(msg.contains(&p), "{what}: {msg}");
        assert!(msg.contains("re-download") || msg.contains("re-convert"), "{what}: {msg}");
    }
    // Cutting in the data names the tensor whose data is missing.
    let (msg, _) = open_err(&dir, "data.gguf", &full[..data_end - 1]);
    assert!(msg.contains("token_embd.weight"), "{msg}");

    // Every other prefix too: always an error naming the file, never a panic.
    for cut in 0..data_end {
        let (msg, p) = open_err(&dir, "prefix.gguf", &full[..cut]);
        assert!(msg.contains(&p), "cut at {cut}: {msg}");
    }
    // Dropping only trailing padding leaves a valid file.
    let path = dir.path().join("nopad.gguf");
    std::fs::write(&path, &full[..data_end]).unwrap();
    assert_eq!(GgufFile::open(&path).unwrap().tensors.len(), 4);
}

#[test]
fn bad_headers_fail_cleanly() {
    let full = read("small.gguf");
    let dir = tempfile::tempdir().unwrap();

    let mut b = full.clone();
    b[..4].copy_from_slice(b"GGUX");
    let (msg, p) = open_err(&dir, "magic.gguf", &b);
    assert!(msg.contains(&p) && msg.contains("not a GGUF file"), "{msg}");

    let (msg, p) = open_err(&dir, "json.gguf", b"{\"not\": \"a model at all, just some json\"}");
    assert!(msg.contains(&p) && msg.contains("not a GGUF file"), "{msg}");

    for (v, needle) in [(1u32, "version 1"), (4, "unsupported GGUF version 4"), (3u32.swap_bytes(), "big-endian")] {
        let mut b = full.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let (msg, p) = open_err(&dir, "version.gguf", &b);
        assert!(msg.contains(&p) && msg.contains(needle), "{msg}");
    }

    // GGUF v2 has the same layout as v3 for little-endian files.
    let mut b = full.clone();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    let path = dir.path().join("v2.gguf");
    std::fs::write(&path, &b).unwrap();
    assert_eq!(GgufFile::open(&path).unwrap().version(), 2);

    // Absurd tensor count.
    let mut b = full.clone();
    b[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let (msg, p) = open_err(&dir, "ntensors.gguf", &b);
    assert!(msg.contains(&p) && msg.contains("tensor table"), "{msg}");

    // Absurd kv count.
    let mut b = full.clone();
    b[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let (msg, p) = open_err(&dir, "nkv.gguf", &b);
    assert!(msg.contains(&p) && msg.contains("metadata"), "{msg}");

    // Absurd length of the first key.
    let mut b = full.clone();
    b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (msg, p) = open_err(&dir, "keylen.gguf", &b);
    assert!(msg.contains(&p) && msg.contains("length"), "{msg}");

    // Absurd length of a string array element: the first token "<s>" (length 3).
    let mut b = full.clone();
    let tok = find(&full, b"<s>") - 8;
    assert_eq!(&b[tok..tok + 8], &3u64.to_le_bytes());
    b[tok..tok + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let (msg, p) = open_err(&dir, "tokenlen.gguf", &b);
    assert!(msg.contains(&p) && msg.contains("tokenizer.ggml.tokens"), "{msg}");

    // Invalid UTF-8 in a key.
    let mut b = full.clone();
    let k = find(&full, b"general.name");
    b[k] = 0xff;
    let (msg, p) = open_err(&dir, "utf8.gguf", &b);
    assert!(msg.contains(&p) && msg.contains("UTF-8"), "{msg}");
}

/// Offset of the u32 type id in the tensor info of `name`.
fn tensor_type_offset(full: &[u8], name: &str) -> usize {
    let at = find(full, name.as_bytes()) + name.len();
    let n_dims = u32::from_le_bytes(full[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims
}

#[test]
fn bad_tensor_infos_fail_cleanly() {
    let full = read("small.gguf");
    let dir = tempfile::tempdir().unwrap();
    let name = "blk.0.ffn_down.weight";
    let ty_at = tensor_type_offset(&full, name);
    assert_eq!(u32::from_le_bytes(full[ty_at..ty_at + 4].try_into().unwrap()), GgmlType::Q4_0.id());

    // Unsupported (but real) type id, and a nonsense one.
    for (id, needle) in [(16u32, "IQ2_XXS"), (11, "Q3_K"), (12345, "12345")] {
        let mut b = full.clone();
        b[ty_at..ty_at + 4].copy_from_slice(&id.to_le_bytes());
        let (msg, p) = open_err(&dir, "type.gguf", &b);
        assert!(msg.contains(&p) && msg.contains(name) && msg.contains(needle), "{msg}");
    }

    // Data offset past the end of the file, and one that overflows.
    for off in [1u64 << 20, u64::MAX - 4] {
        let mut b = full.clone();
        b[ty_at + 4..ty_at + 12].copy_from_slice(&off.to_le_bytes());
        let (msg, p) = open_err(&dir, "offset.gguf", &b);
        assert!(msg.contains(&p) && msg.contains(name) && msg.contains("past the end"), "{msg}");
    }

    // A huge dimension.
    let mut b = full.clone();
    b[ty_at - 8..ty_at].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (msg, p) = open_err(&dir, "dim.gguf", &b);
    assert!(msg.contains(&p) && msg.contains(name), "{msg}");

    // A row length that is not a whole number of blocks (ne0 = 96 -> 95).
    let mut b = full.clone();
    let ne0_at = ty_at - 16;
    assert_eq!(&b[ne0_at..ne0_at + 8], &96u64.to_le_bytes());
    b[ne0_at..ne0_at + 8].copy_from_slice(&95u64.to_le_bytes());
    let (msg, p) = open_err(&dir, "ne0.gguf", &b);
    assert!(msg.contains(&p) && msg.contains(name) && msg.contains("block size"), "{msg}");

    // Too many dimensions.
    let mut b = full.clone();
    let nd_at = find(&full, name.as_bytes()) + name.len();
    b[nd_at..nd_at + 4].copy_from_slice(&1000u32.to_le_bytes());
    let (msg, p) = open_err(&dir, "ndims.gguf", &b);
    assert!(msg.contains(&p) && msg.contains(name), "{msg}");
}

/// Every tensor of a real GGUF model against checksums of `gguf.quants.dequantize` (see the
/// `--real` mode of make_gguf_quant_fixtures.py). Needs CONDLM_REAL_GGUF and
/// CONDLM_REAL_GGUF_SUMS; run with `--ignored`.
#[test]
#[ignore]
fn real_gguf_matches_python() {
    let (Ok(model), Ok(sums)) = (std::env::var("CONDLM_REAL_GGUF"), std::env::var("CONDLM_REAL_GGUF_SUMS")) else {
        eprintln!("CONDLM_REAL_GGUF / CONDLM_REAL_GGUF_SUMS not set; skipping");
        return;
    };
    let sums: Value = serde_json::from_slice(&std::fs::read(&sums).unwrap()).unwrap();
    let f = GgufFile::open(Path::new(&model)).unwrap();
    assert_eq!(f.tensors.len(), sums.as_object().unwrap().len());
    let t0 = std::time::Instant::now();
    for t in &f.tensors {
        let v = f.tensor_f32(&t.name).unwrap();
        let (mut s, mut ws) = (0u64, 0u64);
        for (i, x) in v.iter().enumerate() {
            let b = x.to_bits() as u64;
            s = s.wrapping_add(b);
            ws = ws.wrapping_add(b.wrapping_mul(i as u64 + 1));
        }
        let want = &sums[&t.name];
        assert_eq!(
            [v.len() as u64, s, ws],
            [want[0].as_u64().unwrap(), want[1].as_u64().unwrap(), want[2].as_u64().unwrap()],
            "{} ({})",
            t.name,
            t.ty
        );
    }
    eprintln!("{} tensors of {model} match gguf.quants.dequantize ({:.2?})", f.tensors.len(), t0.elapsed());
}
