//! Writes a model as a Hugging Face checkpoint folder that transformers (and condlm) load:
//! `config.json`, `model.safetensors` (every tensor under its HF name, in HF layout, F32), the tokenizer
//! files and, when the source has one, `generation_config.json`.
//!
//! - HF source: `config.json` and the tokenizer/generation files are copied byte for byte (the
//!   config already describes the model; a sharded source is written as one `model.safetensors`), and the
//!   tensors condlm does not run (a multimodal Qwen3.5's vision tower and MTP block) as the source stores them.
//!   A missing `tokenizer_config.json` is generated as for GGUF.
//! - GGUF source: `config.json` is generated from [`Config`] for `LlamaForCausalLM`, `Qwen2ForCausalLM`
//!   or `GPT2LMHeadModel`; `tokenizer.json` is the tokenizer condlm built from the GGUF metadata,
//!   serialized; `tokenizer_config.json` names BOS/EOS/PAD and carries the chat template.
//!
//! The weights are whatever the `Param`s hold (a fine-tuned or merged model is written as it is
//! now). GPT-2 Conv1D weights go back to their (in, out) layout; a tied model stores no
//! `lm_head.weight`. A model with LoRA adapters attached is refused: merge them first
//! ([`crate::network::adapters::merge`]) or save them as a PEFT adapter.
use super::gguf::file::GgufFile;
use super::resolve::ModelFiles;
use super::safetensors_files::SafetensorsFiles;
use super::trained_on::{self, TrainedOn};
use super::weights::is_gpt2_conv1d;
use crate::kernels::packed::PackedMatrix;
use crate::network::config::{Config, Family};
use crate::network::param::Param;
use crate::network::transformer::Transformer;
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, View};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Side files of an HF folder that are copied verbatim when present (tokenizer and generation
/// settings; the weights and config.json are handled separately).
const HF_SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// Writes `model` (with `tok`, loaded from `source`) as an HF checkpoint folder `dir`, atomically:
/// the folder appears complete or not at all, replacing an existing `dir` (callers decide whether
/// that is allowed, see `condlm merge`). `trained_on` is recorded in `condlm.json` ([`trained_on`]).
pub fn save_hf_folder(
    dir: &Path,
    model: &Transformer,
    tok: &TextTokenizer,
    source: &ModelFiles,
    trained_on: Option<TrainedOn>,
) -> Result<()> {
    let mut weights = weight_views(model)?;
    // the source's tensors outside the text model (a multimodal checkpoint's vision tower), as they are
    let source_files = match source {
        ModelFiles::HfDir(src) if model.config.keeps_tensors_as_is() => Some(SafetensorsFiles::open(src)?),
        _ => None,
    };
    if let Some(st) = &source_files {
        for name in st.names().filter(|n| model.config.is_kept_as_is(n)) {
            let (dtype, shape, bytes) = st.raw(name).context("an indexed tensor")?;
            let kept = OutTensor {
                shape: shape.to_vec(),
                data: &[],
                packed: None,
                transpose: None,
                stored: Some((dtype, bytes)),
            };
            weights.push((name, kept));
        }
    }
    let mut files: Vec<(&str, Vec<u8>)> = vec![];
    match source {
        ModelFiles::HfDir(src) => {
            let config = src.join("config.json");
            files.push((
                "config.json",
                std::fs::read(&config).with_context(|| format!("cannot read {}", config.display()))?,
            ));
            for name in HF_SIDE_FILES {
                let path = src.join(name);
                if path.is_file() {
                    files
                        .push((name, std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?));
                }
            }
            if !src.join("tokenizer_config.json").is_file() {
                files.push(("tokenizer_config.json", to_json(&tokenizer_config(model, tok, None))?));
            }
        }
        ModelFiles::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            let pad = gguf.opt_u32("tokenizer.ggml.padding_token_id")?;
            files.push(("config.json", to_json(&config_json(&model.config, pad)?)?));
            let tokenizer = tok
                .inner
                .to_string(true)
                .map_err(|e| anyhow::anyhow!("{}: cannot serialize the tokenizer: {e}", path.display()))?;
            files.push(("tokenizer.json", tokenizer.into_bytes()));
            files.push(("tokenizer_config.json", to_json(&tokenizer_config(model, tok, pad))?));
        }
    }
    if let Some(t) = trained_on {
        files.push((trained_on::FILE, t.file_bytes()));
    }
    crate::output::write_dir_atomic_with(dir, |tmp| {
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(weights, Some(metadata), &tmp.join("model.safetensors"))
            .with_context(|| format!("cannot write {}/model.safetensors", dir.display()))?;
        crate::output::write_files(tmp, dir, &files)
    })
}

