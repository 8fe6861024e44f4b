//! The GGUF writer round-trips through condlm's GGUF reader, with tensors quantized by
//! `formats::gguf::quantize`.

use std::path::PathBuf;

use condlm::formats::gguf::dequant::{GgmlType, dequantize_to_vec};
use condlm::formats::gguf::file::{GgufFile, MetaValue};
use condlm::formats::gguf::quantize::quantize;
use condlm::formats::gguf::writer::{TensorData, TensorToWrite, write_gguf};

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("condlm-gguf-writer-{}-{name}.gguf", std::process::id()))
}

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + seed) * 0.731).sin() * (1.0 + (i % 7) as f32)).collect()
}

fn write_and_open(name: &str, metadata: &[(&str, MetaValue)], tensors: &[TensorToWrite<'_>]) -> GgufFile {
    let path = temp_path(name);
    write_gguf(std::io::BufWriter::new(std::fs::File::create(&path).unwrap()), metadata, tensors).unwrap();
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e:#}"));
    std::fs::remove_file(&path).unwrap();
    f
}

#[test]
fn written_file_reads_back() {
    let metadata = vec![
        ("general.architecture", MetaValue::Str("llama".into())),
        ("general.name", MetaValue::Str("round trip ✓".into())),
        ("llama.context_length", MetaValue::U32(128)),
        ("test.i8", MetaValue::I8(-5)),
        ("test.u64", MetaValue::U64(1 << 40)),
        ("test.f64", MetaValue::F64(0.1)),
        ("test.bool", MetaValue::Bool(true)),
        ("tokenizer.ggml.tokens", MetaValue::Array(vec![MetaValue::Str("<s>".into()), MetaValue::Str("a".into())])),
        ("tokenizer.ggml.scores", MetaValue::Array(vec![MetaValue::F32(0.0), MetaValue::F32(-1.5)])),
        ("test.nested", MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::I32(1)]), MetaValue::Array(vec![])])),
    ];
    // (name, GGUF dims, type): a mix of block sizes so padding between tensors is exercised
    let specs = [
        ("blk.0.attn_q.weight", vec![512u64, 3], GgmlType::Q4_K),
        ("blk.0.ffn_down.weight", vec![64, 5], GgmlType::Q8_0),
        ("output_norm.weight", vec![10], GgmlType::F32),
        ("token_embd.weight", vec![6, 4], GgmlType::BF16),
        ("blk.0.ffn_up.weight", vec![256, 2], GgmlType::Q6_K),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, (_, dims, ty))| quantize(*ty, &values(dims.iter().product::<u64>() as usize, i as f32)).unwrap())
        .collect();
    let tensors: Vec<TensorToWrite<'_>> = specs
        .iter()
        .zip(&data)
        .map(|((name, dims, ty), d)| TensorToWrite { name, dims: dims.clone(), ty: *ty, data: TensorData::Bytes(d) })
        .collect();
    let f = write_and_open("roundtrip", &metadata, &tensors);
    assert_eq!((f.version(), f.alignment()), (3, 32));
    for (k, v) in &metadata {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    for ((name, dims, ty), d) in specs.iter().zip(&data) {
        let info = f.require_tensor(name).unwrap();
        assert_eq!((&info.dims, info.ty), (dims, *ty), "{name}");
        assert_eq!(info.offset % 32, 0, "{name}: offset {}", info.offset);
        assert_eq!(f.tensor_bytes(info).unwrap(), &d[..], "{name}");
        let want = dequantize_to_vec(*ty, d).unwrap();
        assert_eq!(f.tensor_f32(name).unwrap(), want, "{name}");
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let d = quantize(GgmlType::F32, &values(3, 0.0)).unwrap();
    let e = quantize(GgmlType::F16, &values(5, 1.0)).unwrap();
    let tensors = [
        TensorToWrite { name: "a", dims: vec![3], ty: GgmlType::F32, data: TensorData::Bytes(&d) },
        TensorToWrite { name: "b", dims: vec![5], ty: GgmlType::F16, data: TensorData::Bytes(&e) },
    ];
    let f = write_and_open("align", &[("general.alignment", MetaValue::U32(64))], &tensors);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.require_tensor("b").unwrap().offset, 64);
    assert_eq!(f.tensor_f32("b").unwrap(), dequantize_to_vec(GgmlType::F16, &e).unwrap());
}

fn write_err(metadata: &[(&str, MetaValue)], tensors: &[TensorToWrite<'_>]) -> String {
    let mut sink = Vec::new();
    let e = write_gguf(&mut sink, metadata, tensors).unwrap_err();
    assert!(sink.is_empty(), "nothing is written when the input is refused");
    format!("{e:#}")
}

#[test]
fn bad_input_is_refused_naming_it() {
    let d = vec![0u8; 144];
    let t =
        |name, dims: Vec<u64>, data| TensorToWrite { name, dims, ty: GgmlType::Q4_K, data: TensorData::Bytes(data) };
    let msg = write_err(&[], &[t("w", vec![256, 2], &d)]);
    assert!(msg.contains("'w'") && msg.contains("288") && msg.contains("144"), "{msg}");
    let msg = write_err(&[], &[t("w", vec![128, 2], &d)]);
    assert!(msg.contains("'w'") && msg.contains("multiple of 256"), "{msg}");
    let msg = write_err(&[], &[t("w", vec![256], &d), t("w", vec![256], &d)]);
    assert!(msg.contains("'w'") && msg.contains("twice"), "{msg}");
    let mixed = MetaValue::Array(vec![MetaValue::I32(1), MetaValue::Str("x".into())]);
    let msg = write_err(&[("k.mixed", mixed)], &[]);
    assert!(msg.contains("'k.mixed'") && msg.contains("element 1"), "{msg}");
    let msg = write_err(&[("general.alignment", MetaValue::U32(48))], &[]);
    assert!(msg.contains("general.alignment") && msg.contains("power-of-two"), "{msg}");
    let msg = write_err(&[("k", MetaValue::U8(1)), ("k", MetaValue::U8(2))], &[]);
    assert!(msg.contains("'k'") && msg.contains("twice"), "{msg}");
}
