//! How much memory a training run needs, and whether the machine has it. Checked twice: before the weights
//! load (weights and optimizer state, from the config alone) and before the first step (plus the activations
//! of the largest micro-batch the data can form). A run that cannot fit is refused with what to change,
//! instead of being killed by the kernel half-way. The formulas count condlm's own buffers (see
//! `network::activations`); README's "When things go wrong" gives their measured accuracy.
use super::settings::TrainSettings;
use crate::network::config::{Config, Family};
use anyhow::{Result, bail};

const GIB: f64 = (1u64 << 30) as f64;
/// Binary, tokenizer, data, thread stacks and allocator slack, measured on the tiny fixtures (≈ 60 MB peak).
const BASE_BYTES: usize = 128 << 20;

/// Estimated bytes by what holds them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Frozen and trainable weights as they are kept (see `BaseDtype`).
    pub weights: usize,
    /// Gradients and AdamW moments of the trainable tensors (and LoRA's own weights).
    pub optimizer: usize,
    /// Saved forward activations and backward scratch for `tokens` tokens per micro-batch.
    pub activations: usize,
    pub tokens: usize,
}

impl MemoryPlan {
    /// `tokens`: the most tokens one micro-batch can hold (0 before the data is read); `weight_bytes`: what the
    /// model's weights take as they are kept.
    pub fn new(c: &Config, s: &TrainSettings, tokens: usize, weight_bytes: usize) -> Self {
        let (d, f, layers) = (c.hidden_size, c.intermediate_size, c.num_layers);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        // (in, out) of each block's linear layers; LoRA on all of them bounds any --lora-targets.
        let linears: Vec<(usize, usize)> = match c.family {
            Family::Llama => vec![(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)],
            Family::Gpt2 => vec![(d, 3 * d), (d, d), (d, f), (f, d)],
        };
        let qkv = match c.family {
            Family::Llama => q + 2 * kv,
            Family::Gpt2 => 3 * d,
        };
        let params = c.num_parameters();
        let lora_r = if s.full { 0 } else { s.lora_r };
        let lora_params = layers * linears.iter().map(|(i, o)| lora_r * (i + o)).sum::<usize>();
        // Full fine-tuning: a gradient and two moments per weight; LoRA: its weights, gradients and moments.
        let optimizer = if s.full { 12 * params } else { 16 * lora_params };
        // f32 values per token: per block the saved streams, norms' inputs, q|k|v, attention output, the MLP's
        // three (N, ffn) buffers and LoRA's (N, r) factors and their gradients; then the backward scratch and
        // the model-level streams, which exist once.
        // Per-head q/k norms keep q and k before them and their RMS per head; Gemma's post norms keep both
        // sublayer outputs before them and their RMS per row.
        let qk_norm = if c.qk_norm { q + kv + c.num_heads + c.num_kv_heads } else { 0 };
        let post_norms = if c.sandwich_norms { 2 * d + 2 } else { 0 };
        // Qwen3.5's output gate keeps q_proj's doubled output, the gates and the gated output; a Gated DeltaNet
        // layer keeps its projections, the convolution before and after its SiLU, the recurrence's head-major
        // inputs and output, its states every CHUNK tokens and the gated norm's output (and as much scratch in
        // the backward pass). Counted on every block: a bound for the layers without one.
        let gate = if c.attn_output_gate { 4 * q } else { 0 };
        let delta_net = c.delta_net.map_or(0, |s| {
            let (hv, dk, dv) = (s.v_heads, s.k_head_dim, s.v_head_dim);
            let states = hv * dk * dv / crate::kernels::gated_delta::CHUNK;
            s.proj_width() + 2 * s.conv_dim() + hv * (2 * dk + 2 * dv + 3) + s.value_dim() + states
        });
        let per_block =
            4 * d + qkv + q + 3 * f + 4 + linears.len() * 2 * lora_r + qk_norm + post_norms + gate + delta_net;
        let once =
            4 * d + qkv + q + 3 * f + d.max(f) + if c.qk_norm { 3 * q } else { 0 } + post_norms + gate + delta_net;
        // The LM head's logits and their gradient, 64 rows at a time.
        let head = 2 * 64 * c.vocab_size * 4;
        // With activation checkpointing every block keeps its input (N, d) and one block's buffers exist.
        let blocks = if s.checkpoint_activations { layers * d + per_block } else { layers * per_block };
        // and a Gated DeltaNet saves at least one state per row (per started CHUNK tokens), which short rows make
        // more than the per-token share above
        let row_states = c.delta_net.map_or(0, |d| {
            let linear = (0..layers).filter(|&i| c.is_linear_layer(i)).count();
            s.batch_size * linear * d.v_heads * d.k_head_dim * d.v_head_dim
        });
        let activations = if tokens == 0 { 0 } else { 4 * (tokens * (blocks + once) + row_states) + head };
        MemoryPlan { weights: weight_bytes + BASE_BYTES, optimizer, activations, tokens }
    }

