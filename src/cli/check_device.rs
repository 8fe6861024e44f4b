//! `condlm info MODEL --check-device DEVICE`: the model on a device beside the CPU path on the same rows — issue
//! 15's acceptance on a whole model rather than op by op (`--check-kernels`): logits in f32 and under `--compute
//! bf16`, KV-cache decoding against the full forward pass, greedy ids, and one step's LoRA (with dropout) and
//! full fine-tuning gradients. One line per comparison, as `--check-kernels` prints them (the error, how it is
//! measured, the tolerance); fails if any is off. The measures and tolerances are the README's "Issue 15's
//! acceptance is checked on whole models" decision.
use super::comparisons::{
    Check, Compared, DIFFERING, MAX_REL, NORM_REL, REL, compare, max_rel_err, norm_rel_err, run_checks,
};
use anyhow::{Result, bail};
use condlm::formats::load::load_model_as;
use condlm::formats::weights::BaseDtype;
use condlm::generate::decoder::Decoder;
use condlm::generate::{GenerateOptions, generate};
use condlm::kernels::backend::Backend;
use condlm::kernels::backend::host::Host;
use condlm::kernels::compute::{Compute, compute, set_compute};
use condlm::network::adapters::set_full_finetune;
use condlm::network::batch::Row;
use condlm::network::device::{DeviceModel, Placement, open_gpu};
use condlm::network::transformer::Transformer;
use condlm::train::parity::{cpu_step, device_step, grads, probe_rows, with_lora};

/// The model checked, and where.
struct Subject {
    spec: String,
    placement: Placement,
}

impl Subject {
    /// A fresh copy of the model, its matrices kept as `base` says.
    fn load(&self, base: BaseDtype) -> Result<Transformer> {
        Ok(load_model_as(&self.spec, base)?.model)
    }

    /// A fresh copy with LoRA of rank 4 on every linear layer (B non-zero) and `dropout`.
    fn with_lora(&self, dropout: f32) -> Result<Transformer> {
        with_lora(self.load(BaseDtype::Stored)?, dropout, 4)
    }
}

/// Runs every comparison of `spec` on `placement` against the CPU path, one line each.
pub fn run(spec: &str, placement: Placement) -> Result<()> {
    if placement == Placement::Cpu {
        bail!("--check-device compares a device with the CPU path: name one (cuda, cuda:N or reference)");
    }
    let checks: [(&str, Check<Subject>); 4] =
        [("logits", logits), ("greedy", greedy), ("lora", lora_gradients), ("full", full_gradients)];
    let subject = Subject { spec: spec.into(), placement };
    if let (Placement::Cuda(n), false) = (placement, cfg!(feature = "cuda")) {
        open_gpu(n, &subject.load(BaseDtype::Stored)?)?; // refuses, saying how to build with CUDA
    }
    let failed = run_checks(&format!("model {placement}"), &subject, &checks)?;
    if failed > 0 {
        bail!("--check-device: {failed} comparison(s) of {spec} on {placement} failed (see the FAILED lines above)");
    }
    Ok(())
}

/// Two sequences of 14 and 9 tokens below `vocab` (past Mistral's window of 4, short of Phi-4's 16 positions).
fn sequences(vocab: u32) -> [Vec<u32>; 2] {
    [(0..14).map(|p| (p * 31 + 7) % vocab).collect(), (0..9).map(|p| (p * 17 + 3) % vocab).collect()]
}

/// A decoder of `m` on `placement` with a slot per row of both sequences (every row's logits in one call).
fn decoder(m: &Transformer, placement: Placement) -> Result<Decoder<'_>> {
    Decoder::on(m, 24, 16, 24, placement)
}

/// The logits of every row of both sequences prefilled in one call, in slots `slot` and `slot + 1`, sequence after
/// sequence.
fn prefill(dec: &mut Decoder, slot: u32) -> Result<Vec<f32>> {
    let rows: Vec<Row> = sequences(dec.model().config.vocab_size as u32)
        .iter()
        .zip(slot..)
        .flat_map(|(s, slot)| s.iter().enumerate().map(move |(p, &token)| Row { slot, pos: p as u32, token }))
        .collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    Ok(dec.forward(&rows, &all)?.to_vec())
}

