//! `condlm info`: what a checkpoint is — architecture, sizes, tensors, tokenizer; with `--devices`, the CPU and
//! GPUs condlm can run on (`cli::devices`).
use anyhow::Result;
use clap::Args;
use condlm::formats::load::{load_tokenizer, open_weights};
use condlm::formats::resolve::resolve;
use condlm::formats::weights::Weights;
use condlm::kernels::activation::GateAct;
use condlm::network::config::{Config, Family};
use condlm::network::yarn_rope::DEFAULT_BETAS;
use std::collections::BTreeMap;

/// Describe a checkpoint: architecture, layer/head/hidden sizes, parameters, tensor types, tokenizer; or, with
/// --devices, the CPU and GPUs condlm can run on.
#[derive(Args)]
pub struct InfoArgs {
    /// An HF checkpoint folder, a .gguf file, or a hub id org/name (optional with --devices).
    #[arg(required_unless_present = "devices")]
    model: Option<String>,
    /// Also list every tensor with its shape and type [default: off].
    #[arg(long, requires = "model")]
    tensors: bool,
    /// Also print the chat template (the Jinja text chat rows and `generate --chat` are rendered with) [default:
    /// off].
    #[arg(long, requires = "model")]
    chat_template: bool,
    /// List the compute devices: the CPU (model, SIMD extensions, the kernels picked) and the CUDA GPUs (name,
    /// memory, compute capability, driver version), or why CUDA is unavailable; before the model's description
    /// when a model is given too [default: off].
    #[arg(long)]
    devices: bool,
    /// With --devices: compile every CUDA kernel source with NVRTC for each GPU's architecture (sm_90 when there
    /// is no GPU), load it on the GPU, look up its kernels and run each against the CPU kernel it mirrors on small
    /// random inputs, reporting each; fails (exit 1) if any does not compile, load or agree [default: off].
    #[arg(long, requires = "devices")]
    check_kernels: bool,
    /// Run the model on DEVICE (cuda, cuda:N, or reference: the device path on the CPU's kernels) beside the CPU
    /// path on the same rows and compare, one line each: logits in f32 and under --compute bf16, KV-cache decoding
    /// against the full forward pass, greedy ids, and one step's LoRA (rank 4 on every linear layer, dropout 0.1) and full
    /// fine-tuning gradients in f32; fails (exit 1) if any is off its tolerance [default: off].
    #[arg(long, value_name = "DEVICE", requires = "model")]
    check_device: Option<condlm::network::device::Placement>,
}

pub fn run(a: InfoArgs) -> Result<()> {
    if a.devices {
        super::devices::run(a.check_kernels)?;
    }
    let Some(model) = &a.model else { return Ok(()) };
    if a.devices {
        out!();
    }
    let files = resolve(model)?;
    let (c, weights) = open_weights(&files)?;
    if let Err(e) = weights.check_layout(&c) {
        eprintln!("warning: {e:#}; the sizes below are the config's, and loading this model will fail");
    }
    let tok = load_tokenizer(&files, &c, &weights)?;
    out!("model         {}", files.path().display());
    let family = format!("{:?}", c.family);
    let code_path = match c.architecture.to_lowercase().contains(&family.to_lowercase()) {
        true => String::new(),
        false => format!(" (computed by the {family}-family block)"),
    };
    out!("architecture  {}{code_path}", c.architecture);
    out!("layers        {}", c.num_layers);
    out!("hidden        {} (intermediate {})", c.hidden_size, c.intermediate_size);
    let qk_norm = match (c.qk_norm, c.qk_norm_whole) {
        (false, _) => "",
        (true, false) => ", per-head q/k RMSNorm",
        (true, true) => ", q/k RMSNorm over all heads together",
    };
    out!("heads         {} query, {} key/value, head dim {}{qk_norm}", c.num_heads, c.num_kv_heads, c.head_dim);
    out!("attention     {}", attention_line(&c));
    if let Some(s) = &c.delta_net {
        let linear: Vec<usize> = (0..c.num_layers).filter(|&i| c.is_linear_layer(i)).collect();
        out!(
            "linear attn.  Gated DeltaNet in layers {linear:?}: {} q/k heads of {}, {} v heads of {}, convolution of {}; \
             the other layers' attention output gated by σ(q_proj's gate)",
            s.k_heads,
            s.k_head_dim,
            s.v_heads,
            s.v_head_dim,
            s.conv_kernel
        );
    }
    out!("positions     {}", rope_line(&c));
    if c.family == Family::Llama {
        let act = match c.mlp_act {
            GateAct::Silu => "SwiGLU",
            GateAct::GeluTanh => "GeGLU (tanh GELU)",
        };
        let norms = match (c.sandwich_norms, c.pre_norms, c.norm_plus_one) {
            (true, true, _) => "4 RMSNorms per block (pre and post attention and MLP), weights applied as 1 + w",
            (true, false, _) => "RMSNorm after attention and MLP (on their outputs, before the residual adds)",
            (false, _, true) => "RMSNorm, weights applied as 1 + w",
            (false, _, false) => "RMSNorm before attention and MLP",
        };
        let scaled = if c.scale_embeddings { ", embeddings × √hidden" } else { "" };
        out!("block         {act} MLP, {norms}{scaled}; no logit soft-capping");
    }
    out!("parameters    {} ({:.1} M)", c.num_parameters(), c.num_parameters() as f64 / 1e6);
    out!("context       {} positions", c.max_positions);
    if c.fused_projections() {
        out!("projections   fused qkv_proj and gate_up_proj");
    }
    out!("vocabulary    {} (tokenizer: {})", c.vocab_size, tok.vocab_size());
    out!("tied head     {}", c.tie_embeddings);
    let name = |id: u32| tok.inner.id_to_token(id).unwrap_or_else(|| "?".into());
    let bos = tok.prefix.iter().map(|&i| format!("{} ({i})", name(i))).collect::<Vec<_>>().join(" ");
    out!("BOS added     {}", if bos.is_empty() { "none".into() } else { bos });
    out!("EOS           {} ({})", name(tok.eos_id), tok.eos_id);
    out!("chat template {}", if tok.chat_template.is_some() { "present" } else { "absent" });
    let mut rows: Vec<(String, Vec<usize>, String)> = match &weights {
        Weights::Safetensors { files, .. } => {
            files.summaries().into_iter().map(|s| (s.name, s.shape, s.dtype)).collect()
        }
        Weights::Gguf { file, .. } => file
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dims.iter().map(|&d| d as usize).collect(), t.ty.name().to_string()))
            .collect(),
    };
    rows.sort();
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, ty) in &rows {
        *by_type.entry(ty).or_default() += 1;
    }
    let types: Vec<String> = by_type.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
    out!("tensors       {} ({})", rows.len(), types.join(", "));
    if a.tensors {
        for (n, shape, ty) in &rows {
            out!("  {n:50} {ty:6} {shape:?}");
        }
    }
    if a.chat_template {
        match &tok.chat_template {
            Some(t) => out!("chat template:\n{t}"),
            None => out!("chat template: none"),
        }
    }
    if let Some(device) = a.check_device {
        out!();
        super::check_device::run(model, device)?;
    }
    Ok(())
}

