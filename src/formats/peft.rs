//! PEFT's LoRA adapter format: `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_A.weight` (r, in) / `.lora_B.weight` (out, r), and `adapter_config.json`.
use crate::network::config::Family;
use crate::network::lora::{Lora, LoraConfig};
use crate::network::transformer::Transformer;
use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const PREFIX: &str = "base_model.model.";

/// A tensor's shape and f32 values.
type ShapedTensor = (Vec<usize>, Vec<f32>);

/// Writes the model's adapters as a PEFT folder `dir`, atomically (temp folder, then rename).
pub fn save_adapter(dir: &Path, model: &Transformer, cfg: &LoraConfig, base_model: &str) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut modules = std::collections::BTreeSet::new();
    for lin in model.blocks.iter().flat_map(|b| b.linears()) {
        if let Some(l) = &lin.lora {
            for p in [&l.a, &l.b] {
                tensors.push((
                    format!("{PREFIX}{}", p.name),
                    p.shape.clone(),
                    p.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
            }
            modules.insert(lin.name.rsplit('.').next().unwrap_or(&lin.name).to_string());
        }
    }
    if tensors.is_empty() {
        bail!("the model has no LoRA adapters to save");
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = safetensors::serialize(views, Some(metadata))?;
    // Only keys every PEFT version knows: older releases reject unknown ones.
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": modules.into_iter().collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": model.config.family == Family::Gpt2,
        "use_rslora": cfg.rslora,
        "use_dora": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
    });
    crate::output::write_dir_atomic(
        dir,
        &[("adapter_model.safetensors", weights), ("adapter_config.json", serde_json::to_vec_pretty(&config)?)],
    )
}

/// Reads a PEFT adapter folder's config as a `LoraConfig`.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = field("peft_type").and_then(|t| t.as_str())
        && t != "LORA"
    {
        bail!("{}: peft_type {t} is not supported (only LORA)", path.display());
    }
    if field("use_dora").and_then(|x| x.as_bool()) == Some(true) {
        bail!("{}: DoRA adapters (use_dora: true) are not supported", path.display());
    }
    if let Some(b) = field("bias").and_then(|b| b.as_str())
        && b != "none"
    {
        bail!("{}: bias \"{b}\" is not supported (only \"none\")", path.display());
    }
    let rank =
        field("r").and_then(|x| x.as_u64()).with_context(|| format!("{}: missing \"r\"", path.display()))? as usize;
    let targets = match field("target_modules") {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => vec![],
    };
    Ok(LoraConfig {
        rank,
        alpha: field("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(8.0) as f32,
        dropout: field("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32,
        rslora: field("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false),
        targets,
    })
}

/// Loads a PEFT adapter folder into `model`: adapters attach where the file has them; every tensor
/// must belong to a linear layer of this model with matching shapes.
pub fn load_adapter(dir: &Path, model: &mut Transformer) -> Result<LoraConfig> {
    let cfg = read_adapter_config(dir)?;
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    // module → (A, B)
    let mut found: BTreeMap<String, [Option<ShapedTensor>; 2]> = BTreeMap::new();
    for (key, view) in st.tensors() {
        let module_key = key.strip_prefix(PREFIX).unwrap_or(&key);
        let (module, which) = if let Some(m) = module_key.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = module_key.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            bail!("{}: tensor {key} is not a LoRA A/B matrix (only plain LoRA adapters are supported)", path.display());
        };
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => {
                view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                view.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => bail!("{}: tensor {key} has dtype {other:?} (expected F32, F16 or BF16)", path.display()),
        };
        found.entry(module.to_string()).or_default()[which] = Some((view.shape().to_vec(), data));
    }
    let scale_cfg = LoraConfig { targets: vec![], ..cfg.clone() };
    let mut attached = 0;
    for lin in model.blocks.iter_mut().flat_map(|b| b.linears_mut()) {
        let Some(pair) = found.remove(&lin.name) else { continue };
        let [Some((sa, a)), Some((sb, b))] = pair else {
            bail!("{}: module {} has only one of lora_A / lora_B", path.display(), lin.name);
        };
        let (want_a, want_b) = (vec![cfg.rank, lin.in_dim], vec![lin.out_dim, cfg.rank]);
        if sa != want_a || sb != want_b {
            bail!(
                "{}: {}.lora_A/B have shapes {sa:?}/{sb:?} but this model needs {want_a:?}/{want_b:?} for r={}: \
                 the adapter was trained for a different base model",
                path.display(),
                lin.name,
                cfg.rank
            );
        }
        lin.lora = Some(Lora::new(&lin.name, lin.in_dim, lin.out_dim, &scale_cfg, 0).with_weights(a, b));
        attached += 1;
    }
    if let Some(module) = found.keys().next() {
        bail!(
            "{}: adapter targets module {module}, which this model does not have: it was trained for a different base model",
            path.display()
        );
    }
    if attached == 0 {
        bail!("{}: the adapter holds no LoRA tensors", path.display());
    }
    Ok(cfg)
}
