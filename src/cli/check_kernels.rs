//! `condlm info --devices --check-kernels` (feature `cuda`): every CUDA kernel source compiled with NVRTC for each
//! GPU's architecture, loaded into the GPU's context, its kernels looked up, then run against the CPU kernels
//! (`kernel_parity`), cuBLAS's GEMM throughput and the attention kernels' speed measured (`gemm_peak`,
//! `attention_speed`), and the CUDA backend checked op by op
//! against the reference backend (`backend_parity`), and NCCL's bindings on a one-rank communicator — or, with no
//! GPU, compiled for `sm_90` only. Prints one line
//! per source and comparison; fails if any source does not compile or load, or any comparison is off.
use anyhow::{Result, bail};
use condlm::distributed::Single;
use condlm::kernels::backend::Backend;
use condlm::kernels::cuda::backend::Cuda;
use condlm::kernels::cuda::compile::{DEFAULT_ARCH, compile, nvrtc_version};
use condlm::kernels::cuda::device::Device;
use condlm::kernels::cuda::devices::Gpu;
use condlm::kernels::cuda::module::load;
use condlm::kernels::cuda::sources::SOURCES;
use condlm::network::device::nccl;
use condlm::network::device::rank_sums::RankSums;
use cudarc::driver::CudaContext;
use std::time::Instant;

/// Checks every source on every GPU in `gpus` (as `devices::probe` listed them), or compiles only when empty.
pub fn run(gpus: &[Gpu]) -> Result<()> {
    if let Err(e) = nvrtc_version() {
        bail!("--check-kernels: {e}");
    }
    let mut failed = 0;
    if gpus.is_empty() {
        for src in SOURCES {
            let t = Instant::now();
            match compile(src, DEFAULT_ARCH) {
                Ok(ptx) => out!(
                    "check         {} compiles for {DEFAULT_ARCH}: {} bytes of PTX in {:.0} ms (no GPU to load it on)",
                    src.file,
                    ptx.to_src().len(),
                    t.elapsed().as_secs_f64() * 1e3
                ),
                Err(e) => {
                    out!("check         {} FAILED: {e}", src.file);
                    failed += 1;
                }
            }
        }
    }
    for g in gpus {
        let (device, loaded) = match Device::open(g) {
            Ok(opened) => opened,
            Err(e) => {
                out!("check cuda:{}  FAILED: {e}", g.ordinal);
                failed += 1 + diagnose(g)?;
                continue;
            }
        };
        if let Ok((free, total)) = device.ctx.mem_get_info() {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            out!("check cuda:{}  context made, {:.1} of {:.1} GiB free", g.ordinal, gib(free), gib(total));
        }
        for l in &loaded {
            let mut nvrtc =
                if l.from_cache { "PTX from the cache".into() } else { format!("NVRTC {:.0} ms", l.compile_s * 1e3) };
            if l.machine_code {
                nvrtc.push_str("; the driver refused the PTX's version: loaded as machine code (CUBIN)");
            }
            out!(
                "check cuda:{}  {} loaded for {}: kernels {} ({} bytes of PTX, {nvrtc}, load {:.0} ms)",
                g.ordinal,
                l.file,
                g.arch(),
                l.functions.iter().map(|f| f.0).collect::<Vec<_>>().join(" "),
                l.ptx_bytes,
                l.load_s * 1e3
            );
        }
        failed += super::kernel_parity::run(&device)?;
        if let Err(e) = super::gemm_peak::run(&device) {
            out!("peak   cuda:{} gemm FAILED to run: {e:#}", g.ordinal);
            failed += 1;
        }
        if let Err(e) = super::attention_speed::run(&device) {
            out!("speed  cuda:{} attention FAILED to run: {e:#}", g.ordinal);
            failed += 1;
        }
        match Cuda::new(device) {
            Ok(cuda) => failed += super::backend_parity::run(&cuda)? + nccl(&cuda)?,
            Err(e) => {
                out!("backend cuda:{} FAILED to start: {e:#}", g.ordinal);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("--check-kernels: {failed} check(s) failed (see the FAILED lines above)");
    }
    Ok(())
}

/// NCCL's bindings (`network::device::nccl`) on a communicator of this process alone: an id, the communicator,
/// and an all-reduce over one rank, which must leave the values as they were. Returns 1 if it failed.
fn nccl(cuda: &Cuda) -> Result<usize> {
    let ordinal = cuda.device().gpu.ordinal;
    let Some((major, minor, patch)) = nccl::version() else {
        out!("nccl   cuda:{ordinal} skipped: NCCL (libnccl.so.2) was not found");
        return Ok(0);
    };
    let check = || -> Result<bool> {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut buf = cuda.alloc(values.len() + 3)?;
        cuda.upload(&mut buf, &values)?;
        nccl::Nccl::join(cuda, &Single)?.sum(cuda, &mut buf, values.len(), &Single)?;
        let mut back = vec![0.0; values.len()];
        cuda.download(&buf, &mut back)?;
        Ok(back == values)
    };
    Ok(match check() {
        Ok(true) => {
            out!("nccl   cuda:{ordinal} NCCL {major}.{minor}.{patch}: a one-rank all-reduce kept 1000 values (ok)");
            0
        }
        Ok(false) => {
            out!("nccl   cuda:{ordinal} NCCL {major}.{minor}.{patch}: a one-rank all-reduce changed the values FAILED");
            1
        }
        Err(e) => {
            out!("nccl   cuda:{ordinal} NCCL {major}.{minor}.{patch} FAILED: {e:#}");
            1
        }
    })
}

/// After a failed `Device::open` (which stops at the first source that fails): each source loaded on its own, one
/// line each, so that one run shows every broken source. Returns how many failed.
fn diagnose(g: &Gpu) -> Result<usize> {
    let Ok(ctx) = CudaContext::new(g.ordinal) else { return Ok(0) };
    let mut failed = 0;
    for src in SOURCES {
        match load(&ctx, src, &g.arch()) {
            Ok(_) => out!("check cuda:{}  {} loads on its own", g.ordinal, src.file),
            Err(e) => {
                out!("check cuda:{}  {} FAILED: {e}", g.ordinal, src.file);
                failed += 1;
            }
        }
    }
    Ok(failed)
}