fn to_json(v: &Value) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// One f32 tensor as a checkpoint stores it, converted to bytes only when the serializer asks, so
/// that at most one tensor's bytes exist besides the model and the output buffer.
pub struct OutTensor<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
    /// Set for a matrix kept packed (then `data` is empty): dequantized when written.
    packed: Option<&'a PackedMatrix>,
    /// Some((rows, cols)): `data` is (rows, cols) and is written transposed, as (cols, rows).
    transpose: Option<(usize, usize)>,
    /// A source tensor condlm does not run, written as the source stores it (type and bytes).
    stored: Option<(Dtype, &'a [u8])>,
}

impl<'a> OutTensor<'a> {
    /// `data` as it is, under `shape`.
    pub fn new(shape: Vec<usize>, data: &'a [f32]) -> Self {
        OutTensor { shape, data, packed: None, transpose: None, stored: None }
    }
}

impl View for OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.stored.map_or(Dtype::F32, |(dtype, _)| dtype)
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if let Some((_, bytes)) = self.stored {
            return Cow::Borrowed(bytes);
        }
        let data = match self.packed {
            Some(p) => Cow::Owned(p.to_f32()),
            None => Cow::Borrowed(self.data),
        };
        let mut out = Vec::with_capacity(self.data_len());
        match self.transpose {
            None => data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Some((rows, cols)) => {
                for c in 0..cols {
                    for r in 0..rows {
                        out.extend_from_slice(&data[r * cols + c].to_le_bytes());
                    }
                }
            }
        }
        Cow::Owned(out)
    }

    fn data_len(&self) -> usize {
        match self.stored {
            Some((_, bytes)) => bytes.len(),
            None => self.shape.iter().product::<usize>() * 4,
        }
    }
}

/// Every base tensor of the model in a fixed order (the read-only twin of `Transformer::params_mut`,
/// without adapters).
pub fn base_params(model: &Transformer) -> Vec<&Param> {
    let mut out = vec![&model.embed];
    out.extend(model.pos_embed.as_ref());
    for b in &model.blocks {
        for n in [&b.attn_norm, &b.mlp_norm].into_iter().flatten() {
            out.push(&n.w);
            out.extend(n.b.as_ref());
        }
        out.extend(b.post_norms.iter().flat_map(|(a, m)| [&a.w, &m.w]));
        out.extend(b.qk_norm.iter().flat_map(|(q, k)| [&q.w, &k.w]));
        out.extend(b.delta_net.iter().flat_map(|dn| dn.params()));
        for l in b.linears() {
            out.push(&l.w);
            out.extend(l.b.as_ref());
        }
    }
    out.push(&model.final_norm.w);
    out.extend(model.final_norm.b.as_ref());
    out.extend(model.lm_head.as_ref());
    out
}

