//! LoRA (Hu et al. 2021) as PEFT implements it: h = W0·x + (α/r)·B·A·dropout(x), A (r, in)
//! Kaiming-uniform(a=√5), B (out, r) zeros; rsLoRA scales by α/√r. Only A and B are trainable.
use crate::kernels::matmul::{Mat, MatMut, matmul};
use crate::model::linear::LoraActs;
use crate::model::param::Param;
use crate::model::transformer::Transformer;
use crate::rng;
use anyhow::{Result, bail};

pub struct Lora {
    /// (r, in)
    pub a: Param,
    /// (out, r)
    pub b: Param,
    pub rank: usize,
    pub scale: f32,
    pub dropout: f32,
    /// Dropout stream of this layer.
    stream: u64,
}

/// How adapters are attached: which modules, rank, α, dropout, rsLoRA.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub rslora: bool,
    /// Module leaf names (q_proj, c_attn, …) or ["all-linear"].
    pub targets: Vec<String>,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.rslora { self.alpha / (self.rank as f32).sqrt() } else { self.alpha / self.rank as f32 }
    }

    /// Whether the linear layer `module` (full HF path) gets an adapter.
    pub fn targets_module(&self, module: &str) -> bool {
        let leaf = module.rsplit('.').next().unwrap_or(module);
        self.targets.iter().any(|t| t == "all-linear" || t == leaf || t == module)
    }
}

impl Lora {
    /// A fresh adapter for a (out, in) layer named `module`: A ~ U(−1/√in, 1/√in) — what
    /// kaiming_uniform_(a=√5) gives for fan_in = in — and B = 0, so the model starts equal to the base.
    pub fn new(module: &str, in_dim: usize, out_dim: usize, cfg: &LoraConfig, seed: u64) -> Self {
        let r = cfg.rank;
        let bound = 1.0 / (in_dim as f64).sqrt();
        let stream = rng::stream_id(module);
        let a: Vec<f32> =
            (0..r * in_dim).map(|i| ((2.0 * rng::uniform(seed, stream, i as u64) - 1.0) * bound) as f32).collect();
        let mut lora = Lora {
            a: Param::new(format!("{module}.lora_A.weight"), vec![r, in_dim], a),
            b: Param::new(format!("{module}.lora_B.weight"), vec![out_dim, r], vec![0.0; out_dim * r]),
            rank: r,
            scale: cfg.scale(),
            dropout: cfg.dropout,
            stream,
        };
        lora.a.set_trainable(true);
        lora.b.set_trainable(true);
        lora
    }

    /// Replaces A and B (e.g. from a PEFT file); shapes are checked by the caller.
    pub fn with_weights(mut self, a: Vec<f32>, b: Vec<f32>) -> Self {
        self.a.data = a;
        self.b.data = b;
        self
    }

    fn in_dim(&self) -> usize {
        self.a.shape[1]
    }

    fn out_dim(&self) -> usize {
        self.b.shape[0]
    }

    /// dropout(x) into `la.x_drop`: keep with prob 1−p, scaled by 1/(1−p); the mask is a pure
    /// function of (step_seed, layer, element), so backward regenerates it instead of storing it.
    fn drop_input(&self, x: &[f32], n: usize, la: &mut LoraActs, step_seed: u64) {
        let len = n * self.in_dim();
        if la.x_drop.len() < len {
            la.x_drop.resize(len, 0.0);
        }
        let (p, keep_scale) = (self.dropout as f64, 1.0 / (1.0 - self.dropout));
        for (i, (d, &v)) in la.x_drop[..len].iter_mut().zip(&x[..len]).enumerate() {
            *d = if rng::uniform(step_seed, self.stream, i as u64) >= p { v * keep_scale } else { 0.0 };
        }
    }

    /// out += scale · (dropout(x)·Aᵀ)·Bᵀ; saves u = dropout(x)·Aᵀ (N, r) in `la.u`.
    /// Dropout applies only while training (`dropout_seed` is Some).
    pub fn forward(
        &self,
        out: &mut [f32],
        row_stride: usize,
        x: &[f32],
        n: usize,
        la: &mut LoraActs,
        dropout_seed: Option<u64>,
    ) {
        let (r, inp, outd) = (self.rank, self.in_dim(), self.out_dim());
        let drop = self.dropout > 0.0 && dropout_seed.is_some();
        if drop {
            self.drop_input(x, n, la, dropout_seed.unwrap_or_default());
        }
        if la.u.len() < n * r {
            la.u.resize(n * r, 0.0);
            la.du.resize(n * r, 0.0);
        }
        let xin = if drop { &la.x_drop[..n * inp] } else { &x[..n * inp] };
        matmul(MatMut::new(&mut la.u[..n * r], n, r), Mat::new(xin, n, inp), Mat::new(&self.a.data, r, inp).t(), false);
        // Scale the small (N, r) factor rather than the (N, out) product.
        for (s, u) in la.du[..n * r].iter_mut().zip(&la.u) {
            *s = self.scale * u;
        }
        matmul(
            MatMut { data: out, rows: n, cols: outd, row_stride },
            Mat::new(&la.du[..n * r], n, r),
            Mat::new(&self.b.data, outd, r).t(),
            true,
        );
    }

