//! AdamW + warmup-cosine schedule + global-norm clipping against torch.optim.AdamW,
//! transformers' get_cosine_schedule_with_warmup and clip_grad_norm_ (fixture: make_train_fixtures.py).
mod common;
use common::{fixture, load_f32_tensors};
use condlm::network::param::Param;
use condlm::train::optim::{AdamWConfig, Moments, NORM_CHUNK, adamw_update, add_grad_sq, clip_coef, scale_grad};
use condlm::train::schedule::{Schedule, lr_factor};

#[test]
fn four_steps_match_torch() {
    let t = load_f32_tensors(&fixture("train/adamw.safetensors"));
    let names = ["p0", "p1", "p2"];
    let mut params: Vec<Param> = names
        .iter()
        .map(|n| {
            let (shape, data) = t[&format!("init.{n}")].clone();
            let mut p = Param::new(*n, shape, data);
            p.set_trainable(true);
            p
        })
        .collect();
    let mut moments: Vec<Moments> = params.iter().map(|p| Moments::zeros(p.data.len())).collect();
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    for step in 1..=4u64 {
        for p in params.iter_mut() {
            p.grad = Some(t[&format!("grad.{step}.{}", p.name)].1.clone());
        }
        let mut partials = vec![0.0; params.iter().map(|p| p.data.len().div_ceil(NORM_CHUNK)).max().unwrap()];
        let mut total = 0.0;
        for p in &params {
            add_grad_sq(&mut total, p, &mut partials);
        }
        let norm = total.sqrt();
        let want_norm = t["grad_norm"].1[step as usize - 1] as f64;
        assert!((norm - want_norm).abs() / want_norm < 1e-6, "step {step}: norm {norm} vs {want_norm}");
        if let Some(coef) = clip_coef(norm, 1.0) {
            params.iter_mut().for_each(|p| scale_grad(p, coef));
        }
        let lr = 1e-2 * lr_factor(Schedule::Cosine, step as usize - 1, 2, 6);
        assert!((lr - t["lr"].1[step as usize - 1] as f64).abs() < 1e-9, "step {step}: lr {lr}");
        for (p, m) in params.iter_mut().zip(&mut moments) {
            let clipped = &t[&format!("clipped_grad.{step}.{}", p.name)].1;
            for (a, b) in p.grad.as_ref().unwrap().iter().zip(clipped) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "step {step} {}: clipped grad {a} vs {b}", p.name);
            }
            adamw_update(p, m, &cfg, lr, step);
            // Tolerance: a few f32 ulps — torch's vectorised lerp may fuse multiply-adds that we round twice.
            for (key, got) in [("param", &p.data), ("exp_avg", &m.m), ("exp_avg_sq", &m.v)] {
                let want = &t[&format!("{key}.{step}.{}", p.name)].1;
                for (a, b) in got.iter().zip(want) {
                    assert!((a - b).abs() <= 5e-6 * b.abs().max(1e-4), "step {step} {key} {}: {a} vs {b}", p.name);
                }
            }
        }
    }
}
