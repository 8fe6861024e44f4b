//! Hostile files: every length, count, offset and dimension a GGUF or safetensors header claims is checked against
//! the file before anything is allocated or sliced; GGUF tokenizer ids stay inside the vocabulary; and a FIFO, a
//! device or a folder given where a file is expected is refused at once — never a panic, a hang, an endless read
//! or a huge allocation. Each error names the file and what is wrong. (The fuzz targets in fuzz/ search for more;
//! what they find becomes a case here.)
mod common;
use common::fixture;
use condlm::formats::gguf::file::{GgufFile, MetaValue};
use condlm::formats::gguf::tokenizer::{GgufVocab, tokenizer_from_gguf_vocab};
use condlm::formats::safetensors_files::SafetensorsFiles;
use condlm::input::FileBytes;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A little-endian GGUF v3 file, written field by field.
#[derive(Default)]
struct Gguf(Vec<u8>);

impl Gguf {
    /// Magic, version 3, the tensor and metadata counts.
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        Gguf(b"GGUF".to_vec()).u32(3).u64(n_tensors).u64(n_kv)
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(self, s: &str) -> Self {
        let mut g = self.u64(s.len() as u64);
        g.0.extend_from_slice(s.as_bytes());
        g
    }
    /// A tensor info: name, dims (ne0 first), GGML type id, data offset.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let g = self.str(name).u32(dims.len() as u32);
        dims.iter().fold(g, |g, &d| g.u64(d)).u32(ty).u64(offset)
    }
    /// Pads to the default alignment (32) and appends `n` data bytes.
    fn data(mut self, n: usize) -> Self {
        self.0.resize(self.0.len().next_multiple_of(32) + n, 0);
        self
    }
    /// The error `GgufFile::from_bytes` gives, with the file named `hostile.gguf`.
    fn err(self) -> String {
        match GgufFile::from_bytes(Path::new("hostile.gguf"), FileBytes::Owned(self.0)) {
            Ok(_) => panic!("a hostile GGUF file was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }
}

fn assert_names(err: &str, words: &[&str]) {
    for w in words {
        assert!(err.contains(w), "the error does not say {w:?}: {err}");
    }
}

#[test]
fn gguf_counts_and_lengths_beyond_the_file_are_refused_before_allocating() {
    // A metadata key 2^60 bytes long.
    let err = Gguf::header(0, 1).u64(1 << 60).data(64).err();
    assert_names(&err, &["hostile.gguf", "metadata key #0", "claims a length of 1152921504606846976"]);
    // 2^40 tensors, 2^40 metadata pairs.
    let err = Gguf::header(1 << 40, 0).data(64).err();
    assert_names(&err, &["hostile.gguf", "the tensor table claims 1099511627776 items", "cannot fit"]);
    let err = Gguf::header(0, 1 << 40).data(64).err();
    assert_names(&err, &["hostile.gguf", "the metadata table claims 1099511627776 items"]);
    // An array of 2^50 u8s, and of 2^50 strings.
    for elem_ty in [0, 8] {
        let err = Gguf::header(0, 1).str("a").u32(9).u32(elem_ty).u64(1 << 50).data(64).err();
        assert_names(&err, &["hostile.gguf", "the array of metadata key 'a' claims 1125899906842624 items"]);
    }
    // 2^24 + 1 one-byte values that are in the file: each would become a 32-byte value in memory.
    let n = (1 << 24) + 1;
    let err = Gguf::header(0, 1).str("a").u32(9).u32(0).u64(n).data(n as usize).err();
    assert_names(&err, &["hostile.gguf", "metadata key 'a'", "past 16777216 values"]);
}

/// `GgufFile::from_bytes` on `bytes` named `hostile.gguf`.
fn open(bytes: &[u8]) -> anyhow::Result<GgufFile> {
    GgufFile::from_bytes(Path::new("hostile.gguf"), FileBytes::Owned(bytes.to_vec()))
}

#[test]
fn every_prefix_of_a_gguf_file_is_an_error_and_no_flipped_byte_panics() {
    // A minimal valid file: one u32 metadata value, one F32 tensor of 2 values.
    let f = Gguf::header(1, 1).str("k").u32(4).u32(9).tensor("t", &[2], 0, 0).data(8).0;
    let g = open(&f).unwrap();
    assert_eq!(g.metadata["k"], MetaValue::U32(9));
    assert_eq!(g.tensors[0].dims, vec![2]);
    for cut in 0..f.len() {
        assert!(open(&f[..cut]).is_err(), "a prefix of {cut} bytes was accepted");
    }
    // Errors or odd values are both fine; a panic is not.
    for i in 0..f.len() {
        for x in [0x00u8, 0xff, 0x80, 0x7f] {
            let mut g = f.clone();
            g[i] = x;
            let _ = open(&g);
        }
    }
}

#[test]
fn gguf_arrays_nested_too_deep_are_refused() {
    let nested = (0..100).fold(Gguf::header(0, 1).str("a").u32(9), |g, _| g.u32(9).u64(1));
    assert_names(&nested.data(64).err(), &["hostile.gguf", "nests arrays"]);
}

#[test]
fn gguf_tensor_extents_are_checked_against_type_dims_and_file() {
    // Data past the end of the file: 64 F32 values (256 bytes) with 16 bytes of data.
    let err = Gguf::header(1, 0).tensor("w", &[64], 0, 0).data(16).err();
    assert_names(&err, &["hostile.gguf", "tensor 'w'", "runs past the end of the file"]);
    // An offset far past the end, and one whose sum with the data start overflows.
    for offset in [1 << 40, u64::MAX - 31] {
        let err = Gguf::header(1, 0).tensor("w", &[1], 0, offset).data(4).err();
        assert_names(&err, &["hostile.gguf", "tensor 'w'", "runs past the end of the file"]);
    }
    // An offset that is not a multiple of the alignment (32).
    let err = Gguf::header(1, 0).tensor("w", &[1], 0, 4).data(64).err();
    assert_names(&err, &["hostile.gguf", "data offset 4 of tensor 'w'", "not a multiple of the file's alignment 32"]);
    // Dims whose product overflows u64, and a dimension that does not fit in i64.
    let err = Gguf::header(1, 0).tensor("w", &[1 << 32, 1 << 32, 1 << 32], 0, 0).data(64).err();
    assert_names(&err, &["hostile.gguf", "tensor 'w'", "size overflows"]);
    let err = Gguf::header(1, 0).tensor("w", &[u64::MAX], 0, 0).data(64).err();
    assert_names(&err, &["hostile.gguf", "tensor 'w'", "absurd dimension"]);
    // More dimensions than GGML has.
    let err = Gguf::header(1, 0).tensor("w", &[1; 5], 0, 0).data(64).err();
    assert_names(&err, &["hostile.gguf", "tensor 'w' claims 5 dimensions"]);
    // A Q4_0 row (32-value blocks) of 33 values: its byte size cannot agree with its type.
    let err = Gguf::header(1, 0).tensor("w", &[33], 2, 0).data(64).err();
    assert_names(&err, &["hostile.gguf", "tensor 'w' of type Q4_0", "not a multiple of the block size 32"]);
    // A type condlm cannot dequantize.
    let err = Gguf::header(1, 0).tensor("w", &[1], 1000, 0).data(64).err();
    assert_names(&err, &["hostile.gguf", "tensor 'w' has GGML type 1000"]);
    // Two tensors sharing bytes: 16 F32 values (64 bytes) at 0 and another tensor at 32.
    let err = Gguf::header(2, 0).tensor("a", &[16], 0, 0).tensor("b", &[8], 0, 32).data(128).err();
    assert_names(&err, &["hostile.gguf", "tensors 'a'", "'b'", "overlap"]);
    // A zero-size tensor between them hides nothing.
    let err =
        Gguf::header(3, 0).tensor("a", &[32], 0, 0).tensor("z", &[0], 0, 64).tensor("b", &[8], 0, 96).data(256).err();
    assert_names(&err, &["hostile.gguf", "tensors 'a'", "'b'", "overlap"]);
}

/// A two-token byte-level BPE vocabulary ("a", "b"), whose `*_token_id`s and merges the tests then break.
fn vocab() -> GgufVocab {
    GgufVocab { model: "gpt2".into(), tokens: vec!["a".into(), "b".into()], ..Default::default() }
}

#[test]
fn gguf_tokenizer_ids_and_merges_stay_inside_the_vocabulary() {
    assert!(tokenizer_from_gguf_vocab(&vocab()).is_ok());
    type Damage = fn(&mut GgufVocab);
    let cases: [(&str, Damage); 5] = [
        ("tokenizer.ggml.bos_token_id = 2 is out of range", |v| v.bos_id = Some(2)),
        ("tokenizer.ggml.eos_token_id = 4294967295 is out of range", |v| v.eos_id = Some(u32::MAX)),
        ("tokenizer.ggml.padding_token_id = 7 is out of range", |v| v.pad_id = Some(7)),
        ("refers to \"c\", which is not in tokenizer.ggml.tokens", |v| v.merges = vec!["a c".into()]),
        ("tokenizer.ggml.token_type has 3 entries", |v| v.token_types = vec![1, 1, 1]),
    ];
    for (want, damage) in cases {
        let mut v = vocab();
        damage(&mut v);
        let err = format!("{:#}", tokenizer_from_gguf_vocab(&v).unwrap_err());
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
}

/// A safetensors file: 8-byte header length, the JSON header, then `data` bytes.
fn safetensors(header: &str, data: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data, 0);
    out
}

fn safetensors_err(bytes: Vec<u8>) -> String {
    match SafetensorsFiles::from_bytes(Path::new("hostile.safetensors"), FileBytes::Owned(bytes)) {
        Ok(_) => panic!("a hostile safetensors file was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn safetensors_headers_are_checked_against_the_file() {
    let ok = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let st = SafetensorsFiles::from_bytes(Path::new("ok.safetensors"), FileBytes::Owned(safetensors(ok, 8)));
    assert_eq!(st.unwrap().load_f32("w").unwrap().unwrap().1, vec![0.0, 0.0]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // A header 2^60 bytes long.
        ([&(1u64 << 60).to_le_bytes()[..], &safetensors(ok, 8)[8..]].concat(), "header too large"),
        // Data offsets past the end of the file.
        (
            safetensors(&ok.replace("[0,8]", "[0,1099511627776]").replace("[2]", "[274877906944]"), 8),
            "file not fully covered",
        ),
        // A byte size that disagrees with the dtype and shape.
        (safetensors(&ok.replace("[2]", "[3]"), 8), "invalid shape, data type, or offset"),
        // A shape whose product overflows.
        (safetensors(&ok.replace("[2]", "[4294967296,4294967296,4294967296]"), 8), "overflow computing buffer size"),
    ];
    for (bytes, want) in cases {
        let err = safetensors_err(bytes);
        assert_names(&err, &["hostile.safetensors", "not a valid safetensors file", want]);
    }
}

#[test]
fn a_shard_index_cannot_point_outside_the_checkpoint_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let index = r#"{"weight_map": {"w": "../../etc/passwd"}}"#;
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index).unwrap();
    let err = format!("{:#}", SafetensorsFiles::open(tmp.path()).err().expect("a shard outside the folder"));
    assert_names(&err, &["model.safetensors.index.json", "\"../../etc/passwd\" is not a plain file name"]);
}

#[test]
fn a_tensor_stored_in_two_shards_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::copy_fixture("tiny-llama-sharded", tmp.path());
    let first = dir.join("model-00001-of-00003.safetensors");
    let last = dir.join("model-00003-of-00003.safetensors");
    let mut tensors = common::load_f32_tensors(&last);
    let (name, t) = common::load_f32_tensors(&first).into_iter().next().unwrap();
    tensors.insert(name.clone(), t);
    common::save_f32_tensors(&last, &tensors);
    let err = format!("{:#}", SafetensorsFiles::open(&dir).err().expect("a tensor in two shards"));
    assert_names(&err, &[&name, "stored twice", "model-00001-of-00003", "model-00003-of-00003"]);
}

/// Runs condlm with `args`, killing it if it has not finished within 60 s (a regression that blocks on a FIFO
/// or reads /dev/zero forever must fail the test, not hang it); returns (success, stderr).
fn condlm_bounded(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args(args)
        .args(["--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("condlm {args:?} still running after 60 s: it blocks on or reads forever from a non-regular file");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), stderr)
}

/// A named pipe that no one writes to, in a temporary folder.
fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let status = Command::new("mkfifo").arg(&path).status().expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
    path
}

#[test]
fn data_files_that_are_not_regular_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pipe = fifo(tmp.path(), "rows.jsonl");
    let model = fixture("tiny-llama");
    for (data, what) in [(Path::new("/dev/zero"), "is a device"), (pipe.as_path(), "is a named pipe (FIFO)")] {
        let (ok, err) =
            condlm_bounded(&["score", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]);
        assert!(!ok, "score --data {} succeeded", data.display());
        assert_names(&err, &[&format!("data file {}", data.display()), what, "not a regular file"]);
    }
    // A folder is a dataset whose files are read through the same check.
    let (ok, err) = condlm_bounded(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--data",
        tmp.path().to_str().unwrap(),
        "--split",
        "train",
    ]);
    assert!(!ok);
    assert_names(&err, &[pipe.to_str().unwrap(), "is a named pipe (FIFO)"]);
    // generate --data and metrics read plain JSONL objects through the same check.
    let (ok, err) = condlm_bounded(&["generate", "--model", model.to_str().unwrap(), "--data", pipe.to_str().unwrap()]);
    assert!(!ok);
    assert_names(&err, &[pipe.to_str().unwrap(), "is a named pipe (FIFO)"]);
}

