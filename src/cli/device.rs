//! `--device cpu|cuda[:N]` of `score`, `eval` and `train`: where the network runs. `cuda` runs the model on a
//! GPU (`network::device` on `kernels::cuda::backend`) in f32; a build without the `cuda` feature says how to get
//! one.
use anyhow::{Result, bail};
use clap::Args;
use condlm::kernels::compute::Compute;
use condlm::network::transformer::Transformer;
use condlm::score::{OnCpu, Scorer};
use std::str::FromStr;

/// Where the network runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The GPU of this ordinal (CUDA's numbering).
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "cpu" => Ok(Device::Cpu),
            None if s == "cuda" => Ok(Device::Cuda(0)),
            Some(("cuda", n)) => n.parse().map(Device::Cuda).map_err(|_| format!("{n:?} is not a GPU number")),
            _ => Err(format!("{s:?} is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

#[derive(Args)]
pub struct DeviceArgs {
    /// Where the network runs: cpu, or cuda / cuda:N (the N-th GPU; f32 products, no TF32). On a GPU so far:
    /// the Llama-layout families (Llama, SmolLM2, Qwen2, Mistral), scoring and LoRA training; anything else is
    /// refused with the reason [default: cpu].
    #[arg(long, default_value = "cpu", hide_default_value = true)]
    pub device: Device,
}

impl DeviceArgs {
    /// Refuses what the device cannot run with this `--compute`.
    pub fn check_compute(&self, c: Compute) -> Result<()> {
        if self.device != Device::Cpu && c != Compute::F32 {
            bail!(
                "--device {:?} computes in f32 so far: drop --compute {c:?} (bf16 on the GPU is not built yet)",
                self.device
            );
        }
        Ok(())
    }

    /// What scores rows of `model` on this device.
    pub fn scorer<'a>(&self, model: &'a Transformer) -> Result<Box<dyn Scorer + 'a>> {
        match self.device {
            Device::Cpu => Ok(Box::new(OnCpu::new(model))),
            Device::Cuda(ordinal) => gpu::scorer(ordinal, model),
        }
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use anyhow::Result;
    use condlm::kernels::cuda::backend::Cuda;
    use condlm::network::device::DeviceModel;
    use condlm::network::transformer::Transformer;
    use condlm::score::Scorer;

    pub fn scorer<'a>(ordinal: usize, model: &'a Transformer) -> Result<Box<dyn Scorer + 'a>> {
        let backend = Cuda::open(ordinal)?;
        Ok(Box::new(DeviceModel::new(backend, model)?))
    }
}

#[cfg(not(feature = "cuda"))]
mod gpu {
    use anyhow::{Result, bail};
    use condlm::network::transformer::Transformer;
    use condlm::score::Scorer;

    pub fn scorer<'a>(_: usize, _: &'a Transformer) -> Result<Box<dyn Scorer + 'a>> {
        bail!(
            "this condlm was built without CUDA: build it with `cargo build --release --features cuda` (no CUDA \
             toolkit is needed to build; the driver and libraries are loaded when it runs)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert!("cuda:x".parse::<Device>().unwrap_err().contains("not a GPU number"));
        assert!("gpu".parse::<Device>().unwrap_err().contains("cpu, cuda or cuda:N"));
    }
}
