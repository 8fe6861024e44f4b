//! Builds a `Transformer` from a `Config` and `Weights`, checking every tensor's presence, shape and
//! values (finite, after dequantization) and refusing tensors the model would silently ignore.
use super::gguf::quantize::quantize;
use super::weights::{BaseDtype, Weights, check_finite, is_gpt2_conv1d, transpose};
use crate::kernels::dequant::GgmlType;
use crate::kernels::packed::PackedMatrix;
use crate::kernels::weight_bytes::SharedBytes;
use crate::network::config::{Config, DeltaNetShape, Family};
use crate::network::delta_net::DeltaNet;
use crate::network::linear::Linear;
use crate::network::param::Param;
use crate::network::transformer::{Block, Norm, Transformer};
use anyhow::{Result, anyhow, bail};
use std::collections::BTreeSet;

/// Whether a layer has a bias tensor besides its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bias {
    With,
    Without,
}

impl From<bool> for Bias {
    fn from(has_bias: bool) -> Self {
        if has_bias { Bias::With } else { Bias::Without }
    }
}

/// Pulls tensors out of a checkpoint by HF name, remembering which were used.
struct Taker<'a> {
    weights: &'a Weights,
    base: BaseDtype,
    /// Prefix the file uses for GPT-2 ("transformer." or none, as in the original OpenAI upload).
    file_prefix: String,
    used: BTreeSet<String>,
}

impl Taker<'_> {
    fn file_name(&self, canonical: &str) -> String {
        match canonical.strip_prefix("transformer.") {
            Some(rest) => format!("{}{rest}", self.file_prefix),
            None => canonical.to_string(),
        }
    }

    /// The tensor `name` (canonical HF name) with the expected shape, or `None` if absent.
    fn maybe(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        let file_name = self.file_name(name);
        let Some(t) = self.weights.load(&file_name)? else { return Ok(None) };
        if t.shape != shape {
            bail!(
                "{}: tensor {file_name} has shape {:?}, but the model config implies {:?}; \
                 the config.json and weights do not belong together",
                self.weights.path().display(),
                t.shape,
                shape
            );
        }
        // A NaN or ∞ in a weight would come out as an NLL of NaN with exit code 0.
        check_finite(&t.data).map_err(|e| {
            anyhow!(
                "{}: tensor {file_name} {e}: the file is damaged or the training that made it diverged",
                self.weights.path().display()
            )
        })?;
        self.used.insert(file_name);
        Ok(Some(t.data))
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.maybe(name, shape)? {
            Some(v) => Ok(v),
            None => bail!(
                "{}: tensor {} is missing; the checkpoint is incomplete or not a {} model",
                self.weights.path().display(),
                self.file_name(name),
                "supported"
            ),
        }
    }

    /// A tensor as a `Param` named by its canonical HF name.
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<Param> {
        Ok(Param::new(name, shape.to_vec(), self.take(name, shape)?))
    }

    /// A (rows, cols) matrix outside the blocks (the embeddings, the LM head): packed when the checkpoint stores
    /// it so and the base keeps that form, else f32.
    fn matrix_param(&mut self, name: &str, rows: usize, cols: usize) -> Result<Param> {
        match self.packed(name, rows, cols)? {
            Some(p) => Ok(Param::new_packed(name, p)),
            None => self.param(name, &[rows, cols]),
        }
    }

    /// A linear layer `module` with HF weight shape (out, in), or (in, out) for GPT-2 Conv1D —
    /// which is transposed here, so every `Linear` holds (out, in). Its weight is kept as `self.base` says.
    fn linear(&mut self, module: &str, in_dim: usize, out_dim: usize, bias: Bias) -> Result<Linear> {
        let wname = format!("{module}.weight");
        let w = match self.packed(&wname, out_dim, in_dim)? {
            Some(p) => Param::new_packed(wname, p),
            None => {
                let w = if is_gpt2_conv1d(&wname) {
                    transpose(&self.take(&wname, &[in_dim, out_dim])?, in_dim, out_dim)
                } else {
                    self.take(&wname, &[out_dim, in_dim])?
                };
                match self.base {
                    BaseDtype::Bf16 => {
                        let bytes = SharedBytes::owned(quantize(GgmlType::BF16, &w)?);
                        let packed =
                            PackedMatrix::new(GgmlType::BF16, out_dim, in_dim, bytes).map_err(|e| anyhow!(e))?;
                        Param::new_packed(wname, packed)
                    }
                    BaseDtype::Stored | BaseDtype::F32 => Param::new(wname, vec![out_dim, in_dim], w),
                }
            }
        };
        let b = self.bias(module, out_dim, bias)?;
        Ok(Linear { name: module.to_string(), w, b, lora: None, in_dim, out_dim })
    }

    /// Matrix `name` (out, in) in its stored form when the base keeps it so (`BaseDtype::Stored` and a packed
    /// stored type), checked like [`Self::maybe`].
    fn packed(&mut self, name: &str, out_dim: usize, in_dim: usize) -> Result<Option<PackedMatrix>> {
        if self.base != BaseDtype::Stored {
            return Ok(None);
        }
        let file_name = self.file_name(name);
        let Some(p) = self.weights.load_packed(&file_name)? else { return Ok(None) };
        let path = self.weights.path().display();
        if (p.rows, p.cols) != (out_dim, in_dim) {
            bail!(
                "{path}: tensor {file_name} holds a ({}, {}) matrix, but the model config implies ({out_dim}, \
                 {in_dim}); the config and weights do not belong together",
                p.rows,
                p.cols
            );
        }
        if let Some((r, c, v)) = p.first_non_finite() {
            bail!(
                "{path}: tensor {file_name} holds a non-finite value, {v} at row {r}, column {c}: the file is damaged \
                 or the training that made it diverged"
            );
        }
        self.used.insert(file_name);
        Ok(Some(p))
    }

    fn norm(&mut self, module: &str, dim: usize, bias: Bias) -> Result<Norm> {
        let w = self.param(&format!("{module}.weight"), &[dim])?;
        Ok(Norm { w, b: self.bias(module, dim, bias)? })
    }

    /// `module.bias` of length `dim` when the layer has one.
    fn bias(&mut self, module: &str, dim: usize, bias: Bias) -> Result<Option<Param>> {
        match bias {
            Bias::With => self.param(&format!("{module}.bias"), &[dim]).map(Some),
            Bias::Without => Ok(None),
        }
    }
}