/// Both sequences decoded over the KV cache in slots `slot` and `slot + 1`: prefilled to 4 tokens, then one token of
/// each per call. Returns every call's logits of each sequence's last row, and the rows of a [`prefill`] (slot
/// 0) they stand for.
fn decode_stepwise(dec: &mut Decoder, slot: u32) -> Result<(Vec<f32>, Vec<usize>)> {
    let seqs = sequences(dec.model().config.vocab_size as u32);
    let prefix = 4;
    let (mut logits, mut prefill_rows) = (vec![], vec![]);
    for step in 0..=seqs[0].len() - prefix {
        // Step 0 prefills positions 0..prefix; step k ≥ 1 decodes position prefix − 1 + k.
        let positions = if step == 0 { 0..prefix } else { prefix - 1 + step..prefix + step };
        let (mut rows, mut last) = (vec![], vec![]);
        for (k, seq) in seqs.iter().enumerate() {
            let live = positions.clone().filter(|&p| p < seq.len());
            rows.extend(live.map(|p| Row { slot: slot + k as u32, pos: p as u32, token: seq[p] }));
            if positions.end <= seq.len() {
                last.push(rows.len() - 1);
                prefill_rows.push(seqs[..k].iter().map(Vec::len).sum::<usize>() + positions.end - 1);
            }
        }
        logits.extend_from_slice(dec.forward(&rows, &last)?);
    }
    Ok((logits, prefill_rows))
}

/// The device's logits against the CPU's (f32), its decoding over the KV cache against its own full forward pass,
/// and its logits under `--compute bf16` against the CPU's f32.
fn logits(s: &Subject, out: &mut Vec<Compared>) -> Result<()> {
    let m = s.with_lora(0.0)?;
    let want = prefill(&mut decoder(&m, Placement::Cpu)?, 0)?;
    let mut dec = decoder(&m, s.placement)?;
    let full = prefill(&mut dec, 0)?;
    compare(out, &format!("logits, f32, {} rows", want.len() / m.config.vocab_size), &full, &want, 1e-5);
    let (stepwise, rows) = decode_stepwise(&mut dec, 2)?;
    let v = m.config.vocab_size;
    let of_full: Vec<f32> = rows.iter().flat_map(|&r| &full[r * v..][..v]).copied().collect();
    compare(out, &format!("KV decoding vs full forward, {} rows", rows.len()), &stepwise, &of_full, 1e-5);
    drop(dec);
    let was = compute();
    set_compute(Compute::Bf16);
    let bf16 = decoder(&m, s.placement).and_then(|mut dec| prefill(&mut dec, 0));
    set_compute(was);
    let err = norm_rel_err(&bf16?, &want);
    out.push(Compared { name: "logits, --compute bf16 vs f32".into(), measure: NORM_REL, err, tol: 2e-2 });
    Ok(())
}

/// Greedy generation of 12 tokens from each of two prompts, decoded together, on the device against the CPU's ids.
fn greedy(s: &Subject, out: &mut Vec<Compared>) -> Result<()> {
    let loaded = load_model_as(&s.spec, BaseDtype::Stored)?;
    let (m, tok) = (with_lora(loaded.model, 0.0, 4)?, loaded.tokenizer);
    let prompts: Vec<Vec<u32>> = sequences(m.config.vocab_size as u32).iter().map(|q| q[..5].to_vec()).collect();
    let opts = GenerateOptions { batch: 2, stop_ids: vec![], ..GenerateOptions::greedy(12, 0) };
    let ids = |device| -> Result<Vec<u32>> {
        let generated = generate(&m, &tok, &prompts, &GenerateOptions { device, ..opts.clone() }, |_| {})?;
        Ok(generated.into_iter().flat_map(|g| g.ids).collect())
    };
    let (want, got) = (ids(Placement::Cpu)?, ids(s.placement)?);
    let differ = want.iter().zip(&got).filter(|(w, g)| w != g).count() + want.len().abs_diff(got.len());
    let name = format!("greedy ids, {} tokens", want.len());
    out.push(Compared { name, measure: DIFFERING, err: differ as f64, tol: 0.0 });
    Ok(())
}