/// The tensors of `model.safetensors`: every tensor under its HF name and in HF layout, F32 (written with
/// metadata {"format": "pt"}), streamed to the file one tensor at a time.
fn weight_views(model: &Transformer) -> Result<Vec<(&str, OutTensor<'_>)>> {
    if let Some(l) = model.blocks.iter().flat_map(|b| b.linears()).find(|l| l.lora.is_some()) {
        bail!(
            "the model has LoRA adapters attached ({} and others): merge them into the base weights first \
             (lora::merge / `condlm merge`), or save them as a PEFT adapter",
            l.name
        );
    }
    let mut names = BTreeSet::new();
    let mut tensors = Vec::new();
    for p in base_params(model) {
        if !names.insert(p.name.as_str()) {
            bail!("two tensors of the model are both named {}", p.name);
        }
        if p.packed.is_none() && p.shape.iter().product::<usize>() != p.data.len() {
            bail!("tensor {} holds {} values but has shape {:?}", p.name, p.data.len(), p.shape);
        }
        let packed = p.packed.as_ref();
        let t = if model.config.family == Family::Gpt2 && p.shape.len() == 2 && is_gpt2_conv1d(&p.name) {
            // Held as (out, in) like nn.Linear; Conv1D stores (in, out).
            let shape = vec![p.shape[1], p.shape[0]];
            OutTensor { shape, data: &p.data, packed, transpose: Some((p.shape[0], p.shape[1])), stored: None }
        } else {
            OutTensor { shape: p.shape.clone(), data: &p.data, packed, transpose: None, stored: None }
        };
        tensors.push((p.name.as_str(), t));
    }
    Ok(tensors)
}

/// A float from an f32 field, written with the f32's shortest decimal form (1e-5, not 9.99999974e-6).
fn f32_json(x: f32) -> Value {
    x.to_string().parse::<f64>().map(Value::from).unwrap_or(Value::Null)
}