/// Buffers some exporters save that carry no weights.
fn is_ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// The model in `weights`, its frozen matrices kept as `base` says.
pub fn load_transformer(config: Config, weights: &Weights, base: BaseDtype) -> Result<Transformer> {
    let names = weights.hf_names()?;
    let gpt2_bare = config.family == Family::Gpt2 && names.iter().any(|n| n == "wte.weight");
    let mut t = Taker {
        weights,
        base,
        file_prefix: if gpt2_bare { String::new() } else { "transformer.".into() },
        used: BTreeSet::new(),
    };
    let c = &config;
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    // Not `with_capacity(num_layers)`: config.json's layer count is checked only as its tensors are found.
    let mut blocks = Vec::new();
    let model = match c.family {
        Family::Llama => {
            for i in 0..c.num_layers {
                let p = format!("{}.layers.{i}", c.text_prefix());
                // per head (head_dim weights), or over the whole projection (OLMo 2/3)
                let (q_width, k_width) = match c.qk_norm_whole {
                    true => (q, kv),
                    false => (c.head_dim, c.head_dim),
                };
                if c.is_linear_layer(i)
                    && let Some(shape) = &c.delta_net
                {
                    blocks.push(delta_net_block(&mut t, c, shape, &p)?);
                    continue;
                }
                let qk_norm = match c.qk_norm {
                    true => Some((
                        t.norm(&format!("{p}.self_attn.q_norm"), q_width, Bias::Without)?,
                        t.norm(&format!("{p}.self_attn.k_norm"), k_width, Bias::Without)?,
                    )),
                    false => None,
                };
                // Gemma 3 names its pre-MLP norm pre_feedforward_layernorm; its post_attention_layernorm norms the
                // attention output (Llama's post_attention_layernorm is the pre-MLP norm). OLMo 2/3 have the post
                // norms only.
                let (mlp_norm, post_norms) = match c.sandwich_norms {
                    true => (
                        match c.pre_norms {
                            true => Some(t.norm(&format!("{p}.pre_feedforward_layernorm"), d, Bias::Without)?),
                            false => None,
                        },
                        Some((
                            t.norm(&format!("{p}.post_attention_layernorm"), d, Bias::Without)?,
                            t.norm(&format!("{p}.post_feedforward_layernorm"), d, Bias::Without)?,
                        )),
                    ),
                    false => (Some(t.norm(&format!("{p}.post_attention_layernorm"), d, Bias::Without)?), None),
                };
                let attn_norm = match c.pre_norms {
                    true => Some(t.norm(&format!("{p}.input_layernorm"), d, Bias::Without)?),
                    false => None,
                };
                let q_out = if c.attn_output_gate { 2 * q } else { q };
                let (qkv, gate, up) = match c.fused_projections() {
                    // Phi-3: one qkv_proj (q, then k, then v rows) and one gate_up_proj (gate rows, then up)
                    true => (
                        vec![t.linear(&format!("{p}.self_attn.qkv_proj"), d, q + 2 * kv, c.qkv_bias.into())?],
                        None,
                        t.linear(&format!("{p}.mlp.gate_up_proj"), d, 2 * f, c.mlp_bias.into())?,
                    ),
                    false => (
                        vec![
                            // with an output gate, each head's gate follows its query
                            t.linear(&format!("{p}.self_attn.q_proj"), d, q_out, c.qkv_bias.into())?,
                            t.linear(&format!("{p}.self_attn.k_proj"), d, kv, c.qkv_bias.into())?,
                            t.linear(&format!("{p}.self_attn.v_proj"), d, kv, c.qkv_bias.into())?,
                        ],
                        Some(t.linear(&format!("{p}.mlp.gate_proj"), d, f, c.mlp_bias.into())?),
                        t.linear(&format!("{p}.mlp.up_proj"), d, f, c.mlp_bias.into())?,
                    ),
                };
                blocks.push(Block {
                    attn_norm,
                    post_norms,
                    qk_norm,
                    qkv,
                    o: t.linear(&format!("{p}.self_attn.o_proj"), q, d, c.o_bias.into())?,
                    mlp_norm,
                    gate,
                    up,
                    down: t.linear(&format!("{p}.mlp.down_proj"), f, d, c.mlp_bias.into())?,
                    delta_net: None,
                });
            }
            let embed = t.matrix_param(&format!("{}.embed_tokens.weight", c.text_prefix()), v, d)?;
            Transformer {
                lm_head: lm_head(&mut t, c, &embed)?,
                embed,
                pos_embed: None,
                final_norm: t.norm(&format!("{}.norm", c.text_prefix()), d, Bias::Without)?,
                blocks,
                config: config.clone(),
            }
        }
        Family::Gpt2 => {
            for i in 0..c.num_layers {
                let p = format!("transformer.h.{i}");
                blocks.push(Block {
                    attn_norm: Some(t.norm(&format!("{p}.ln_1"), d, Bias::With)?),
                    post_norms: None,
                    qk_norm: None,
                    qkv: vec![t.linear(&format!("{p}.attn.c_attn"), d, q + 2 * kv, Bias::With)?],
                    o: t.linear(&format!("{p}.attn.c_proj"), q, d, Bias::With)?,
                    mlp_norm: Some(t.norm(&format!("{p}.ln_2"), d, Bias::With)?),
                    delta_net: None,
                    gate: None,
                    up: t.linear(&format!("{p}.mlp.c_fc"), d, f, Bias::With)?,
                    down: t.linear(&format!("{p}.mlp.c_proj"), f, d, Bias::With)?,
                });
            }
            let embed = t.matrix_param("transformer.wte.weight", v, d)?;
            Transformer {
                lm_head: lm_head(&mut t, c, &embed)?,
                embed,
                pos_embed: Some(t.param("transformer.wpe.weight", &[c.max_positions, d])?),
                final_norm: t.norm("transformer.ln_f", d, Bias::With)?,
                blocks,
                config: config.clone(),
            }
        }
    };
    let unused = |n: &&String| !t.used.contains(*n) && !is_ignorable(n) && !c.is_kept_as_is(n);
    if let Some(extra) = names.iter().find(unused) {
        bail!(
            "{}: unknown tensor \"{extra}\" — the {} code path would ignore it and compute a different model; \
             check that {} matches the weights",
            weights.path().display(),
            c.architecture,
            weights.config_source()
        );
    }
    let mut model = model;
    model.gather_packed();
    Ok(model)
}

