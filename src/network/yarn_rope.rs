//! YaRN RoPE scaling (`rope_type == "yarn"`: the long-context setting of Qwen2.5's 128k files and Qwen3), read
//! from config.json as transformers' `_compute_yarn_parameters` reads it and from a GGUF as llama.cpp does.
//! Short wavelengths keep their frequency, long ones are divided by `factor`, and a linear ramp over the pairs
//! between blends the two; cos and sin are multiplied by the attention factor.
use anyhow::{Result, bail};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YarnRope {
    pub factor: f32,
    /// The pretraining context the ramp's ends are measured against.
    pub original_max_positions: usize,
    /// Rotations over the original context at which the ramp starts (beta_fast: fewer kept) and ends.
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// cos and sin are multiplied by it (0.1 ln factor + 1 unless config.json says otherwise).
    pub attention_factor: f32,
    /// The ramp's ends rounded outward to whole pairs (transformers' default; llama.cpp always rounds).
    pub truncate: bool,
}

/// The paper's ends of the ramp (beta_fast, beta_slow): transformers' defaults, and what llama.cpp always takes for
/// these architectures (it reads no beta keys for them).
pub const DEFAULT_BETAS: (f32, f32) = (32.0, 1.0);

/// The paper's attention factor for a scale: 0.1 · mscale · ln(scale) + 1 (1 for a scale ≤ 1).
pub fn mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

impl YarnRope {
    /// From a config.json `rope_scaling`/`rope_parameters` object whose type is yarn. `top_level_original`: a
    /// top-level `original_max_position_embeddings`, which transformers puts before the object's; without
    /// either the original context is `max_positions`. `what` names the object in errors.
    pub fn from_json(v: &Value, top_level_original: Option<usize>, max_positions: usize, what: &str) -> Result<Self> {
        let num = |key: &str| -> Result<Option<f64>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => match x.as_f64() {
                    Some(n) => Ok(Some(n)),
                    None => bail!("{what}.{key} is {x}: YaRN needs a number there"),
                },
            }
        };
        let original = match (top_level_original, num("original_max_position_embeddings")?) {
            (Some(0), _) => bail!("{what}: original_max_position_embeddings is 0: give the pretraining context length"),
            (Some(o), _) => o,
            (None, Some(o)) if o >= 1.0 && o.fract() == 0.0 => o as usize,
            (None, Some(o)) => bail!("{what}.original_max_position_embeddings is {o}: it must be a whole number ≥ 1"),
            (None, None) => max_positions,
        };
        // transformers: a null factor is the context's stretch, max_position_embeddings / original (DeepSeek's
        // spelling); an absent one is an error there too
        let factor = match (v.get("factor"), num("factor")?) {
            (None, _) => bail!("{what} is of type yarn but has no factor"),
            (_, Some(f)) => f,
            (_, None) => max_positions as f64 / original as f64,
        };
        if !(factor >= 1.0 && factor.is_finite()) {
            bail!("{what}.factor is {factor}: YaRN's factor stretches the context, a finite number ≥ 1");
        }
        let attention_factor = match (num("attention_factor")?, num("mscale")?, num("mscale_all_dim")?) {
            (Some(a), _, _) if a > 0.0 && a.is_finite() => a,
            (Some(a), _, _) => bail!("{what}.attention_factor is {a}: it must be a finite number > 0"),
            // transformers: both present and non-zero (DeepSeek's spelling)
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
            (None, _, _) => mscale(factor, 1.0),
        };
        // transformers takes 0 as absent (`get("beta_fast") or 32`); a negative one has no logarithm
        let beta = |key, default: f32| match num(key)?.filter(|&b| b != 0.0) {
            None => Ok(default),
            Some(b) if b > 0.0 && b.is_finite() => Ok(b as f32),
            Some(b) => bail!("{what}.{key} is {b}: the ramp's ends are numbers of rotations, > 0"),
        };
        // transformers rounds unless `truncate` is falsy (false or null)
        let truncate = match v.get("truncate") {
            None => true,
            Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(x) => bail!("{what}.truncate is {x}: true or false"),
        };
        Ok(YarnRope {
            factor: factor as f32,
            original_max_positions: original,
            beta_fast: beta("beta_fast", DEFAULT_BETAS.0)?,
            beta_slow: beta("beta_slow", DEFAULT_BETAS.1)?,
            attention_factor: attention_factor as f32,
            truncate,
        })
    }

    /// The attention factor llama.cpp applies when its `rope.scaling.attn_factor` is `attn_factor`: that times
    /// the paper's default for the factor.
    pub fn llama_cpp_attention_factor(factor: f32, attn_factor: f32) -> f32 {
        (mscale(factor as f64, 1.0) as f32) * attn_factor
    }

    /// The pairs [low, high] the ramp runs over, in f64 as transformers' `find_correction_range` computes them.
    fn ramp_ends(&self, theta: f32, dim: usize) -> (f64, f64) {
        let at = |rotations: f32| {
            let orig = self.original_max_positions as f64;
            dim as f64 * (orig / (rotations as f64 * 2.0 * std::f64::consts::PI)).ln() / (2.0 * (theta as f64).ln())
        };
        let (low, high) = (at(self.beta_fast), at(self.beta_slow));
        let (low, high) = if self.truncate { (low.floor(), high.ceil()) } else { (low, high) };
        (low.max(0.0), high.min(dim as f64 - 1.0))
    }

    /// The scaled inverse frequencies of the first `dim` features (one per rotated pair) for base `theta`, in f32
    /// as PyTorch evaluates transformers' formula.
    pub fn inv_freq(&self, theta: f32, dim: usize) -> Vec<f32> {
        let (low, high) = self.ramp_ends(theta, dim);
        let span = if low == high { 0.001 } else { high - low } as f32;
        (0..dim / 2)
            .map(|i| {
                let wavelength_base = theta.powf((2 * i) as f32 / dim as f32);
                let (extrapolated, interpolated) = (1.0 / wavelength_base, 1.0 / (self.factor * wavelength_base));
                let kept = 1.0 - ((i as f32 - low as f32) / span).clamp(0.0, 1.0);
                interpolated * (1.0 - kept) + extrapolated * kept
            })
            .collect()
    }
}