#[test]
fn model_files_that_are_not_regular_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = fixture("score_rows.jsonl");
    let pipe = fifo(tmp.path(), "model.gguf");
    for (model, what) in [(Path::new("/dev/zero"), "is a device"), (pipe.as_path(), "is a named pipe (FIFO)")] {
        let (ok, err) =
            condlm_bounded(&["score", "--model", model.to_str().unwrap(), "--data", rows.to_str().unwrap()]);
        assert!(!ok, "score --model {} succeeded", model.display());
        assert_names(&err, &[&format!("model file {}", model.display()), what]);
    }
    // Inside an HF folder: weights, a tokenizer.json or a chat template that is a pipe.
    for name in ["model.safetensors", "tokenizer.json", "chat_template.jinja"] {
        let dir = tmp.path().join(name.replace('.', "_"));
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(fixture("tiny-qwen2")).unwrap() {
            let e = e.unwrap();
            if e.file_name() != name {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        let pipe = fifo(&dir, name);
        let (ok, err) = condlm_bounded(&["score", "--model", dir.to_str().unwrap(), "--data", rows.to_str().unwrap()]);
        assert!(!ok, "a model folder whose {name} is a pipe was read");
        assert_names(&err, &[pipe.to_str().unwrap(), "is a named pipe (FIFO)"]);
    }
}