/// config.json token id fields: null, one id, or a list.
fn ids_json(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

/// A transformers `config.json` for `c` (used for GGUF sources, which carry none). `pad` is the
/// padding token id, if known.
pub fn config_json(c: &Config, pad: Option<u32>) -> Result<Value> {
    let arch = c.architecture.to_lowercase();
    let common = |v: &mut Value| {
        v["vocab_size"] = json!(c.vocab_size);
        v["tie_word_embeddings"] = json!(c.tie_embeddings);
        v["bos_token_id"] = json!(c.bos_token_id);
        v["eos_token_id"] = ids_json(&c.eos_token_ids);
        v["pad_token_id"] = json!(pad);
        v["torch_dtype"] = json!("float32");
        v["use_cache"] = json!(true);
    };
    let mut v = match c.family {
        Family::Llama => {
            let (architecture, model_type) = match arch.as_str() {
                "llama" | "llamaforcausallm" => ("LlamaForCausalLM", "llama"),
                "qwen2" | "qwen2forcausallm" => ("Qwen2ForCausalLM", "qwen2"),
                "qwen3" | "qwen3forcausallm" => ("Qwen3ForCausalLM", "qwen3"),
                "gemma3" | "gemma3forcausallm" => ("Gemma3ForCausalLM", "gemma3_text"),
                "phi3" | "phi3forcausallm" => ("Phi3ForCausalLM", "phi3"),
                "smollm3" | "smollm3forcausallm" => ("SmolLM3ForCausalLM", "smollm3"),
                // llama.cpp's olmo2 is OLMo 3 when it has a window
                "olmo2" if c.sliding_window.is_some() => ("Olmo3ForCausalLM", "olmo3"),
                "olmo2" | "olmo2forcausallm" => ("Olmo2ForCausalLM", "olmo2"),
                "olmo3" | "olmo3forcausallm" => ("Olmo3ForCausalLM", "olmo3"),
                "qwen35" | "qwen3_5forcausallm" => ("Qwen3_5ForCausalLM", "qwen3_5_text"),
                other => bail!(
                    "cannot write a config.json for architecture \"{other}\" (supported: llama, qwen2, qwen3, \
                     gemma3, phi3, smollm3, olmo2, olmo3, qwen35, gpt2)"
                ),
            };
            let mut v = json!({
                "architectures": [architecture],
                "model_type": model_type,
                "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size,
                "num_hidden_layers": c.num_layers,
                "num_attention_heads": c.num_heads,
                "num_key_value_heads": c.num_kv_heads,
                "head_dim": c.head_dim,
                "max_position_embeddings": c.max_positions,
                "rms_norm_eps": f32_json(c.norm_eps),
                "rope_theta": f32_json(c.rope_theta),
                "rope_scaling": c.rope_scaling.map(|s| json!({
                    "rope_type": "llama3",
                    "factor": f32_json(s.factor),
                    "low_freq_factor": f32_json(s.low_freq_factor),
                    "high_freq_factor": f32_json(s.high_freq_factor),
                    // an integer in every release; a value recovered from a GGUF's divisors may not be
                    "original_max_position_embeddings": match s.original_max_position_embeddings {
                        o if o.fract() == 0.0 => json!(o as u64),
                        o => f32_json(o),
                    },
                })),
                "hidden_act": "silu",
                "attention_dropout": 0.0,
                "initializer_range": 0.02,
            });
            if let Some(k) = c.rope_linear_factor {
                v["rope_scaling"] = json!({"rope_type": "linear", "factor": f32_json(k)});
            }
            if let Some(y) = &c.yarn {
                v["rope_scaling"] = json!({
                    "rope_type": "yarn",
                    "factor": f32_json(y.factor),
                    "original_max_position_embeddings": y.original_max_positions,
                    "attention_factor": f32_json(y.attention_factor),
                    "beta_fast": f32_json(y.beta_fast),
                    "beta_slow": f32_json(y.beta_slow),
                    "truncate": y.truncate,
                });
            }
            if model_type == "qwen2" {
                if !c.qkv_bias || c.o_bias || c.mlp_bias {
                    bail!(
                        "a Qwen2 model has q/k/v biases and no o_proj/MLP biases; this one (q/k/v {}, o {}, mlp {}) \
                         cannot be written as Qwen2ForCausalLM",
                        c.qkv_bias,
                        c.o_bias,
                        c.mlp_bias
                    );
                }
                v["use_sliding_window"] = json!(false);
                v["sliding_window"] = json!(c.sliding_window);
                v["max_window_layers"] = json!(c.num_layers);
            } else if model_type == "gemma3_text" {
                let kind = |sliding: bool| if sliding { "sliding_attention" } else { "full_attention" };
                let scale = c.attn_scale.unwrap_or(1.0 / (c.head_dim as f32).sqrt()) as f64;
                // its RoPE goes in rope_parameters by layer type (transformers would take a rope_scaling instead)
                if let Some(o) = v.as_object_mut() {
                    o.remove("hidden_act");
                    o.remove("rope_theta");
                    o.remove("rope_scaling");
                }
                v["hidden_activation"] = json!("gelu_pytorch_tanh");
                // transformers reads an integer (its config dataclass refuses 256.0).
                v["query_pre_attn_scalar"] = json!((1.0 / (scale * scale)).round() as u64);
                // transformers builds the sliding mask whatever the layers are: a model without a window (every
                // layer global) needs a number there too
                v["sliding_window"] = json!(c.sliding_window.unwrap_or(c.max_positions));
                v["layer_types"] = json!((0..c.num_layers).map(|i| kind(c.local_rope(i))).collect::<Vec<_>>());
                let global = match c.rope_linear_factor {
                    Some(k) => {
                        json!({"rope_type": "linear", "factor": f32_json(k), "rope_theta": f32_json(c.rope_theta)})
                    }
                    None => json!({"rope_type": "default", "rope_theta": f32_json(c.rope_theta)}),
                };
                v["rope_parameters"] = json!({
                    "full_attention": global,
                    "sliding_attention": {
                        "rope_type": "default",
                        "rope_theta": f32_json(c.rope_local_theta.unwrap_or(c.rope_theta)),
                    },
                });
                v["attention_bias"] = json!(c.qkv_bias);
            } else if model_type == "phi3" {
                if c.qkv_bias || c.o_bias || c.mlp_bias {
                    bail!("a Phi-3 model has no biases; this one cannot be written as Phi3ForCausalLM");
                }
                v["partial_rotary_factor"] = json!(c.rotary_dim as f64 / c.head_dim as f64);
                v["sliding_window"] = json!(c.sliding_window);
                if let Some(l) = &c.longrope {
                    v["original_max_position_embeddings"] = json!(l.original_max_positions);
                    v["rope_scaling"] = json!({
                        "type": "longrope",
                        "short_factor": l.short_factor.iter().map(|&f| f32_json(f)).collect::<Vec<_>>(),
                        "long_factor": l.long_factor.iter().map(|&f| f32_json(f)).collect::<Vec<_>>(),
                        "attention_factor": f32_json(l.attention_factor),
                    });
                }
            } else if model_type == "smollm3" {
                v["no_rope_layers"] = json!((0..c.num_layers).map(|i| u8::from(c.rope_in(i))).collect::<Vec<_>>());
                v["attention_bias"] = json!(c.qkv_bias);
                v["mlp_bias"] = json!(c.mlp_bias);
                v["use_sliding_window"] = json!(false);
            } else if model_type == "qwen3" {
                v["attention_bias"] = json!(c.qkv_bias);
                v["use_sliding_window"] = json!(false);
            } else if model_type == "qwen3_5_text" {
                qwen35_config(c, &mut v)?;
            } else if model_type.starts_with("olmo") {
                if c.qkv_bias != c.o_bias || c.mlp_bias {
                    bail!(
                        "OLMo's attention_bias covers q, k, v and o together and its MLP has no biases; this model \
                         (q/k/v {}, o {}, mlp {}) cannot be written as {architecture}",
                        c.qkv_bias,
                        c.o_bias,
                        c.mlp_bias
                    );
                }
                v["attention_bias"] = json!(c.qkv_bias);
                if model_type == "olmo3" {
                    let kind = |sliding: bool| if sliding { "sliding_attention" } else { "full_attention" };
                    // YaRN (written above as rope_scaling) applies to the full-attention layers only
                    let mut full = match v["rope_scaling"].take() {
                        serde_json::Value::Null => json!({"rope_type": "default"}),
                        scaling => scaling,
                    };
                    full["rope_theta"] = f32_json(c.rope_theta);
                    if let Some(o) = v.as_object_mut() {
                        o.remove("rope_theta");
                        o.remove("rope_scaling");
                    }
                    v["sliding_window"] = json!(c.sliding_window);
                    v["layer_types"] = json!((0..c.num_layers).map(|i| kind(c.local_rope(i))).collect::<Vec<_>>());
                    v["rope_parameters"] = json!({
                        "full_attention": full,
                        "sliding_attention": {
                            "rope_type": "default",
                            "rope_theta": f32_json(c.rope_local_theta.unwrap_or(c.rope_theta)),
                        },
                    });
                }
            } else {
                if c.qkv_bias != c.o_bias {
                    bail!(
                        "LlamaForCausalLM's attention_bias covers q, k, v and o together; this model has q/k/v \
                         biases {} but o_proj bias {}, which its config.json cannot express",
                        c.qkv_bias,
                        c.o_bias
                    );
                }
                v["attention_bias"] = json!(c.qkv_bias);
                v["mlp_bias"] = json!(c.mlp_bias);
                v["pretraining_tp"] = json!(1);
            }
            v
        }
        Family::Gpt2 => json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": c.hidden_size,
            "n_layer": c.num_layers,
            "n_head": c.num_heads,
            "n_inner": c.intermediate_size,
            "n_positions": c.max_positions,
            "n_ctx": c.max_positions,
            "layer_norm_epsilon": f32_json(c.norm_eps),
            "activation_function": "gelu_new",
            "initializer_range": 0.02,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
        }),
    };
    common(&mut v);
    Ok(v)
}

