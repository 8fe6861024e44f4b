//! Builds the CUDA emulator (tests/cuda_emulator/): the kernel programs of src/kernels/cuda/sources.rs compiled by
//! the C++ compiler with `device.h` in front, plus stand-ins for the driver, NVRTC and cuBLAS, linked into one
//! shared library that `libcuda.so`, `libnvrtc.so` and `libcublas.so` link to. A `condlm` started with that folder
//! on LD_LIBRARY_PATH runs `--device cuda` on the CPU: the real launch code, the real kernels, threads as fibers.
//! Built once per set of inputs (their hash names the folder), in the tests' target temp folder.
use condlm::kernels::cuda::sources::SOURCES;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The emulator's own sources (tests/cuda_emulator/), compiled beside the kernel programs.
const PARTS: [&str; 4] = ["threads.cpp", "driver.cpp", "nvrtc.cpp", "cublas.cpp"];
/// The names cudarc's loader tries first for the driver, NVRTC and cuBLAS.
const NAMES: [&str; 3] = ["libcuda.so", "libnvrtc.so", "libcublas.so"];
const FLAGS: [&str; 6] = ["-std=c++17", "-O2", "-fPIC", "-ffp-contract=off", "-Wall", "-Wno-unused-function"];
/// The kernel programs also trap on a misaligned access (a 4-byte load of a bf16 pair at an odd index, a float at a
/// byte offset): x86 forgives it, a GPU faults. A trap, not the sanitizer's runtime: nothing more to install.
const KERNEL_FLAGS: [&str; 2] = ["-fsanitize=alignment", "-fsanitize-undefined-trap-on-error"];

/// The folder holding the emulator's libraries (built on first use); panics with the compiler's output when the
/// build fails.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build().unwrap_or_else(|e| panic!("building the CUDA emulator failed:\n{e}")))
}

fn emulator_src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulator")
}

/// The C++ file of one kernel program: the program's exact text (what NVRTC gets), then its registration — file
/// name, text (the emulator's NVRTC accepts only a text it was built from) and each kernel's trampoline.
fn program_file(file: &str, program: &str, kernels: &[&str]) -> String {
    let delimiter = "condlm_emu";
    assert!(!program.contains(&format!("){delimiter}\"")), "{file}: its text ends the raw string literal");
    let entries: Vec<String> =
        kernels.iter().map(|k| format!("{{\"{k}\", &emu::trampoline<{k}>, &emu::copy_args<{k}>}}")).collect::<Vec<_>>();
    format!(
        "#include \"runtime.h\"\n{program}\n#line 1 \"(emulator registration)\"\n\
         static emu::Registered registered{{emu::Program{{\"{file}\", R\"{delimiter}({program}){delimiter}\", \
         {{{}}}}}}};\n",
        entries.join(", ")
    )
}

fn build() -> Result<PathBuf, String> {
    let src = emulator_src();
    let mut files: Vec<(String, String)> = SOURCES
        .iter()
        .map(|s| (format!("{}.cpp", s.file.replace('.', "_")), program_file(s.file, &s.program(), s.kernels)))
        .collect();
    let mut hasher = DefaultHasher::new();
    FLAGS.hash(&mut hasher);
    KERNEL_FLAGS.hash(&mut hasher);
    files.hash(&mut hasher);
    for part in PARTS.iter().chain(&["device.h", "runtime.h"]) {
        std::fs::read_to_string(src.join(part)).map_err(|e| format!("{part}: {e}"))?.hash(&mut hasher);
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda-emulator-{:016x}", hasher.finish()));
    if dir.join(NAMES[0]).exists() {
        return Ok(dir);
    }
    let work = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    for (name, text) in &files {
        std::fs::write(work.join(name), text).map_err(|e| e.to_string())?;
    }
    let programs = files.len();
    files.extend(PARTS.iter().map(|p| (src.join(p).display().to_string(), String::new())));
    // Each file to an object, two compilers at a time (CI has two cores), then one link.
    let mut objects = vec![];
    for (c, chunk) in files.chunks(2).enumerate() {
        let children: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let object = work.join(format!("{}.o", Path::new(name).file_name().unwrap().to_string_lossy()));
                let kernel_flags: &[&str] = if 2 * c + i < programs { &KERNEL_FLAGS } else { &[] };
                let child = Command::new(cxx())
                    .args(FLAGS)
                    .args(kernel_flags)
                    .arg("-I")
                    .arg(&src)
                    .arg("-c")
                    .arg(work.join(name))
                    .arg("-o")
                    .arg(&object)
                    .stderr(std::process::Stdio::piped())
                    .spawn();
                objects.push(object);
                (name, child)
            })
            .collect();
        for (name, child) in children {
            let child = child.map_err(|e| format!("{}: {e} (the CUDA emulator needs a C++ compiler: g++)", cxx()))?;
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("{name}:\n{}", String::from_utf8_lossy(&out.stderr)));
            }
        }
    }
    // device.h puts `__shared__` arrays in the `emu_shared` section that threads.cpp fills before each block, but
    // g++ ignores a section attribute on a static inside a function template (GCC PR 70435): those land in .bss.
    // A kernel program's .bss holds nothing else that is read after start-up (its 1-byte registration object), so
    // it joins the section.
    for object in &objects[..programs] {
        let out = Command::new(objcopy())
            .args(["--set-section-flags", ".bss=alloc,load,contents,data", "--rename-section", ".bss=emu_shared"])
            .arg(object)
            .output()
            .map_err(|e| format!("{}: {e} (the CUDA emulator needs binutils' objcopy)", objcopy()))?;
        if !out.status.success() {
            return Err(format!("objcopy {}:\n{}", object.display(), String::from_utf8_lossy(&out.stderr)));
        }
    }
    let lib = work.join("libcondlm_cuda_emulator.so");
    let out = Command::new(cxx())
        .args(["-shared", "-o"])
        .arg(&lib)
        .args(&objects)
        .arg("-lpthread")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("linking:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    for name in NAMES {
        std::os::unix::fs::symlink("libcondlm_cuda_emulator.so", work.join(name)).map_err(|e| e.to_string())?;
    }
    // Another test binary may have finished the same build meanwhile: either folder is as good.
    if std::fs::rename(&work, &dir).is_err() && !dir.join(NAMES[0]).exists() {
        return Err(format!("could not move {} to {}", work.display(), dir.display()));
    }
    Ok(dir)
}

/// binutils' objcopy: $OBJCOPY, else objcopy.
fn objcopy() -> String {
    std::env::var("OBJCOPY").unwrap_or_else(|_| "objcopy".into())
}

/// The C++ compiler: $CXX, else g++.
fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".into())
}
