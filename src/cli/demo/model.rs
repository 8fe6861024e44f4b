//! A small Llama-architecture model built from scratch: its `Config` and random weights (normal,
//! std 0.02, norms at 1), a pure function of the seed through `condlm::rng`. Tensor names and
//! shapes are the ones `model::loader` reads, so the model saves as an HF folder and loads back.
use condlm::kernels::activation::GateAct;
use condlm::network::config::{Config, Family};
use condlm::network::linear::Linear;
use condlm::network::param::Param;
use condlm::network::transformer::{Block, Norm, Transformer};
use condlm::rng::{stream_id, uniform};

/// The size knobs of the demo model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSize {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
}

/// `LlamaForCausalLM` with tied embeddings, RMSNorm ε 1e-5, RoPE θ 10 000, no biases; EOS `eos`, no BOS.
pub fn llama_config(size: ModelSize, vocab: usize, eos: u32) -> Config {
    Config {
        architecture: "LlamaForCausalLM".into(),
        family: Family::Llama,
        hidden_size: size.hidden,
        intermediate_size: size.intermediate,
        num_layers: size.layers,
        num_heads: size.heads,
        num_kv_heads: size.kv_heads,
        head_dim: size.hidden / size.heads,
        vocab_size: vocab,
        max_positions: size.max_positions,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        rotary_dim: size.hidden / size.heads,
        longrope: None,
        yarn: None,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        tie_embeddings: true,
        qk_norm: false,
        qk_norm_whole: false,
        no_rope: vec![],
        sliding_window: None,
        sliding_layers: vec![],
        rope_local_theta: None,
        rope_linear_factor: None,
        attn_scale: None,
        mlp_act: GateAct::Silu,
        norm_plus_one: false,
        sandwich_norms: false,
        pre_norms: true,
        scale_embeddings: false,
        linear_layers: vec![],
        delta_net: None,
        rope_sections: vec![],
        attn_output_gate: false,
        bos_token_id: None,
        eos_token_ids: vec![eos],
    }
}

const INIT_STD: f64 = 0.02;

/// Normal(0, `INIT_STD`) values of tensor `name` (Box–Muller over counter-based uniforms).
fn normal(seed: u64, name: &str, n: usize) -> Vec<f32> {
    let stream = stream_id(name);
    (0..n)
        .map(|i| {
            let u1 = 1.0 - uniform(seed, stream, 2 * i as u64); // (0, 1]
            let u2 = uniform(seed, stream, 2 * i as u64 + 1);
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * INIT_STD) as f32
        })
        .collect()
}

fn linear(seed: u64, module: &str, in_dim: usize, out_dim: usize) -> Linear {
    let name = format!("{module}.weight");
    let w = normal(seed, &name, out_dim * in_dim);
    Linear {
        name: module.to_string(),
        w: Param::new(name, vec![out_dim, in_dim], w),
        b: None,
        lora: None,
        in_dim,
        out_dim,
    }
}

fn rms_norm(module: &str, dim: usize) -> Norm {
    Norm { w: Param::new(format!("{module}.weight"), vec![dim], vec![1.0; dim]), b: None }
}

/// A randomly initialised Llama model for `config` (which must be of the Llama family, tied).
pub fn random_llama(config: &Config, seed: u64) -> Transformer {
    let c = config;
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let blocks = (0..c.num_layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            Block {
                qk_norm: None,
                attn_norm: Some(rms_norm(&format!("{p}.input_layernorm"), d)),
                post_norms: None,
                qkv: vec![
                    linear(seed, &format!("{p}.self_attn.q_proj"), d, q),
                    linear(seed, &format!("{p}.self_attn.k_proj"), d, kv),
                    linear(seed, &format!("{p}.self_attn.v_proj"), d, kv),
                ],
                o: linear(seed, &format!("{p}.self_attn.o_proj"), q, d),
                mlp_norm: Some(rms_norm(&format!("{p}.post_attention_layernorm"), d)),
                delta_net: None,
                gate: Some(linear(seed, &format!("{p}.mlp.gate_proj"), d, f)),
                up: linear(seed, &format!("{p}.mlp.up_proj"), d, f),
                down: linear(seed, &format!("{p}.mlp.down_proj"), f, d),
            }
        })
        .collect();
    let embed = "model.embed_tokens.weight";
    Transformer {
        config: config.clone(),
        embed: Param::new(embed, vec![v, d], normal(seed, embed, v * d)),
        pos_embed: None,
        blocks,
        final_norm: rms_norm("model.norm", d),
        lm_head: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_deterministic_with_the_right_scale() {
        let size = ModelSize { hidden: 32, layers: 2, heads: 4, kv_heads: 2, intermediate: 64, max_positions: 16 };
        let c = llama_config(size, 50, 0);
        c.validate().unwrap();
        let (mut a, mut b) = (random_llama(&c, 3), random_llama(&c, 3));
        let pa: Vec<Vec<f32>> = a.params_mut().into_iter().map(|p| p.data.clone()).collect();
        let pb: Vec<Vec<f32>> = b.params_mut().into_iter().map(|p| p.data.clone()).collect();
        assert_eq!(pa, pb);
        let total: usize = pa.iter().map(Vec::len).sum();
        assert_eq!(total, c.num_parameters());
        let e = &a.embed.data;
        let mean = e.iter().map(|&x| x as f64).sum::<f64>() / e.len() as f64;
        let std = (e.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / e.len() as f64).sqrt();
        assert!(mean.abs() < 0.003 && (std - 0.02).abs() < 0.002, "mean {mean} std {std}");
        assert_ne!(random_llama(&c, 4).embed.data, a.embed.data);
    }
}