/// A Qwen3.5 linear-attention layer: its norms and MLP as every Llama-family layer's, and a Gated DeltaNet
/// (`linear_attn.*`) in place of attention.
fn delta_net_block(t: &mut Taker, c: &Config, s: &DeltaNetShape, p: &str) -> Result<Block> {
    let (d, f) = (c.hidden_size, c.intermediate_size);
    let a = format!("{p}.linear_attn");
    let delta_net = DeltaNet {
        conv: t.param(&format!("{a}.conv1d.weight"), &[s.conv_dim(), 1, s.conv_kernel])?,
        dt_bias: t.param(&format!("{a}.dt_bias"), &[s.v_heads])?,
        a_log: t.param(&format!("{a}.A_log"), &[s.v_heads])?,
        norm: t.param(&format!("{a}.norm.weight"), &[s.v_head_dim])?,
    };
    Ok(Block {
        attn_norm: Some(t.norm(&format!("{p}.input_layernorm"), d, Bias::Without)?),
        post_norms: None,
        qk_norm: None,
        qkv: vec![
            t.linear(&format!("{a}.in_proj_qkv"), d, s.conv_dim(), Bias::Without)?,
            t.linear(&format!("{a}.in_proj_z"), d, s.value_dim(), Bias::Without)?,
            t.linear(&format!("{a}.in_proj_b"), d, s.v_heads, Bias::Without)?,
            t.linear(&format!("{a}.in_proj_a"), d, s.v_heads, Bias::Without)?,
        ],
        o: t.linear(&format!("{a}.out_proj"), s.value_dim(), d, Bias::Without)?,
        mlp_norm: Some(t.norm(&format!("{p}.post_attention_layernorm"), d, Bias::Without)?),
        gate: Some(t.linear(&format!("{p}.mlp.gate_proj"), d, f, c.mlp_bias.into())?),
        up: t.linear(&format!("{p}.mlp.up_proj"), d, f, c.mlp_bias.into())?,
        down: t.linear(&format!("{p}.mlp.down_proj"), f, d, c.mlp_bias.into())?,
        delta_net: Some(delta_net),
    })
}

