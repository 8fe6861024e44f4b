//! `condlm export-gguf`: a model (a base with an adapter merged in, or a full fine-tune) as one GGUF file for
//! llama.cpp, Ollama and LM Studio; or, with `--lora-only`, the adapter alone in llama.cpp's LoRA format.
//! The file is written to a temporary name in the same folder and renamed when complete.
use super::AdapterArgs;
use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use condlm::data::chat::{ChatTemplate, GenerationPrompt};
use condlm::data::records::ALPACA_PROMPT_NO_INPUT;
use condlm::formats::gguf::export::{
    ExportTensor, gguf_arch, model_metadata, model_tensors, type_counts, write_export,
};
use condlm::formats::gguf::export_lora::{adapter_metadata, adapter_tensors, lora_alpha};
use condlm::formats::gguf::export_vocab::{check_pre_name, check_vocab_from, tokenizer_metadata};
use condlm::formats::gguf::file::MetaValue;
use condlm::formats::gguf::modelfile::modelfile;
use condlm::formats::load::load_model;
use condlm::formats::resolve::ModelFiles;
use condlm::formats::trained_on::TrainedOn;
use condlm::kernels::dequant::GgmlType;
use condlm::network::adapters;
use condlm::output::check_not_an_input;
use condlm::progress;
use condlm::tokenizer::TextTokenizer;
use std::path::{Path, PathBuf};

