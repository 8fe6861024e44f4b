//! Every CUDA kernel source compiles to PTX with NVRTC and defines the kernels it lists — when libnvrtc loads
//! (a toolkit, or the nvidia-cuda-nvrtc wheel on LD_LIBRARY_PATH: scripts/cuda/ptx_check.sh); otherwise a SKIP
//! line says why. And the launches in src/kernels/cuda/ops/ match the kernels' signatures (no NVRTC needed). Needs no
//! GPU. Built only with `--features cuda`.
#![cfg(feature = "cuda")]
use condlm::kernels::cuda::compile::{DEFAULT_ARCH, PtxError, compile, nvrtc_version};
use condlm::kernels::cuda::sources::SOURCES;

#[test]
fn every_kernel_source_compiles_to_ptx() {
    let (major, minor) = match nvrtc_version() {
        Ok(v) => v,
        Err(PtxError::NoNvrtc) => {
            println!("SKIP every_kernel_source_compiles_to_ptx: {}", PtxError::NoNvrtc);
            return;
        }
        Err(e) => panic!("{e}"),
    };
    println!("ptx_check: NVRTC {major}.{minor}, arch {DEFAULT_ARCH}");
    let mut failed = vec![];
    for src in SOURCES {
        match compile(src, DEFAULT_ARCH) {
            Ok(ptx) => {
                let text = ptx.to_src();
                let missing: Vec<_> = src.kernels.iter().filter(|k| !text.contains(&format!(".entry {k}("))).collect();
                assert!(missing.is_empty(), "{}: PTX lacks the kernels {missing:?}", src.file);
                let version = text.lines().find(|l| l.starts_with(".version")).unwrap_or(".version ?");
                // For scripts/cuda/ptx_check.sh, which assembles each file with ptxas (registers, spills).
                if let Some(dir) = std::env::var_os("CONDLM_PTX_DIR") {
                    let path = std::path::Path::new(&dir).join(src.file.replace(".cu", ".ptx"));
                    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                }
                println!(
                    "ptx_check: {} OK, {} bytes of PTX ({version}), kernels {}",
                    src.file,
                    text.len(),
                    src.kernels.join(" ")
                );
            }
            Err(e) => {
                println!("ptx_check: {} FAILED", src.file);
                failed.push(e.to_string());
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Whether NVRTC is missing, in which case `test` prints its SKIP line.
fn skipped_without_nvrtc(test: &str) -> bool {
    let missing = nvrtc_version().is_err();
    if missing {
        println!("SKIP {test}: no NVRTC");
    }
    missing
}

/// Machine code (what is loaded where a driver older than NVRTC refuses its PTX): an ELF holding every kernel of
/// the source, for the smallest and the largest source, compiled once and then read from the cache. Skipped
/// without NVRTC.
#[test]
fn kernel_sources_compile_to_machine_code() {
    use condlm::kernels::cuda::ptx_cache::machine_code_in;
    if skipped_without_nvrtc("kernel_sources_compile_to_machine_code") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let by_size = |src: &&condlm::kernels::cuda::sources::Source| src.program().len();
    for src in [SOURCES.iter().min_by_key(by_size).unwrap(), SOURCES.iter().max_by_key(by_size).unwrap()] {
        let (cubin, nvrtc_s) = machine_code_in(src, DEFAULT_ARCH, Some(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        assert!(nvrtc_s > 0.0, "{}: compiled", src.file);
        let (again, nvrtc_s) = machine_code_in(src, DEFAULT_ARCH, Some(dir.path())).unwrap();
        assert_eq!((nvrtc_s, &again), (0.0, &cubin), "{}: the second comes from the cache", src.file);
        assert!(cubin.starts_with(b"\x7fELF"), "{}: not an ELF", src.file);
        for k in src.kernels {
            assert!(cubin.windows(k.len() + 1).any(|w| w == [k.as_bytes(), b"\0"].concat()), "{}: no {k}", src.file);
        }
        println!("cubin: {} OK, {} bytes of machine code for {DEFAULT_ARCH}", src.file, cubin.len());
    }
}

/// The PTX cache (`ptx_cache`): a second compile of a source comes from the folder with NVRTC's exact text; an entry
/// that does not define the source's kernels (truncated, foreign) is compiled again and replaced; another
/// architecture is another entry (as another program text or NVRTC would be: all are in the key). Skipped without
/// NVRTC.
#[test]
fn compiled_ptx_is_cached_by_text_architecture_and_nvrtc() {
    use condlm::kernels::cuda::ptx_cache::compiled_in;
    if skipped_without_nvrtc("compiled_ptx_is_cached_by_text_architecture_and_nvrtc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = SOURCES.iter().find(|s| s.file == "rope.cu").unwrap();
    let first = compiled_in(src, DEFAULT_ARCH, Some(dir.path())).unwrap();
    assert!(!first.from_cache);
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let again = compiled_in(src, DEFAULT_ARCH, Some(dir.path())).unwrap();
    assert!(again.from_cache && again.ptx.to_src() == first.ptx.to_src());
    // A truncated entry is not used: compiled again, and the entry made whole.
    let text = first.ptx.to_src();
    std::fs::write(&entries[0], &text[..text.len() / 2]).unwrap();
    let repaired = compiled_in(src, DEFAULT_ARCH, Some(dir.path())).unwrap();
    assert!(!repaired.from_cache && repaired.ptx.to_src() == text);
    assert_eq!(std::fs::read_to_string(&entries[0]).unwrap(), text);
    // Another architecture is another entry.
    assert!(!compiled_in(src, "sm_80", Some(dir.path())).unwrap().from_cache);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// Each launch in src/kernels/cuda/ops/ names a kernel that some source defines, and pushes as many arguments as the
/// kernel's `extern "C"` signature has parameters (a mismatch would only show on a GPU, as a crash or garbage);
/// every kernel has a launch, and no launch lies outside ops/ (where this check would not see it: the backend,
/// `kernels::cuda::backend`, launches through ops/ only).
#[test]
fn launches_match_the_kernel_signatures() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let root = src.join("kernels/cuda");
    let mut outside = vec![];
    launches_outside(&src, &root.join("ops"), &mut outside);
    assert!(outside.is_empty(), "kernel launches outside src/kernels/cuda/ops/: {outside:?}");
    let sources: String = SOURCES.iter().map(|s| s.text).collect();
    let mut launched = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(root.join("ops")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("d.function(") {
            rest = &rest[i..];
            let body = &rest[..rest.find(".launch(").expect("a launch after d.function(")];
            // `if backward { "rope_backward" } else { "rope_forward" }`: every quoted kernel name before the call.
            let names = kernel_names(&text[..text.len() - rest.len()], body);
            let args = body.matches(".arg(").count();
            for name in names {
                assert!(
                    SOURCES.iter().any(|s| s.kernels.contains(&name.as_str())),
                    "{}: no source lists kernel {name}",
                    path.display()
                );
                let sig = &sources[sources.find(&format!("void {name}(")).unwrap()..];
                let params = sig[..sig.find(')').unwrap()].matches(',').count() + 1;
                assert_eq!(
                    args,
                    params,
                    "{}: {name} takes {params} arguments, the launch pushes {args}",
                    path.display()
                );
                launched.insert(name);
            }
            rest = &rest[body.len()..];
        }
    }
    let all: std::collections::BTreeSet<String> =
        SOURCES.iter().flat_map(|s| s.kernels).map(|k| k.to_string()).collect();
    assert_eq!(launched, all, "kernels without a launch in src/kernels/cuda/ops/ (or launches of unknown kernels)");
}

/// The kernel name of a `d.function(…)` call: the string literal inside it, or the literals of the `let name =`
/// just before it.
fn kernel_names(before: &str, call: &str) -> Vec<String> {
    let inside = &call["d.function(".len()..call.find(')').unwrap()];
    let text = if inside.contains('"') { inside } else { &before[before.rfind("let name =").unwrap()..] };
    text.split('"').skip(1).step_by(2).map(String::from).collect()
}

/// The .rs files under `dir`, except those under `skip`, that build a kernel launch (`launch_builder(`).
fn launches_outside(dir: &std::path::Path, skip: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path != skip {
                launches_outside(&path, skip, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && std::fs::read_to_string(&path).unwrap().contains("launch_builder(")
        {
            out.push(path);
        }
    }
}
