//! `condlm info --devices`: the compute devices condlm can use here — the CPU (model, the SIMD extensions its
//! kernels dispatch on, the kernels picked) and the GPUs (through the CUDA driver when built with `--features
//! cuda`), or why there are none. Informational: it succeeds whatever it finds — but for `--check-kernels`, which
//! compiles and loads the CUDA kernels on every GPU and fails when one does not.
use anyhow::Result;
use condlm::kernels::gemm_bf16::Bf16Isa;
use condlm::kernels::{gemm, quant_dot};

/// Prints the CPU, then the GPUs or why CUDA is unavailable; with `check_kernels`, compiles and loads the kernels.
pub fn run(check_kernels: bool) -> Result<()> {
    print_cpu()?;
    print_gpus(check_kernels)
}

fn print_cpu() -> Result<()> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| Some(l.strip_prefix("model name")?.trim_start_matches([' ', '\t', ':'])));
    out!("cpu           {} ({})", model.unwrap_or("model unknown"), std::env::consts::ARCH);
    out!("threads       {}", rayon::current_num_threads());
    out!("simd          {}", simd_flags());
    let bf16 = match Bf16Isa::best() {
        Bf16Isa::Emulated(isa) => format!("emulated on {isa:?}"),
        #[allow(unreachable_patterns)] // the native variant exists only on x86-64 builds with `avx512`
        native => format!("{native:?}"),
    };
    out!("cpu kernels   f32 GEMM {:?}, bf16 GEMM {bf16}, int8 dot {:?}", gemm::Isa::best(), quant_dot::Isa::best());
    Ok(())
}

/// The x86 extensions condlm's kernels are picked by: those this CPU has, then those it lacks.
fn simd_flags() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let flags = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512vnni", has!("avx512vnni")),
            ("avx512bf16", has!("avx512bf16")),
        ];
        let with = |yes: bool| flags.iter().filter(|f| f.1 == yes).map(|f| f.0).collect::<Vec<_>>().join(" ");
        let built = if cfg!(feature = "avx512") { "" } else { " (AVX-512 kernels not built: feature avx512 off)" };
        format!("{}; missing: {}{built}", with(true), if with(false).is_empty() { "none".into() } else { with(false) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    "portable kernels only (not x86-64)".to_string()
}

#[cfg(not(feature = "cuda"))]
fn print_gpus(check_kernels: bool) -> Result<()> {
    out!("cuda          unavailable: this condlm was built without the `cuda` feature");
    out!("              (build it with `cargo build --release --features cuda`; no CUDA toolkit needed to build)");
    if check_kernels {
        anyhow::bail!("--check-kernels needs a condlm built with `--features cuda`");
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn print_gpus(check_kernels: bool) -> Result<()> {
    use condlm::kernels::cuda::devices::probe;
    let probed = probe();
    let driver_cuda = probed.as_ref().ok().map(|d| d.cuda_version);
    let gpus = match probed {
        Err(why) => {
            out!("cuda          unavailable: {why}");
            vec![]
        }
        Ok(d) if d.gpus.is_empty() => {
            out!(
                "cuda          unavailable: the driver (CUDA {}.{}) sees no CUDA device (check CUDA_VISIBLE_DEVICES \
                 and `nvidia-smi`)",
                d.cuda_version.0,
                d.cuda_version.1
            );
            vec![]
        }
        Ok(d) => {
            out!(
                "cuda          driver {}, supports CUDA {}.{}; {} device(s)",
                d.release.as_deref().unwrap_or("(release unknown)"),
                d.cuda_version.0,
                d.cuda_version.1,
                d.gpus.len()
            );
            for g in &d.gpus {
                out!(
                    "  cuda:{}      {}, {:.1} GiB, compute capability {}.{} ({}), {} multiprocessors",
                    g.ordinal,
                    g.name,
                    g.memory as f64 / (1u64 << 30) as f64,
                    g.compute_capability.0,
                    g.compute_capability.1,
                    g.arch(),
                    g.multiprocessors
                );
            }
            d.gpus
        }
    };
    match condlm::kernels::cuda::compile::nvrtc_version() {
        Ok((major, minor)) => {
            out!("nvrtc         {major}.{minor}");
            if let Some((dmajor, dminor)) = driver_cuda.filter(|&d| d < (major, minor)) {
                out!(
                    "              warning: NVRTC {major}.{minor} is newer than the driver's CUDA {dmajor}.{dminor}, which \
                     may refuse its PTX: put an NVRTC of CUDA {dmajor}.{dminor} first on LD_LIBRARY_PATH"
                );
            }
        }
        Err(why) => out!("nvrtc         unavailable: {why}"),
    }
    match condlm::network::device::nccl::version() {
        Some((major, minor, patch)) => {
            out!("nccl          {major}.{minor}.{patch} (data-parallel training sums gradients between GPUs)")
        }
        None => out!(
            "nccl          not found (libnccl.so.2): several GPUs would sum gradients through host memory and MPI; \
             add NCCL's folder to LD_LIBRARY_PATH"
        ),
    }
    if check_kernels { super::check_kernels::run(&gpus) } else { Ok(()) }
}
