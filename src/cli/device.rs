//! `--device cpu|cuda[:N]|reference` of `score`, `eval`, `train` and `generate`: where the network runs. `cuda` runs
//! the model on a GPU (`network::device` on the CUDA backend) in the run's `--compute`; a build without the `cuda`
//! feature says how to get one.
use anyhow::{Result, bail};
use clap::Args;
use condlm::kernels::backend::host::Host;
use condlm::kernels::compute::Compute;
use condlm::network::device::{DeviceModel, Placement, open_gpu};
use condlm::network::transformer::Transformer;
use condlm::score::{OnCpu, Scorer};

#[derive(Args, Default)]
pub struct DeviceArgs {
    /// Where the network runs: cpu, or cuda / cuda:N (the N-th GPU; products as --compute says: f32 without TF32,
    /// or bf16 operands with f32 sums). Every architecture (Llama, SmolLM2/3, Qwen2/3, Qwen3.5, Mistral, Gemma 3,
    /// Phi-3/4, OLMo 2/3, GPT-2): scoring, LoRA and full fine-tuning (under mpirun/srun one GPU per rank: the k-th
    /// rank on a machine takes cuda:(N + k), gradients summed by NCCL), and decoding; a GGUF's quantized base stays
    /// in its blocks there (--base-dtype stored); what cannot run there is refused with the reason. `reference` runs the GPU's code path on the CPU kernels (slow: for checking it without a GPU)
    /// [default: cpu].
    #[arg(long)]
    pub device: Option<Placement>,
}

/// Refuses what `device` cannot run with this `--compute`: int8 is the CPU's (integer products on the stored
/// blocks); f32 and bf16 run anywhere.
pub fn check_compute(device: Placement, c: Compute) -> Result<()> {
    if device != Placement::Cpu && c == Compute::Int8 {
        bail!("--compute int8 runs on the CPU only: drop --device {device}, or use --compute f32 or bf16");
    }
    Ok(())
}

impl DeviceArgs {
    /// The device asked for, the CPU when not given.
    pub fn placement(&self) -> Placement {
        self.device.unwrap_or_default()
    }

    /// The kind of device, for a partial output's fingerprint: cpu, cuda (any of the GPUs) or reference.
    pub fn kind(&self) -> &'static str {
        match self.placement() {
            Placement::Cpu => "cpu",
            Placement::Cuda(_) => "cuda",
            Placement::Reference => "reference",
        }
    }

    /// Refuses what this device cannot run with this `--compute` ([`check_compute`]).
    pub fn check_compute(&self, c: Compute) -> Result<()> {
        check_compute(self.placement(), c)
    }

    /// What scores rows of `model` on this device.
    pub fn scorer<'a>(&self, model: &'a Transformer) -> Result<Box<dyn Scorer + 'a>> {
        Ok(match self.placement() {
            Placement::Cpu => Box::new(OnCpu::new(model)),
            Placement::Cuda(ordinal) => Box::new(open_gpu(ordinal, model)?),
            Placement::Reference => Box::new(DeviceModel::new(Host, model)?),
        })
    }
}
