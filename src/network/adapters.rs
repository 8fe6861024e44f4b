//! Which tensors train: LoRA adapters attached to the targeted linear layers (base frozen), or full
//! fine-tuning; and merging adapters back into the base weights.
use super::lora::{Lora, LoraConfig, target_matches};
use super::transformer::Transformer;
use anyhow::{Result, bail};

/// Freezes the whole base and attaches fresh adapters to the targeted linear layers.
pub fn attach(model: &mut Transformer, cfg: &LoraConfig, seed: u64) -> Result<usize> {
    if cfg.rank == 0 {
        bail!("LoRA rank must be at least 1");
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        bail!("LoRA dropout must be in [0, 1), got {}", cfg.dropout);
    }
    // Every name must match a linear layer of this model: a misspelt target would silently train fewer layers.
    let names: Vec<&str> = model.blocks.iter().flat_map(|b| b.linears()).map(|l| l.name.as_str()).collect();
    if let Some(bad) = cfg.targets.iter().find(|t| !names.iter().any(|n| target_matches(t, n))) {
        let mut leaves: Vec<&str> = names.iter().map(|n| n.rsplit('.').next().unwrap_or(n)).collect();
        leaves.sort_unstable();
        leaves.dedup();
        bail!(
            "LoRA target \"{bad}\" matches no linear layer of this model; its linear layers are: {}, \
             or all-linear for all of them",
            leaves.join(", ")
        );
    }
    if cfg.targets.is_empty() {
        bail!("no LoRA targets given; name linear layers such as q_proj,v_proj, or all-linear");
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
    Ok(count)
}

/// Full fine-tuning: every tensor trainable, optionally except the embeddings (and a head tied to them).
pub fn set_full_finetune(model: &mut Transformer, freeze_embeddings: bool) {
    // An untied lm_head is an output layer, not an embedding: it stays trainable.
    for p in model.params_mut() {
        let is_embedding =
            p.name.ends_with("embed_tokens.weight") || p.name.ends_with("wte.weight") || p.name.ends_with("wpe.weight");
        p.set_trainable(!(freeze_embeddings && is_embedding));
    }
    // What stays packed (frozen embeddings) moves to an arena of its own; the rest of the old one is freed.
    model.gather_packed();
}

/// Folds every adapter into its base weight (W += (α/r)·B·A) and removes it: the model then
/// computes exactly what the adapted model computed, with plain linear layers. A merged weight that is not finite
/// (an adapter with huge values or scale: finite on its own, overflowing in the product) is an error naming it, so
/// no command writes a model every loader then refuses.
pub fn merge(model: &mut Transformer) -> Result<()> {
    for lin in model.blocks.iter_mut().flat_map(|b| b.linears_mut()) {
        if let Some(l) = lin.lora.take() {
            lin.w.unpack();
            for (w, d) in lin.w.data.iter_mut().zip(l.delta()) {
                *w += d;
            }
            if let Some(i) = lin.w.data.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{}.weight is {} at element {i} after merging its LoRA adapter (scale {}); the adapter's values \
                     or lora_alpha are too large for a model: check that it trained without diverging",
                    lin.name,
                    lin.w.data[i],
                    l.scale
                );
            }
        }
    }
    Ok(())
}
