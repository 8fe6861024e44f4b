//! The GPUs the CUDA driver sees: name, memory, compute capability, and the driver's CUDA version — or why there
//! are none to use (no driver library, the driver fails to start, no devices).
use cudarc::driver::result::{self, DriverError, device};
use cudarc::driver::sys::{self, CUdevice_attribute, cudaError_enum};

/// One GPU as the driver reports it.
#[derive(Clone, Debug)]
pub struct Gpu {
    /// CUDA's device ordinal (`--device cuda:N` will take it).
    pub ordinal: usize,
    pub name: String,
    /// Total device memory in bytes.
    pub memory: usize,
    /// Compute capability (major, minor): (9, 0) for H100/H200, which NVRTC targets as `sm_90`.
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

impl Gpu {
    /// NVRTC's name of this GPU's architecture: `sm_90` for compute capability 9.0.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.compute_capability.0, self.compute_capability.1)
    }
}

/// The loaded driver and its GPUs (none when the driver runs but sees no device).
#[derive(Clone, Debug)]
pub struct Driver {
    /// The NVIDIA kernel module's release (`580.65.06`), when /proc/driver/nvidia/version says it.
    pub release: Option<String>,
    /// The newest CUDA version the driver supports, (major, minor).
    pub cuda_version: (i32, i32),
    pub gpus: Vec<Gpu>,
}

/// Why CUDA cannot be used here, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error(
        "the CUDA driver library (libcuda.so) was not found: install the NVIDIA driver, or add the folder that holds \
         libcuda.so.1 to LD_LIBRARY_PATH"
    )]
    NoDriverLibrary,
    #[error(
        "the CUDA driver did not start (cuInit: {0}): check that the NVIDIA kernel module is loaded and that \
         `nvidia-smi` lists the GPU"
    )]
    Init(DriverError),
    #[error("the CUDA driver could not describe device {ordinal} ({what}: {err})")]
    Query { ordinal: usize, what: &'static str, err: DriverError },
}

/// Loads the driver (once per process), starts it and lists its GPUs.
pub fn probe() -> Result<Driver, Unavailable> {
    // SAFETY: dlopen of the driver library, whose initializers are NVIDIA's; nothing of ours runs meanwhile.
    if !unsafe { sys::is_culib_present() } {
        return Err(Unavailable::NoDriverLibrary);
    }
    let mut version = 0;
    // SAFETY: the library is present (above); cuDriverGetVersion writes one int and needs no cuInit.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result().map_err(Unavailable::Init)?;
    let cuda_version = (version / 1000, version % 1000 / 10);
    let release = module_release();
    match result::init() {
        Err(DriverError(cudaError_enum::CUDA_ERROR_NO_DEVICE)) => {
            return Ok(Driver { release, cuda_version, gpus: vec![] });
        }
        r => r.map_err(Unavailable::Init)?,
    }
    let count = device::get_count().map_err(Unavailable::Init)?;
    let gpus = (0..count as usize).map(describe).collect::<Result<_, _>>()?;
    Ok(Driver { release, cuda_version, gpus })
}

/// The kernel module's release from "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 …"
/// (the driver API itself only tells the CUDA version).
fn module_release() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    let rest = text.lines().next()?.split("Kernel Module").nth(1)?;
    rest.split_whitespace().next().map(String::from)
}

fn describe(ordinal: usize) -> Result<Gpu, Unavailable> {
    let err = |what| move |err| Unavailable::Query { ordinal, what, err };
    let dev = device::get(ordinal as i32).map_err(err("cuDeviceGet"))?;
    let name = device::get_name(dev).map_err(err("cuDeviceGetName"))?;
    // SAFETY: `dev` comes from cuDeviceGet above.
    let memory = unsafe { device::total_mem(dev) }.map_err(err("cuDeviceTotalMem"))?;
    let attr = |a: CUdevice_attribute| {
        // SAFETY: as above.
        unsafe { device::get_attribute(dev, a) }.map_err(err("cuDeviceGetAttribute"))
    };
    let major = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let multiprocessors = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    Ok(Gpu { ordinal, name, memory, compute_capability: (major, minor), multiprocessors })
}
