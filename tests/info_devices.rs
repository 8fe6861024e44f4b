//! `condlm info --devices`: exits 0 and says what it found — the CPU line always; without the `cuda` feature, how
//! to build with it; with it, the GPUs or why there are none.
use std::process::Command;

fn condlm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn devices_lists_the_cpu_and_says_why_cuda_is_unavailable() {
    let (ok, out, err) = condlm(&["info", "--devices"]);
    assert!(ok, "info --devices failed:\n{out}\n{err}");
    assert!(out.lines().any(|l| l.starts_with("cpu ")), "no cpu line:\n{out}");
    assert!(out.contains("cpu kernels   f32 GEMM "), "no kernel line:\n{out}");
    let cuda = out.lines().find(|l| l.starts_with("cuda ")).unwrap_or_else(|| panic!("no cuda line:\n{out}"));
    if cfg!(feature = "cuda") {
        // Here: a GPU machine lists devices; elsewhere the reason names the driver.
        assert!(cuda.contains("device(s)") || cuda.contains("unavailable: the") && cuda.contains("driver"), "{out}");
        let nccl = out.lines().find(|l| l.starts_with("nccl ")).unwrap_or_else(|| panic!("no nccl line:\n{out}"));
        assert!(nccl.contains("between GPUs") || nccl.contains("not found (libnccl.so.2)"), "{out}");
    } else {
        assert_eq!(cuda, "cuda          unavailable: this condlm was built without the `cuda` feature");
        assert!(out.contains("cargo build --release --features cuda"), "{out}");
    }
}

#[test]
fn check_kernels_fails_without_cuda_or_nvrtc() {
    let (ok, out, err) = condlm(&["info", "--devices", "--check-kernels"]);
    if cfg!(feature = "cuda") {
        // Passes only where NVRTC loads (and every source compiles and loads); else says NVRTC is missing.
        assert!(ok || err.contains("NVRTC (libnvrtc.so) was not found"), "{out}\n{err}");
    } else {
        assert!(!ok, "{out}");
        assert!(err.contains("--check-kernels needs a condlm built with `--features cuda`"), "{err}");
        assert!(out.starts_with("cpu "), "the devices are listed first:\n{out}");
    }
}

#[test]
fn info_needs_a_model_unless_devices() {
    let (ok, _, err) = condlm(&["info"]);
    assert!(!ok);
    assert!(err.contains("<MODEL>"), "{err}");
    let (ok, _, err) = condlm(&["info", "--tensors", "--devices"]);
    assert!(!ok, "--tensors without a model must be refused");
    assert!(err.contains("<MODEL>"), "{err}");
}

/// `info MODEL --check-device reference`: the device path (on the CPU's kernels) against the CPU path on a whole
/// model — logits (f32, bf16), KV decoding against the full forward pass, greedy ids, LoRA and full gradients —
/// one OK line each, on a Llama and on the Gated DeltaNet of Qwen3.5. The CPU path is refused as the device.
#[test]
fn check_device_compares_a_whole_model_with_the_cpu_path() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    for m in ["tiny-llama", "tiny-qwen35"] {
        let model = format!("{fixtures}/{m}");
        let (ok, out, err) = condlm(&["info", &model, "--check-device", "reference"]);
        assert!(ok, "{m}: {out}\n{err}");
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("model reference ")).collect();
        assert_eq!(lines.len(), 8, "{m}: one line per comparison:\n{out}");
        assert!(lines.iter().all(|l| l.ends_with(" OK")), "{m}:\n{out}");
        for what in
            ["logits, f32", "logits, --compute bf16", "KV decoding", "greedy ids", "LoRA gradients", "full gradients"]
        {
            assert!(lines.iter().any(|l| l.contains(what)), "{m}: no {what} line:\n{out}");
        }
    }
    let (ok, _, err) = condlm(&["info", &format!("{fixtures}/tiny-llama"), "--check-device", "cpu"]);
    assert!(!ok && err.contains("name one (cuda, cuda:N or reference)"), "{err}");
    if !cfg!(feature = "cuda") {
        let (ok, out, err) = condlm(&["info", &format!("{fixtures}/tiny-llama"), "--check-device", "cuda"]);
        assert!(!ok && err.contains("built without CUDA"), "{err}");
        assert!(!out.contains("model cuda"), "refused before any comparison:\n{out}");
    }
}