    pub fn total(&self) -> usize {
        self.weights + self.optimizer + self.activations
    }

    pub fn describe(&self) -> String {
        let gib = |b: usize| b as f64 / GIB;
        let acts = if self.tokens > 0 {
            format!(", activations {:.2} for {} tokens per micro-batch", gib(self.activations), self.tokens)
        } else {
            String::new()
        };
        format!(
            "≈ {:.2} GiB (weights and runtime {:.2}, optimizer state {:.2}{acts})",
            gib(self.total()),
            gib(self.weights),
            gib(self.optimizer)
        )
    }

    /// Err when the plan needs more than `available` bytes, saying what to change.
    pub fn check(&self, available: Option<usize>, s: &TrainSettings) -> Result<()> {
        let Some(avail) = available else { return Ok(()) };
        if self.total() <= avail {
            return Ok(());
        }
        let advice = if self.activations > self.weights + self.optimizer {
            format!(
                "the activations dominate: lower --batch-size (now {}; they scale with it, --grad-accum keeps the \
                 step's rows) or --max-len (now {}){}",
                s.batch_size,
                s.max_len,
                if s.checkpoint_activations { "" } else { ", or pass --checkpoint-activations" }
            )
        } else if s.full {
            "the weights and optimizer state dominate: train LoRA (drop --full) or use a smaller model".into()
        } else {
            "the weights dominate: keep a quantized base packed (--base-dtype stored, the default, with a GGUF \
             file) or use a smaller model"
                .into()
        };
        bail!(
            "this run needs {} but the machine has {:.2} GiB available; {advice}. Pass --no-memory-check to try anyway",
            self.describe(),
            avail as f64 / GIB
        )
    }
}

/// Bytes of decoding's KV cache: keys and values (f32) of every attention layer for `slots` sequences × `capacity`
/// positions, and each Gated DeltaNet layer's state and convolution rows per slot (`network::kv_cache`).
pub fn kv_cache_bytes(c: &Config, slots: usize, capacity: usize) -> usize {
    let linear = (0..c.num_layers).filter(|&i| c.is_linear_layer(i)).count();
    let states =
        c.delta_net.map_or(0, |s| s.v_heads * s.k_head_dim * s.v_head_dim + (s.conv_kernel - 1) * s.conv_dim());
    let kv = 2 * (c.num_layers - linear) * capacity * c.num_kv_heads * c.head_dim;
    4 * slots * (kv + linear * states)
}

/// What `generate` holds: the weights as kept, the KV cache of every slot, and each slot's logits and sampling
/// work (two rows of the vocabulary).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodePlan {
    pub weights: usize,
    pub kv_cache: usize,
    pub logits: usize,
    pub slots: usize,
    pub capacity: usize,
}

impl DecodePlan {
    pub fn new(c: &Config, weight_bytes: usize, slots: usize, capacity: usize) -> Self {
        let (kv_cache, logits) = (kv_cache_bytes(c, slots, capacity), 2 * 4 * slots * c.vocab_size);
        DecodePlan { weights: weight_bytes + BASE_BYTES, kv_cache, logits, slots, capacity }
    }

    pub fn total(&self) -> usize {
        self.weights + self.kv_cache + self.logits
    }

    pub fn describe(&self) -> String {
        let gib = |b: usize| b as f64 / GIB;
        format!(
            "≈ {:.2} GiB (weights and runtime {:.2}, KV cache {:.2} for {} sequence{} × {} positions, logits {:.2})",
            gib(self.total()),
            gib(self.weights),
            gib(self.kv_cache),
            self.slots,
            if self.slots == 1 { "" } else { "s" },
            self.capacity,
            gib(self.logits)
        )
    }

    /// Err when the plan needs more than `available` bytes, saying what to change.
    pub fn check(&self, available: Option<usize>) -> Result<()> {
        let Some(avail) = available else { return Ok(()) };
        if self.total() <= avail {
            return Ok(());
        }
        let advice = if self.kv_cache > self.weights {
            "the KV cache dominates: lower --max-new-tokens, --batch-size or --num-beams"
        } else {
            "the weights dominate: keep a quantized base packed (--base-dtype stored, the default) or use a smaller model"
        };
        bail!(
            "generating needs {} but the machine has {:.2} GiB available; {advice}",
            self.describe(),
            avail as f64 / GIB
        )
    }
}

/// Memory this process may still use: MemAvailable from /proc/meminfo, or less under a cgroup (v2) limit.
/// None where neither can be read.
pub fn available_bytes() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut avail = kib * 1024;
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|t| t.trim().parse::<usize>().ok());
    if let (Some(max), Some(cur)) = (read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current")) {
        avail = avail.min(max.saturating_sub(cur));
    }
    Some(avail)
}