/// Qwen3_5TextConfig's keys: the layer kinds, the Gated DeltaNet's shape, and its RoPE in `rope_parameters` (a
/// quarter of each head, the multimodal sections text rotates as one).
fn qwen35_config(c: &Config, v: &mut Value) -> Result<()> {
    let Some(s) = &c.delta_net else { bail!("a Qwen3.5 model without its Gated DeltaNet shape") };
    if c.qkv_bias != c.o_bias || c.mlp_bias {
        bail!("Qwen3.5's attention_bias covers q, k, v and o together and its MLP has no biases");
    }
    let kind = |linear: bool| if linear { "linear_attention" } else { "full_attention" };
    let mut rope = json!({
        "rope_type": "default",
        "rope_theta": f32_json(c.rope_theta),
        "partial_rotary_factor": c.rotary_dim as f64 / c.head_dim as f64,
        "mrope_interleaved": true,
    });
    if !c.rope_sections.is_empty() {
        rope["mrope_section"] = json!(c.rope_sections);
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("rope_theta");
        o.remove("rope_scaling");
    }
    v["rope_parameters"] = rope;
    v["attention_bias"] = json!(c.qkv_bias);
    v["layer_types"] = json!((0..c.num_layers).map(|i| kind(c.is_linear_layer(i))).collect::<Vec<_>>());
    v["linear_conv_kernel_dim"] = json!(s.conv_kernel);
    v["linear_key_head_dim"] = json!(s.k_head_dim);
    v["linear_value_head_dim"] = json!(s.v_head_dim);
    v["linear_num_key_heads"] = json!(s.k_heads);
    v["linear_num_value_heads"] = json!(s.v_heads);
    Ok(())
}