/// Write a model as a GGUF file for llama.cpp / Ollama / LM Studio: --model with --adapter merged in (or a full
/// fine-tune's model folder on its own), or with --lora-only just the adapter in llama.cpp's LoRA format.
#[derive(Args)]
pub struct ExportGgufArgs {
    /// Base model: an HF checkpoint folder, a .gguf file, or a hub id org/name (from the HF cache, downloaded when online).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// The GGUF file to write (written to a temporary name, renamed when complete).
    #[arg(long)]
    out: PathBuf,
    /// Type of the weight matrices. Norms and biases stay F32; below 8 bits the output matrix is Q6_K, and rows
    /// that do not divide into the type's blocks take llama.cpp's fallback (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0,
    /// else F16). An adapter (--lora-only) takes f32, f16 or bf16.
    #[arg(long = "type", value_enum, default_value_t = TypeArg::F16)]
    ty: TypeArg,
    /// Write only the adapter (--adapter required) as a llama.cpp LoRA GGUF, for `llama-cli -m BASE.gguf --lora
    /// OUT` [default: off: the merged model].
    #[arg(long, requires = "adapter")]
    lora_only: bool,
    /// Also write an Ollama Modelfile named Modelfile next to --out [default: off].
    #[arg(long, conflicts_with = "lora_only")]
    modelfile: bool,
    /// llama.cpp's pre-tokenizer name (tokenizer.ggml.pre), for an HF tokenizer whose pre-tokenizer condlm cannot
    /// name itself; a name llama.cpp does not know, or one that splits text otherwise than a tokenizer condlm
    /// recognises, is refused [default: from the source: copied from a GGUF, recognised in tokenizer.json].
    #[arg(long)]
    tokenizer_pre: Option<String>,
    /// Copy the tokenizer (the tokenizer.* keys) from this GGUF file instead of building it from the model's
    /// tokenizer.json: the GGUF of the base a model was fine-tuned from, for a SentencePiece tokenizer (Gemma,
    /// Llama 2, Mistral, Phi-3), whose GGUF vocabulary condlm does not write itself. Refused unless its tokens are
    /// the model's, id for id (then at most padding up to the embedding rows) [default: off: from the model's own
    /// files].
    #[arg(long, value_name = "GGUF", conflicts_with = "lora_only")]
    vocab_from: Option<PathBuf>,
    /// general.name in the file [default: the --out file name without extension].
    #[arg(long)]
    name: Option<String>,
    /// Replace --out (and the Modelfile) if they exist [default: off: an existing file is an error].
    #[arg(long)]
    overwrite: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum TypeArg {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q6_k")]
    Q6K,
    #[value(name = "q5_k")]
    Q5K,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q4_k")]
    Q4K,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q4_0")]
    Q4_0,
}

impl TypeArg {
    fn ggml(self) -> GgmlType {
        match self {
            TypeArg::F32 => GgmlType::F32,
            TypeArg::F16 => GgmlType::F16,
            TypeArg::Bf16 => GgmlType::BF16,
            TypeArg::Q8_0 => GgmlType::Q8_0,
            TypeArg::Q6K => GgmlType::Q6_K,
            TypeArg::Q5K => GgmlType::Q5_K,
            TypeArg::Q5_1 => GgmlType::Q5_1,
            TypeArg::Q5_0 => GgmlType::Q5_0,
            TypeArg::Q4K => GgmlType::Q4_K,
            TypeArg::Q4_1 => GgmlType::Q4_1,
            TypeArg::Q4_0 => GgmlType::Q4_0,
        }
    }
}

pub fn run(a: ExportGgufArgs) -> Result<()> {
    condlm::output::remove_partial_outputs_on_signal()?;
    let start = std::time::Instant::now();
    let modelfile_path = a.out.with_file_name("Modelfile");
    check_out(&a, &modelfile_path)?;
    if let Some(pre) = &a.tokenizer_pre {
        check_pre_name(pre)?;
    }
    let ty = a.ty.ggml();
    let mut m = load_model(&a.model)?;
    let cfg = a.adapter.apply(&a.model, &mut m)?;
    let arch = gguf_arch(&m.model.config)?;
    let c = &m.model.config;
    // Gemma 3's and OLMo 3's windows are in the file (llama.cpp runs them); llama and qwen2 have no key for one
    if let Some(w) = c.sliding_window.filter(|&w| w < c.max_positions && !matches!(arch, "gemma3" | "olmo2")) {
        // llama.cpp's llama and qwen2 graphs attend over the whole context, as its own converter writes them.
        eprintln!(
            "warning: the model attends within a sliding window of {w} positions (sliding_window in config.json); \
             llama.cpp (and condlm) run this {arch} GGUF with full causal attention, which computes the same only for \
             sequences of up to {w} tokens: keep its context (-c) at {w} or below, or use the HF folder"
        );
    }
    let name = a.name.clone().unwrap_or_else(|| a.out.file_stem().unwrap_or_default().to_string_lossy().into_owned());
    let (metadata, tensors, what): (Vec<(String, MetaValue)>, Vec<ExportTensor<'_>>, String);
    if a.lora_only {
        let alpha = lora_alpha(&m.model)?;
        metadata = adapter_metadata(arch, &name, alpha);
        tensors = adapter_tensors(&m.model, arch, ty, alpha)?;
        what = format!("LoRA adapter ({} matrices, alpha {alpha}) for {arch}", tensors.len() / 2);
    } else {
        if cfg.is_some() {
            warn_if_requantized(m.model.blocks[0].qkv[0].w.dtype(), ty);
            adapters::merge(&mut m.model)?;
        } else if let Some(base) = TrainedOn::of_model(&m.files, None)?.and_then(|t| t.quantized_base) {
            warn_if_fine_tune_rounded(base, ty);
        }
        let mut md = model_metadata(&m.model.config, arch, &name, ty);
        let vocab = match &a.vocab_from {
            Some(gguf) => {
                check_vocab_from(gguf, &m.tokenizer, &m.model.config)?;
                ModelFiles::Gguf(gguf.clone())
            }
            None => m.files.clone(),
        };
        md.extend(tokenizer_metadata(&vocab, &m.tokenizer, &m.model.config, a.tokenizer_pre.as_deref())?);
        metadata = md;
        tensors = model_tensors(&m.model, arch, ty)?;
        what = format!("{arch} model{}", if cfg.is_some() { " with the adapter merged" } else { "" });
    }
    let bar = progress::bar(tensors.len() as u64, "{spinner} writing {pos}/{len} tensors [{bar:30}] ETA {eta}");
    condlm::output::write_atomic_with(&a.out, |w| write_export(w, &metadata, &tensors, || bar.inc(1)))?;
    bar.finish_and_clear();
    if a.modelfile {
        let eos = m.tokenizer.inner.id_to_token(m.tokenizer.eos_id).unwrap_or_default();
        let file_name = a.out.file_name().unwrap_or_default().to_string_lossy();
        let trained_on = TrainedOn::of_model(&m.files, a.adapter.adapter.as_deref())?;
        let template = m.tokenizer.chat_template.as_deref();
        let system = default_system(&m.tokenizer);
        let text = modelfile(&file_name, template, system.as_deref(), &eos, trained_on, ALPACA_PROMPT_NO_INPUT);
        condlm::output::write_atomic(&modelfile_path, text.as_bytes())?;
    }
    let bytes = std::fs::metadata(&a.out).map(|md| md.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({what}; {} tensors: {}; {:.1} MB{}) in {:.1}s",
        a.out.display(),
        tensors.len(),
        type_counts(&tensors),
        bytes as f64 / 1e6,
        if a.modelfile {
            format!("; Ollama: ollama create NAME -f {}", modelfile_path.display())
        } else {
            String::new()
        },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Merging into a base stored in a block-quantized type and writing the result in a type no finer snaps changes
/// smaller than half a quantization step back onto the base's grid: most of a LoRA's effect.
fn warn_if_requantized(base: GgmlType, ty: GgmlType) {
    let quantized = |t: GgmlType| !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    let bits = |t: GgmlType| t.type_size() as f64 * 8.0 / t.block_size() as f64;
    if quantized(base) && quantized(ty) && bits(ty) <= bits(base) {
        eprintln!(
            "warning: the base's matrices are {base} and the merged ones are written as {ty}: an adapter's change \
             smaller than half a quantization step is lost on requantization{} (measured on SmolLM2 Q4_1 with an E2E \
             adapter: NLL/token 1.64 merged in F32, 3.00 as Q4_1, 2.07 as Q4_0, 1.65 as Q8_0). Prefer a finer --type \
             (q8_0, q6_k, f16), or keep the base and ship the adapter with --lora-only",
            if base == ty { ", and in the same type it snaps back to the base's own value" } else { "" }
        );
    }
}

/// A full fine-tune of a block-quantized base (recorded by `condlm train --full`) written in any type but F32: its
/// weights are the base's grid values moved by training, and rounding them again moves them by as much or more —
/// F16/BF16 push values that sat on their midpoints half a step further along the gradient, a quantized type snaps
/// them back toward a grid. Which type hurts least depends on the base, so only F32 is safe to recommend.
fn warn_if_fine_tune_rounded(base: GgmlType, ty: GgmlType) {
    if ty != GgmlType::F32 {
        eprintln!(
            "warning: this model was fully fine-tuned from a {base} base and is written as {ty}: rounding its weights \
             again moves them about as far as training did (measured off the fine-tune, nats per y token: Gemma 3 \
             270M Q4_K_M after 2 steps, 4.9e-2 as F16 vs 5.6e-4 as F32; tiny Llama Q4_0 after 4 steps, 5.7e-2 as \
             Q8_0, 0.35 as Q4_0 or Q5_0). Prefer --type f32"
        );
    }
}

/// The system message a ChatML chat template writes into a conversation that has none (SmolLM2's "You are a
/// helpful AI assistant named SmolLM…"): its rendering of one user turn, when that starts with a system turn.
/// Any other template, or one that does not render, has none here (the export does not depend on it).
fn default_system(tok: &TextTokenizer) -> Option<String> {
    if !tok.chat_template.as_deref()?.contains("<|im_start|>") {
        return None;
    }
    let template = ChatTemplate::for_tokenizer(tok).ok()??;
    let user = minijinja::Value::from_pairs([("role", "user"), ("content", "?")]);
    let text = template.render(&[user], None, GenerationPrompt::Omit).ok()?;
    let (system, _) = text.strip_prefix("<|im_start|>system\n")?.split_once("<|im_end|>")?;
    Some(system.to_string())
}

/// Refuses an --out (or Modelfile) that exists without --overwrite, and an --out that is an input.
fn check_out(a: &ExportGgufArgs, modelfile_path: &Path) -> Result<()> {
    let inputs: Vec<&Path> = [Path::new(&a.model)].into_iter().chain(a.adapter.adapter.as_deref()).collect();
    check_not_an_input(&a.out, &inputs)?;
    if a.out.is_dir() {
        bail!(
            "--out {} is a folder; give the GGUF file to write, e.g. {}/model.gguf",
            a.out.display(),
            a.out.display()
        );
    }
    for p in [Some(a.out.as_path()), a.modelfile.then_some(modelfile_path)].into_iter().flatten() {
        if p.exists() && !a.overwrite {
            bail!("{} exists; pass --overwrite to replace it, or choose another --out", p.display());
        }
    }
    Ok(())
}