/// The most tokens a micro-batch of `batch` rows can hold: the `batch` longest rows together.
pub fn largest_micro_batch(mut lengths: Vec<usize>, batch: usize) -> usize {
    lengths.sort_unstable_by(|a, b| b.cmp(a));
    lengths.iter().take(batch).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> Config {
        let json = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000, "tie_word_embeddings": true}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        Config::from_hf_json(&dir.path().join("config.json")).unwrap()
    }

    #[test]
    fn the_plan_counts_each_part_as_documented() {
        let c = smollm2();
        let lora = TrainSettings { lora_r: 16, ..TrainSettings::default() };
        let p = MemoryPlan::new(&c, &lora, 0, 4 * c.num_parameters());
        assert_eq!(p.weights, 4 * c.num_parameters() + BASE_BYTES);
        assert_eq!(c.num_parameters(), 134_515_008, "SmolLM2-135M's parameter count");
        // all-linear LoRA r=16 on SmolLM2: 30 blocks × r × Σ(in+out) values, with Σ(in+out) over q, k, v, o,
        // gate, up, down = 1152 + 768 + 768 + 1152 + 3 × 2112 = 10176; 16 bytes each.
        assert_eq!(p.optimizer, 16 * 30 * 16 * 10176);
        assert_eq!(p.activations, 0);
        let full = TrainSettings { full: true, ..TrainSettings::default() };
        assert_eq!(MemoryPlan::new(&c, &full, 0, 4 * c.num_parameters()).optimizer, 12 * c.num_parameters());
        // Activations grow linearly with the tokens of a micro-batch.
        let a1 = MemoryPlan::new(&c, &lora, 1000, 4 * c.num_parameters()).activations;
        let a2 = MemoryPlan::new(&c, &lora, 2000, 4 * c.num_parameters()).activations;
        let head = 2 * 64 * 49152 * 4;
        assert_eq!(a2 - head, 2 * (a1 - head));
        // Checkpointing keeps each block's input (d = 576 values a token) and one block's buffers.
        let ckpt = TrainSettings { checkpoint_activations: true, ..lora.clone() };
        let a_ckpt = MemoryPlan::new(&c, &ckpt, 1000, 0).activations;
        let per_block = (a1 - head) / 1000 / 4; // floats a token: 30 blocks + the once-only buffers
        let once = 4 * 576 + 960 + 576 + 3 * 1536 + 1536;
        assert_eq!((a_ckpt - head) / 1000 / 4, 30 * 576 + (per_block - once) / 30 + once);
    }

    #[test]
    fn a_plan_over_the_limit_names_the_lever() {
        let c = smollm2();
        let s = TrainSettings { batch_size: 64, ..TrainSettings::default() };
        let p = MemoryPlan::new(&c, &s, 64 * 1024, 4 * c.num_parameters());
        let err = p.check(Some(1 << 30), &s).unwrap_err().to_string();
        assert!(err.contains("--batch-size (now 64") && err.contains("--no-memory-check"), "{err}");
        p.check(Some(p.total()), &s).unwrap();
        p.check(None, &s).unwrap();
        let full = TrainSettings { full: true, ..TrainSettings::default() };
        let err =
            MemoryPlan::new(&c, &full, 10, 4 * c.num_parameters()).check(Some(1 << 20), &full).unwrap_err().to_string();
        assert!(err.contains("drop --full"), "{err}");
    }

    #[test]
    fn the_decode_plan_counts_the_kv_cache() {
        let c = smollm2();
        // SmolLM2: 30 layers × 3 KV heads × 64 dims, keys and values in f32: 46080 bytes a position.
        assert_eq!(kv_cache_bytes(&c, 1, 1), 2 * 4 * 30 * 3 * 64);
        let p = DecodePlan::new(&c, 100 << 20, 4, 2048);
        assert_eq!(p.kv_cache, 4 * 2048 * 46080);
        assert_eq!(p.total(), (100 << 20) + BASE_BYTES + p.kv_cache + 2 * 4 * 4 * 49152);
        assert!(p.check(Some(500 << 20)).unwrap_err().to_string().contains("the KV cache dominates"));
        p.check(Some(p.total())).unwrap();
    }

    #[test]
    fn largest_micro_batch_takes_the_longest_rows() {
        assert_eq!(largest_micro_batch(vec![3, 9, 1, 7, 5], 2), 16);
        assert_eq!(largest_micro_batch(vec![3, 1], 8), 4);
    }

    #[test]
    fn this_machine_reports_its_memory() {
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(available_bytes().is_some_and(|b| b > 1 << 20));
        }
    }
}