/// A `tokenizer_config.json` naming the special tokens (GGUF sources, or HF folders without one).
/// `add_bos_token` mirrors what the tokenizer's post-processor already does, so loading it back
/// gives the same BOS behaviour in condlm and transformers.
fn tokenizer_config(model: &Transformer, tok: &TextTokenizer, pad: Option<u32>) -> Value {
    let name = |id: Option<u32>| id.and_then(|i| tok.inner.id_to_token(i));
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": !tok.prefix.is_empty(),
        "add_eos_token": false,
        "bos_token": name(model.config.bos_token_id),
        "eos_token": name(Some(tok.eos_id)),
        "pad_token": name(pad),
        "chat_template": tok.chat_template,
        "model_max_length": model.config.max_positions,
        "clean_up_tokenization_spaces": false,
    })
}

/// Whether `dir` may receive an export: it does not exist or is an empty folder, or `force` is set and it holds
/// only what a model folder holds (an earlier export: its contents are replaced; any other file means the folder
/// is something else, and is refused). Never when it is, or contains, one of `protected` (the model and adapter
/// being read), whatever `force` says.
pub fn check_out_dir(dir: &Path, force: bool, protected: &[&Path]) -> Result<()> {
    if dir.as_os_str().is_empty() {
        bail!("the output folder path is empty");
    }
    crate::output::check_no_interrupted_replacement(dir)?;
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        bail!("{}: exists and is not a folder", dir.display());
    }
    let canon = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
    for p in protected {
        if let Ok(pc) = p.canonicalize()
            && pc.starts_with(&canon)
        {
            bail!(
                "{}: the output folder would replace {}, which is an input of this command; choose another --out",
                dir.display(),
                p.display()
            );
        }
    }
    let entries: Vec<std::fs::DirEntry> =
        std::fs::read_dir(dir).and_then(|d| d.collect()).with_context(|| format!("cannot list {}", dir.display()))?;
    // Foreign files first: --force would not help, so it is not suggested.
    if let Some(other) = entries.iter().find(|e| !is_model_folder_file(e)) {
        bail!(
            "{}: the folder holds {}, which is not part of a model folder; --force replaces only an earlier model \
             folder (as merge writes it). Choose another --out, or empty the folder yourself",
            dir.display(),
            other.file_name().to_string_lossy()
        );
    }
    if !entries.is_empty() && !force {
        bail!(
            "{}: the folder exists and is not empty; its contents would be replaced — pass --force to allow that, \
             or choose another --out",
            dir.display()
        );
    }
    Ok(())
}

/// Whether a folder entry is a file an HF model folder holds (what `save_hf_folder` writes, shards included).
fn is_model_folder_file(e: &std::fs::DirEntry) -> bool {
    let name = e.file_name().to_string_lossy().into_owned();
    let known = ["config.json", "model.safetensors", "model.safetensors.index.json", trained_on::FILE];
    let shard = name.starts_with("model-") && name.ends_with(".safetensors");
    e.file_type().is_ok_and(|t| t.is_file())
        && (known.contains(&name.as_str()) || HF_SIDE_FILES.contains(&name.as_str()) || shard)
}