/// "full causal" or the sliding window and which layers use it, and the q·k scale when it is not 1/√head_dim.
fn attention_line(c: &Config) -> String {
    let sliding: Vec<usize> = (0..c.num_layers).filter(|&i| c.window(i).is_some()).collect();
    let mut line = match c.sliding_window {
        Some(w) if sliding.len() == c.num_layers => format!("sliding window of {w} positions on every layer"),
        Some(w) if !sliding.is_empty() => {
            let global: Vec<String> =
                (0..c.num_layers).filter(|i| !sliding.contains(i)).map(|i| i.to_string()).collect();
            format!(
                "sliding window of {w} positions on {} of {} layers (global: {})",
                sliding.len(),
                c.num_layers,
                global.join(", ")
            )
        }
        _ => "full causal".to_string(),
    };
    if let Some(s) = c.attn_scale.filter(|s| (s * (c.head_dim as f32).sqrt() - 1.0).abs() > 1e-6) {
        line += &format!(", q·k scaled by {s} (not 1/√head_dim)");
    }
    line
}

/// RoPE: its bases (the sliding layers' own), the features it rotates, its scaling and the layers without it; or
/// GPT-2's learned positions.
fn rope_line(c: &Config) -> String {
    if c.family == Family::Gpt2 {
        return "learned position embeddings".to_string();
    }
    let mut line = format!("RoPE base {}", c.rope_theta);
    if let Some(local) = c.rope_local_theta {
        line += &format!(" (sliding layers: {local})");
    }
    if c.rotary_dim != c.head_dim {
        line += &format!(", partial: the first {} of {} features of each head", c.rotary_dim, c.head_dim);
    }
    match (&c.rope_scaling, &c.longrope) {
        (Some(s), _) => {
            line += &format!(", Llama 3 scaling ×{} from {} positions", s.factor, s.original_max_position_embeddings)
        }
        (None, Some(l)) => {
            let past = l.original_max_positions;
            line += &format!(
                ", longrope scaling (long factors past {past} positions, attention factor {:.4})",
                l.attention_factor
            )
        }
        (None, None) => {}
    }
    if let Some(y) = &c.yarn {
        let on = if c.rope_local_theta.is_some() { " on the global layers" } else { "" };
        line += &format!(
            ", YaRN scaling ×{} from {} positions{on} (attention factor {:.4}",
            y.factor, y.original_max_positions, y.attention_factor
        );
        if (y.beta_fast, y.beta_slow) != DEFAULT_BETAS || !y.truncate {
            let rounded = if y.truncate { "rounded" } else { "not rounded" };
            line += &format!("; ramp from {} to {} rotations, {rounded}", y.beta_fast, y.beta_slow);
        }
        line += ")";
    }
    if let Some(k) = c.rope_linear_factor {
        let on = if c.rope_local_theta.is_some() { " on the global layers" } else { "" };
        line += &format!(", linear scaling ×{k}{on}");
    }
    let skipped: Vec<String> = (0..c.num_layers).filter(|&i| !c.rope_in(i)).map(|i| i.to_string()).collect();
    if !skipped.is_empty() {
        line += &format!(", no RoPE in layers {}", skipped.join(", "));
    }
    line
}