/// One step on the same rows on the device (`dev`, uploaded from a model like `cpu`) and on the CPU path (`cpu`):
/// the losses, and the gradient of the trainable tensor furthest off, read back into `copy` (another such model).
fn gradients<B: Backend>(
    mut dev: DeviceModel<B>,
    mut cpu: Transformer,
    mut copy: Transformer,
    what: &str,
    tol: f64,
    out: &mut Vec<Compared>,
) -> Result<()> {
    let rows = probe_rows(cpu.config.vocab_size as u32);
    let want_loss = cpu_step(&mut cpu, &rows, 5, 0.0)?;
    let loss = device_step(&mut dev, &rows, 5, 0.0)?;
    out.push(Compared {
        name: format!("{what} loss"),
        measure: REL,
        err: ((loss - want_loss) / want_loss).abs(),
        tol: 1e-5,
    });
    dev.download_into(&mut copy, true)?;
    let (got, want) = (grads(&mut copy), grads(&mut cpu));
    if got.len() != want.len() || want.is_empty() {
        bail!("{} trainable tensors on the device, {} on the CPU", got.len(), want.len());
    }
    let (name, err) = got
        .iter()
        .zip(&want)
        .map(|((n, g), (_, w))| (n, max_rel_err(g, w)))
        .fold((&want[0].0, 0.0), |worst, (n, e)| if e > worst.1 { (n, e) } else { worst });
    let worst = if err > 0.0 { format!("worst {name}") } else { "all equal".into() };
    out.push(Compared {
        name: format!("{what} gradients of {} tensors, {worst}", want.len()),
        measure: MAX_REL,
        err,
        tol,
    });
    Ok(())
}

/// [`gradients`] with the model uploaded to the subject's device.
fn gradients_on(s: &Subject, cpu: Transformer, copy: Transformer, what: &str, out: &mut Vec<Compared>) -> Result<()> {
    match s.placement {
        Placement::Cuda(n) => gradients(open_gpu(n, &cpu)?, cpu, copy, what, 1e-4, out),
        _ => gradients(DeviceModel::new(Host, &cpu)?, cpu, copy, what, 1e-4, out),
    }
}

/// LoRA's gradients, dropout 0.1, f32.
fn lora_gradients(s: &Subject, out: &mut Vec<Compared>) -> Result<()> {
    gradients_on(s, s.with_lora(0.1)?, s.with_lora(0.1)?, "LoRA", out)
}

/// Full fine-tuning's gradients (every weight, the embeddings too), f32.
fn full_gradients(s: &Subject, out: &mut Vec<Compared>) -> Result<()> {
    let full = || -> Result<Transformer> {
        let mut m = s.load(BaseDtype::F32)?;
        set_full_finetune(&mut m, false);
        Ok(m)
    };
    gradients_on(s, full()?, full()?, "full", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_llama() -> Subject {
        let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-llama").into();
        Subject { spec, placement: Placement::Reference }
    }

    /// The gradient comparison can fail: a device model uploaded from other weights (one matrix of the base off by
    /// 1 %) is reported off, loss and gradients, while the same weights agree.
    #[test]
    fn gradients_of_other_weights_are_reported_off() {
        let s = tiny_llama();
        for (scale, off) in [(1.0, false), (1.01, true)] {
            let mut shifted = s.with_lora(0.1).unwrap();
            let w = shifted.params_mut().into_iter().find(|p| p.name.ends_with("layers.1.mlp.up_proj.weight")).unwrap();
            w.data.iter_mut().for_each(|v| *v *= scale);
            let dev = DeviceModel::new(Host, &shifted).unwrap();
            let mut out = vec![];
            gradients(dev, s.with_lora(0.1).unwrap(), s.with_lora(0.1).unwrap(), "LoRA", 1e-4, &mut out).unwrap();
            assert_eq!(out.len(), 2);
            for c in &out {
                assert_eq!(c.err > c.tol, off, "scale {scale}: {} {:e}", c.name, c.err);
            }
        }
    }
}