/// The untied output matrix. A tied model may still store a copy, which is consumed and ignored, as transformers
/// ties it; a stored matrix that is not a copy of the embedding gets a warning (the config may be wrong). (A GGUF
/// is tied exactly when it stores no output matrix.)
fn lm_head(t: &mut Taker, c: &Config, embed: &Param) -> Result<Option<Param>> {
    if !c.tie_embeddings {
        return t.matrix_param("lm_head.weight", c.vocab_size, c.hidden_size).map(Some);
    }
    if let Some(stored) = t.maybe("lm_head.weight", &[c.vocab_size, c.hidden_size])?
        && !copies_up_to_rounding(&stored, embed)
    {
        eprintln!(
            "warning: {}: the config ties the output layer to the embedding (tie_word_embeddings), so the stored {} \
             is ignored, as transformers ignores it, but it differs from the embedding; if it is the model's output \
             layer, set \"tie_word_embeddings\": false in config.json",
            t.weights.path().display(),
            t.file_name("lm_head.weight"),
        );
    }
    Ok(None)
}

/// Whether `stored` holds `embed`'s values up to the rounding of a quantized copy: a relative RMS difference under
/// 0.25 (two quantizations of one matrix differ by a few percent, unrelated matrices by about √2). Row by row, so
/// a packed embedding is never dequantized whole.
fn copies_up_to_rounding(stored: &[f32], embed: &Param) -> bool {
    let m = embed.matrix();
    let mut row = vec![0.0; m.cols()];
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (r, s) in stored.chunks_exact(m.cols()).enumerate() {
        m.row(r, &mut row);
        for (a, b) in s.iter().zip(&row) {
            diff += f64::from(a - b).powi(2);
            norm += f64::from(*b).powi(2);
        }
    }
    diff <= 0.0625 * norm
}