    /// dB += scale·dyᵀ·u; du = scale·dy·B; dA += duᵀ·dropout(x); dx += dropout'(du·A).
    pub fn backward(&mut self, dx: Option<&mut [f32]>, dy: Mat, x: &[f32], n: usize, la: &mut LoraActs, step_seed: u64) {
        let (r, inp, outd) = (self.rank, self.in_dim(), self.out_dim());
        if let Some(gb) = &mut self.b.grad {
            for (s, u) in la.du[..n * r].iter_mut().zip(&la.u) {
                *s = self.scale * u;
            }
            matmul(MatMut::new(gb, outd, r), dy.t(), Mat::new(&la.du[..n * r], n, r), true);
        }
        matmul(MatMut::new(&mut la.du[..n * r], n, r), dy, Mat::new(&self.b.data, outd, r), false);
        for d in &mut la.du[..n * r] {
            *d *= self.scale;
        }
        if self.a.is_trainable() {
            if self.dropout > 0.0 {
                self.drop_input(x, n, la, step_seed);
            }
            let xin = if self.dropout > 0.0 { &la.x_drop[..n * inp] } else { &x[..n * inp] };
            let ga = self.a.grad.as_mut().expect("trainable");
            matmul(MatMut::new(ga, r, inp), Mat::new(&la.du[..n * r], n, r).t(), Mat::new(xin, n, inp), true);
        }
        let Some(dx) = dx else { return };
        let du = Mat::new(&la.du[..n * r], n, r);
        if self.dropout > 0.0 {
            // dx += mask ⊙ (du·A) / (1−p): the mask is where dropout(x) kept x; regenerate it.
            let mut t = std::mem::take(&mut la.x_drop);
            matmul(MatMut::new(&mut t[..n * inp], n, inp), du, Mat::new(&self.a.data, r, inp), false);
            let (p, keep_scale) = (self.dropout as f64, 1.0 / (1.0 - self.dropout));
            for (i, (d, tv)) in dx[..n * inp].iter_mut().zip(&t).enumerate() {
                if rng::uniform(step_seed, self.stream, i as u64) >= p {
                    *d += tv * keep_scale;
                }
            }
            la.x_drop = t;
        } else {
            matmul(MatMut::new(&mut dx[..n * inp], n, inp), du, Mat::new(&self.a.data, r, inp), true);
        }
    }

    /// ΔW = scale·B·A, (out, in), for merging into the base weight.
    pub fn delta(&self) -> Vec<f32> {
        let (r, inp, outd) = (self.rank, self.in_dim(), self.out_dim());
        let mut d = vec![0.0; outd * inp];
        matmul(MatMut::new(&mut d, outd, inp), Mat::new(&self.b.data, outd, r), Mat::new(&self.a.data, r, inp), false);
        for v in &mut d {
            *v *= self.scale;
        }
        d
    }
}

/// Freezes the whole base and attaches fresh adapters to the targeted linear layers.
pub fn attach(model: &mut Transformer, cfg: &LoraConfig, seed: u64) -> Result<usize> {
    if cfg.rank == 0 {
        bail!("LoRA rank must be at least 1");
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        bail!("LoRA dropout must be in [0, 1), got {}", cfg.dropout);
    }
    for p in model.params_mut() {
        p.set_trainable(false);
    }
    let mut count = 0;
    for blk in &mut model.blocks {
        for lin in blk.linears_mut() {
            if cfg.targets_module(&lin.name) {
                lin.lora = Some(Lora::new(&lin.name, lin.in_dim, lin.out_dim, cfg, seed));
                count += 1;
            }
        }
    }
    if count == 0 {
        let mut leaves: Vec<&str> =
            model.blocks[0].linears().map(|l| l.name.rsplit('.').next().unwrap_or(&l.name)).collect();
        leaves.dedup();
        bail!("no layer matches LoRA targets {:?}; this model's linear layers are: {}", cfg.targets, leaves.join(", "));
    }
    Ok(count)
}

/// Full fine-tuning: every tensor trainable, optionally except the embeddings (and a head tied to them).
pub fn set_full_finetune(model: &mut Transformer, freeze_embeddings: bool) {
    // An untied lm_head is an output layer, not an embedding: it stays trainable.
    for p in model.params_mut() {
        let is_embedding = p.name.ends_with("embed_tokens.weight") || p.name.ends_with("wte.weight") || p.name.ends_with("wpe.weight");
        p.set_trainable(!(freeze_embeddings && is_embedding));
    }
}
