//! PEFT's LoRA adapter format: `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_A.weight` (r, in) / `.lora_B.weight` (out, r), and `adapter_config.json`.
//!
//! `adapter_config.json` is read with the semantics of PEFT's `LoraConfig` (peft 0.21), field by field: a key
//! that is missing takes PEFT's default (`r` 8, `lora_alpha` 8, `lora_dropout` 0, `use_rslora` false,
//! `target_modules` the architecture's default); a key that is present must hold a value of the right type, or
//! loading fails naming the key, what it holds and what is allowed. Which modules are adapted follows PEFT's
//! `check_target_module_exists` (`target_modules` as a list of names or suffixes, as a regex, or
//! `"all-linear"`; `exclude_modules`; `layers_to_transform` / `layers_pattern`), and each module's rank and
//! alpha follow `rank_pattern` / `alpha_pattern` as PEFT's `get_pattern_key` picks them. The tensors in the file
//! must be exactly those of the targeted modules. Features condlm does not implement (DoRA, `modules_to_save`,
//! …) are refused by name when set, and so is a key condlm does not know.
use super::trained_on::{self, TrainedOn};
use super::weights::check_finite;
use crate::network::config::Family;
use crate::network::lora::{Lora, LoraConfig};
use crate::network::transformer::Transformer;
use anyhow::{Context, Result, anyhow, bail};
use regex::Regex;
use safetensors::tensor::{Dtype, TensorView};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const PREFIX: &str = "base_model.model.";

/// A tensor's shape and f32 values.
type ShapedTensor = (Vec<usize>, Vec<f32>);

/// Keys that do not change what a loaded LoRA adapter computes: metadata, or settings read only when adapters
/// are created, by the init methods refused below, or by features whose own key is refused below.
const INERT_KEYS: &[&str] = &[
    "task_type",
    "peft_version",
    "auto_mapping",
    "revision",
    "inference_mode",
    "base_model_name_or_path",
    "fan_in_fan_out",
    "megatron_core",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "qalora_group_size",
    "runtime_config",
    "ensure_weight_tying",
];

/// PEFT features condlm does not implement: refused when set to anything but their defaults (null, false,
/// an empty list or object).
const UNSUPPORTED_KEYS: &[&str] = &[
    "modules_to_save",
    "layer_replication",
    "megatron_config",
    "trainable_token_indices",
    "use_dora",
    "velora_config",
    "alora_invocation_tokens",
    "use_qalora",
    "monteclora_config",
    "lora_bias",
    "target_parameters",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
];

/// Keys read and checked by `read_adapter_config`.
const READ_KEYS: &[&str] = &[
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "bias",
    "init_lora_weights",
];

/// `init_lora_weights` values that only set the starting A and B. PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA and MiCA
/// also rewrite the base weights when PEFT loads the adapter, which condlm does not do.
const PLAIN_INITS: &[&str] = &["gaussian", "eva", "orthogonal"];

/// Which linear layers `target_modules` names, as PEFT reads it.
#[derive(Debug)]
enum Targets {
    /// The string "all-linear" (any case): every linear layer but the output head.
    AllLinear,
    /// Any other string: a regex the whole module path must match.
    Regex(Regex),
    /// A list: a module path, or a suffix after a dot.
    Names(Vec<String>),
    /// No `target_modules`: PEFT's default for the architecture.
    Default,
}

/// `layers_to_transform` with `layers_pattern`: only modules inside these layer indices are targeted.
#[derive(Debug)]
struct Layers {
    indices: Vec<u64>,
    /// Regexes capturing the layer index (PEFT's, built from `layers_pattern` or its default).
    finders: Vec<Regex>,
}

/// One `rank_pattern` / `alpha_pattern` entry: a module-path regex and its value.
#[derive(Debug)]
struct Pattern<T> {
    key: String,
    re: Regex,
    value: T,
}

/// What `adapter_config.json` says, checked.
#[derive(Debug)]
pub struct AdapterConfig {
    /// `r`, `lora_alpha`, `lora_dropout`, `use_rslora`; `targets` stays empty: PEFT's rules for which modules
    /// are adapted are `targets_module`'s.
    pub lora: LoraConfig,
    /// `base_model_name_or_path`, when set and not empty.
    pub base_model: Option<String>,
    targets: Targets,
    exclude: Option<Targets>,
    layers: Option<Layers>,
    rank_pattern: Vec<Pattern<usize>>,
    alpha_pattern: Vec<Pattern<f32>>,
}

impl AdapterConfig {
    /// PEFT's `check_target_module_exists` for a linear layer's module path.
    fn targets_module(&self, module: &str, family: Family) -> bool {
        let listed = |names: &[String]| names.iter().any(|t| module == t || module.ends_with(&format!(".{t}")));
        match &self.exclude {
            Some(Targets::Regex(re)) if re.is_match(module) => return false,
            Some(Targets::Names(names)) if listed(names) => return false,
            _ => {}
        }
        let names: Vec<String> = match &self.targets {
            Targets::AllLinear => return true,
            Targets::Regex(re) => return re.is_match(module),
            Targets::Names(names) if names.iter().any(|t| t == module) => return true,
            Targets::Names(names) => names.clone(),
            Targets::Default => default_targets(family).iter().map(|s| s.to_string()).collect(),
        };
        if !listed(&names) {
            return false;
        }
        let Some(layers) = &self.layers else { return true };
        let index = layers.finders.iter().find_map(|re| re.captures(module)).and_then(|c| c["idx"].parse().ok());
        index.is_some_and(|i: u64| layers.indices.contains(&i))
    }

    /// The module's (rank, alpha): PEFT's `get_pattern_key` takes the first pattern key, in file order, that
    /// matches the end of the module path at a dot boundary.
    fn rank_alpha(&self, module: &str) -> (usize, f32) {
        let rank = self.rank_pattern.iter().find(|p| p.re.is_match(module)).map_or(self.lora.rank, |p| p.value);
        let alpha = self.alpha_pattern.iter().find(|p| p.re.is_match(module)).map_or(self.lora.alpha, |p| p.value);
        (rank, alpha)
    }

    /// `target_modules` for messages.
    fn targets_text(&self, family: Family) -> String {
        match &self.targets {
            Targets::AllLinear => "\"all-linear\"".into(),
            Targets::Regex(re) => format!("{:?}", re.as_str().trim_start_matches("^(?:").trim_end_matches(")$")),
            Targets::Names(names) => format!("{names:?}"),
            Targets::Default => format!("missing: PEFT's default {:?}", default_targets(family)),
        }
    }

    /// How the module's r was chosen, for messages.
    fn rank_source(&self, module: &str) -> String {
        match self.rank_pattern.iter().find(|p| p.re.is_match(module)) {
            Some(p) => format!("rank_pattern \"{}\": {}", p.key, p.value),
            None => format!("r: {}", self.lora.rank),
        }
    }
}

/// PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING` for the architectures condlm runs.
fn default_targets(family: Family) -> &'static [&'static str] {
    match family {
        Family::Llama => &["q_proj", "v_proj"],
        Family::Gpt2 => &["c_attn"],
    }
}

/// `target_modules` that select exactly the `adapted` linear layers under PEFT's matching: their leaf names
/// (q_proj, …) when every layer of those names is adapted, else the full module paths (an adapter on some blocks
/// only: leaf names would adapt every block in PEFT and make condlm refuse the adapter as incomplete).
fn target_modules(model: &Transformer, adapted: &BTreeSet<&str>) -> Vec<String> {
    let leaf = |name: &str| name.rsplit('.').next().unwrap_or(name).to_string();
    let leaves: BTreeSet<String> = adapted.iter().map(|n| leaf(n)).collect();
    let all_of_those_leaves = model
        .blocks
        .iter()
        .flat_map(|b| b.linears())
        .filter(|l| leaves.contains(&leaf(&l.name)))
        .all(|l| adapted.contains(l.name.as_str()));
    if all_of_those_leaves { leaves.into_iter().collect() } else { adapted.iter().map(|n| n.to_string()).collect() }
}

/// A JSON value as a message shows it: `"16" (a string)`, `null`, `[1, 2] (a list)`.
fn describe(v: &Value) -> String {
    let mut text = v.to_string();
    if text.chars().count() > 60 {
        text = text.chars().take(57).collect::<String>() + "…";
    }
    match v {
        Value::Null | Value::Number(_) => text,
        Value::Bool(_) => format!("{text} (a boolean)"),
        Value::String(_) => format!("{text} (a string)"),
        Value::Array(_) => format!("{text} (a list)"),
        Value::Object(_) => format!("{text} (an object)"),
    }
}

/// Whether a value is PEFT's "not set": null, false, an empty list or object.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// A JSON object's entries in file order (serde_json's map sorts keys; PEFT tries pattern keys in file order).
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(e) = m.next_entry()? {
                    entries.push(e);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The pattern objects again, in file order.
#[derive(Deserialize)]
struct PatternOrder {
    rank_pattern: Option<Ordered>,
    alpha_pattern: Option<Ordered>,
}

/// The keys of one `adapter_config.json`, with typed getters whose errors name the file, the key, what it
/// holds and what it must hold.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    /// `key` is a plain key (quoted here) or already a phrase such as `rank_pattern entry "q_proj"`.
    fn bad(&self, key: &str, v: &Value, want: &str) -> anyhow::Error {
        let key =
            if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') { format!("\"{key}\"") } else { key.into() };
        anyhow!("{}: {key} is {}; it must be {want}", self.path.display(), describe(v))
    }

    /// A positive integer; `what` names it in messages.
    fn positive_int(&self, what: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .filter(|&n| n >= 1)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.bad(what, v, "a positive integer such as 8 or 16"))
    }

    /// A finite number.
    fn number(&self, what: &str, v: &Value) -> Result<f64> {
        v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| self.bad(what, v, "a number such as 16 or 32"))
    }

    /// The key's value, PEFT's default when it is missing; a null is an error (PEFT would fail on it).
    fn or_default<T>(&self, key: &str, default: T, parse: impl Fn(&Value) -> Result<T>) -> Result<T> {
        self.obj.get(key).map_or(Ok(default), parse)
    }

    /// A key whose default is null: `None` when missing or null.
    fn optional(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// A pattern PEFT applies with Python's `re`, anchored by the caller as PEFT anchors it.
    fn regex(&self, key: &str, pattern: &str) -> Result<Regex> {
        Regex::new(pattern).map_err(|e| {
            anyhow!(
                "{}: \"{key}\" holds the pattern {pattern:?}, which condlm cannot compile ({e}); \
                 use plain names or a regex without look-around and back-references",
                self.path.display()
            )
        })
    }

    /// `target_modules` / `exclude_modules`: a list of strings or a string (a regex, or "all-linear").
    fn targets(&self, key: &str, v: &Value) -> Result<Targets> {
        let want = "a list of module names such as [\"q_proj\", \"v_proj\"], or a string (a regex or \"all-linear\")";
        match v {
            Value::String(s) if key == "target_modules" && s.eq_ignore_ascii_case("all-linear") => {
                Ok(Targets::AllLinear)
            }
            Value::String(s) => Ok(Targets::Regex(self.regex(key, &format!("^(?:{s})$"))?)),
            Value::Array(a) => {
                let names = a.iter().map(|x| x.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>();
                names.map(Targets::Names).ok_or_else(|| self.bad(key, v, want))
            }
            _ => Err(self.bad(key, v, want)),
        }
    }
}

/// Reads and checks a PEFT adapter folder's `adapter_config.json`.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig> {
    if dir.is_file() && dir.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        bail!(
            "{}: a GGUF file; condlm reads adapters as PEFT folders (adapter_config.json and \
             adapter_model.safetensors: the adapter/ a `condlm train` run wrote)",
            dir.display()
        );
    }
    if dir.is_file() {
        let folder = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        bail!(
            "{}: a file; an adapter is a PEFT folder (adapter_config.json beside adapter_model.safetensors): pass \
             the folder{}",
            dir.display(),
            match folder.join("adapter_config.json").is_file() {
                true => format!(", {}", folder.display()),
                false => String::new(),
            }
        );
    }
    if !dir.join("adapter_config.json").exists() && dir.join("adapter/adapter_config.json").is_file() {
        bail!(
            "{}: no adapter_config.json here, but an adapter in {}: a `condlm train` run folder; pass that",
            dir.display(),
            dir.join("adapter").display()
        );
    }
    let path = dir.join("adapter_config.json");
    let text = crate::input::read_to_string(&path, "adapter config")?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let obj = v.as_object().with_context(|| format!("{}: not a JSON object", path.display()))?;
    let f = Fields { path: &path, obj };
    check_keys(&f)?;

    let rank = f.or_default("r", 8, |v| f.positive_int("r", v))?;
    let alpha = f.or_default("lora_alpha", 8.0, |v| f.number("lora_alpha", v))? as f32;
    let dropout = f.or_default("lora_dropout", 0.0, |v| {
        v.as_f64().filter(|d| (0.0..1.0).contains(d)).ok_or_else(|| f.bad("lora_dropout", v, "a number in [0, 1)"))
    })? as f32;
    let rslora =
        f.or_default("use_rslora", false, |v| v.as_bool().ok_or_else(|| f.bad("use_rslora", v, "true or false")))?;
    let targets = f.optional("target_modules").map(|v| f.targets("target_modules", v)).transpose()?;
    let exclude = f.optional("exclude_modules").map(|v| f.targets("exclude_modules", v)).transpose()?;
    let layers = read_layers(&f, targets.as_ref())?;
    let order: PatternOrder = serde_json::from_str(&text).map_err(|_| {
        ["rank_pattern", "alpha_pattern"]
            .into_iter()
            .find_map(|k| obj.get(k).filter(|v| !v.is_object() && !v.is_null()).map(|v| (k, v)))
            .map_or_else(
                || anyhow!("{}: cannot read rank_pattern / alpha_pattern", path.display()),
                |(key, v)| f.bad(key, v, "an object mapping module patterns to values"),
            )
    })?;
    let rank_pattern = read_patterns(&f, "rank_pattern", order.rank_pattern, |w, v| f.positive_int(w, v))?;
    let alpha_pattern = read_patterns(&f, "alpha_pattern", order.alpha_pattern, |w, v| Ok(f.number(w, v)? as f32))?;
    Ok(AdapterConfig {
        lora: LoraConfig { rank, alpha, dropout, rslora, targets: vec![] },
        base_model: f
            .optional("base_model_name_or_path")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        targets: targets.unwrap_or(Targets::Default),
        exclude,
        layers,
        rank_pattern,
        alpha_pattern,
    })
}

/// `rank_pattern` / `alpha_pattern` entries in file order; a key is a regex PEFT matches with
/// `re.match(rf"(.*\.)?({key})$", module)`.
fn read_patterns<T>(
    f: &Fields,
    key: &str,
    entries: Option<Ordered>,
    value: impl Fn(&str, &Value) -> Result<T>,
) -> Result<Vec<Pattern<T>>> {
    let entries = entries.map_or_else(Vec::new, |o| o.0);
    entries
        .into_iter()
        .map(|(k, v)| {
            let re = f.regex(key, &format!(r"^(?:.*\.)?(?:{k})$"))?;
            Ok(Pattern { re, value: value(&format!("{key} entry \"{k}\""), &v)?, key: k })
        })
        .collect()
}

/// Refuses other PEFT methods, features condlm does not implement, and keys it does not know.
fn check_keys(f: &Fields) -> Result<()> {
    let path = f.path.display();
    if let Some(v) = f.optional("peft_type")
        && v.as_str() != Some("LORA")
    {
        bail!("{path}: \"peft_type\" is {}; condlm reads only LoRA adapters (\"LORA\")", describe(v));
    }
    if let Some(v) = f.obj.get("bias")
        && v.as_str() != Some("none")
    {
        bail!("{path}: \"bias\" is {}; condlm reads only adapters without trained biases (\"none\")", describe(v));
    }
    if let Some(v) = f.obj.get("init_lora_weights")
        && !(v.is_boolean() || v.as_str().is_some_and(|s| PLAIN_INITS.contains(&s)))
    {
        bail!(
            "{path}: \"init_lora_weights\" is {}: that initialisation rewrites the base weights when PEFT loads the \
             adapter, which condlm does not do; convert it to a plain LoRA adapter with PEFT's \
             save_pretrained(path_initial_model_for_weight_conversion=...)",
            describe(v)
        );
    }
    for (key, v) in f.obj {
        if UNSUPPORTED_KEYS.contains(&key.as_str()) && !is_unset(v) {
            bail!("{path}: \"{key}\" is {}; condlm does not implement it (only its default)", describe(v));
        }
        let known = [INERT_KEYS, UNSUPPORTED_KEYS, READ_KEYS].iter().any(|keys| keys.contains(&key.as_str()));
        if !known && !is_unset(v) {
            bail!(
                "{path}: \"{key}\" is {}, a setting condlm does not know (it reads PEFT 0.21's LoraConfig), so it \
                 cannot tell whether it changes what the adapter computes; remove the key if it does not",
                describe(v)
            );
        }
    }
    Ok(())
}

/// `layers_to_transform` (an index or a list of them) and `layers_pattern`, as PEFT checks them together.
fn read_layers(f: &Fields, targets: Option<&Targets>) -> Result<Option<Layers>> {
    let path = f.path.display();
    let pattern = f.optional("layers_pattern").filter(|v| !is_unset(v) && v.as_str() != Some(""));
    let Some(v) = f.optional("layers_to_transform").filter(|v| !is_unset(v)) else {
        if pattern.is_some() {
            bail!("{path}: \"layers_pattern\" is set but \"layers_to_transform\" is not (PEFT refuses that too)");
        }
        return Ok(None);
    };
    if matches!(targets, Some(Targets::Regex(_) | Targets::AllLinear)) {
        bail!(
            "{path}: \"layers_to_transform\" cannot be used when \"target_modules\" is a string (PEFT refuses that too)"
        );
    }
    let want = "a layer index or a list of them, such as [0, 1]";
    let indices = match v {
        Value::Array(a) => a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>(),
        _ => v.as_u64().map(|i| vec![i]),
    }
    .ok_or_else(|| f.bad("layers_to_transform", v, want))?;
    // PEFT's regexes take the first numbered path segment (after the layers pattern, when given).
    let finders = match pattern {
        None => vec![f.regex("layers_pattern", r"^.*?\.[^.]*\.(?P<idx>\d+)\.")?],
        Some(Value::String(p)) => vec![f.regex("layers_pattern", &format!(r"^(?:^|.*?\.){p}\.(?P<idx>\d+)\."))?],
        Some(Value::Array(ps)) => ps
            .iter()
            .map(|p| match p.as_str() {
                Some(p) => f.regex("layers_pattern", &format!(r"^(?:^|.*?\.){p}\.(?P<idx>\d+)\.")),
                None => {
                    Err(f.bad("layers_pattern", pattern.unwrap(), "a string or a list of strings such as \"layers\""))
                }
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(f.bad("layers_pattern", other, "a string or a list of strings such as \"layers\"")),
    };
    Ok(Some(Layers { indices, finders }))
}

/// Writes the model's adapters as a PEFT folder `dir`, atomically (temp folder, then rename).
pub fn save_adapter(
    dir: &Path,
    model: &Transformer,
    cfg: &LoraConfig,
    base_model: &str,
    trained_on: TrainedOn,
) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut adapted = BTreeSet::new();
    for lin in model.blocks.iter().flat_map(|b| b.linears()) {
        if let Some(l) = &lin.lora {
            for p in [&l.a, &l.b] {
                tensors.push((
                    format!("{PREFIX}{}", p.name),
                    p.shape.clone(),
                    p.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
            }
            adapted.insert(lin.name.as_str());
        }
    }
    let target_modules = target_modules(model, &adapted);
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
        "lora_alpha": decimal(cfg.alpha),
        "lora_dropout": decimal(cfg.dropout),
        "target_modules": target_modules,
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
        &[
            ("adapter_model.safetensors", weights),
            ("adapter_config.json", serde_json::to_vec_pretty(&config)?),
            (trained_on::FILE, trained_on.file_bytes()),
        ],
    )
}

/// `x` as the shortest decimal that reads back as it (0.05, not 0.05000000074505806: the f32 widened), as Python
/// writes the float a user gave.
fn decimal(x: f32) -> serde_json::Value {
    x.to_string().parse::<f64>().map_or(serde_json::Value::Null, serde_json::Value::from)
}

/// Loads a PEFT adapter folder into `model` (its config, then `attach_adapter`).
pub fn load_adapter(dir: &Path, model: &mut Transformer) -> Result<AdapterConfig> {
    let cfg = read_adapter_config(dir)?;
    attach_adapter(dir, &cfg, model)?;
    Ok(cfg)
}

/// Attaches the adapter in `dir` (whose config is `cfg`) to `model`. The file must hold lora_A and lora_B,
/// finite, for exactly the linear layers `cfg` targets, with this model's shapes and the module's rank.
pub fn attach_adapter(dir: &Path, cfg: &AdapterConfig, model: &mut Transformer) -> Result<()> {
    let path = dir.join("adapter_model.safetensors");
    let shown = path.display();
    let mut found = read_lora_tensors(&path)?;
    let family = model.config.family;
    let linears: BTreeSet<String> = model.blocks.iter().flat_map(|b| b.linears()).map(|l| l.name.clone()).collect();
    if let Some(module) = found.keys().find(|m| !linears.contains(*m)) {
        if module.ends_with("lm_head") || module.ends_with("embed_tokens") {
            bail!("{shown}: the adapter puts LoRA on {module}; condlm supports LoRA on the blocks' linear layers only");
        }
        bail!(
            "{shown}: adapter targets module {module}, which this model does not have: it was trained for a \
             different base model"
        );
    }
    for lin in model.blocks.iter_mut().flat_map(|b| b.linears_mut()) {
        let targeted = cfg.targets_module(&lin.name, family);
        let Some(pair) = found.remove(&lin.name) else {
            if targeted {
                bail!(
                    "{shown}: adapter_config.json targets {} (target_modules {}), but the file has no lora_A / \
                     lora_B for it: the adapter is incomplete",
                    lin.name,
                    cfg.targets_text(family)
                );
            }
            continue;
        };
        if !targeted {
            bail!(
                "{shown}: holds LoRA tensors for {}, which adapter_config.json does not target (target_modules \
                 {:?}, exclude_modules, layers_to_transform), so PEFT would ignore them: the config and the \
                 weights do not belong together",
                lin.name,
                cfg.targets_text(family)
            );
        }
        let [Some((sa, a)), Some((sb, b))] = pair else {
            bail!("{shown}: module {} has only one of lora_A / lora_B", lin.name);
        };
        let (rank, alpha) = cfg.rank_alpha(&lin.name);
        let (want_a, want_b) = (vec![rank, lin.in_dim], vec![lin.out_dim, rank]);
        if sa != want_a || sb != want_b {
            let dims_fit = sa.len() == 2 && sb.len() == 2 && sa[1] == lin.in_dim && sb[0] == lin.out_dim;
            if dims_fit && sa[0] == sb[1] {
                bail!(
                    "{shown}: {}.lora_A/B have rank {}, but adapter_config.json gives this module {}: the config \
                     and the weights do not belong together",
                    lin.name,
                    sa[0],
                    cfg.rank_source(&lin.name)
                );
            }
            bail!(
                "{shown}: {}.lora_A/B have shapes {sa:?}/{sb:?} but this model needs {want_a:?}/{want_b:?} for r={rank}: \
                 the adapter was trained for a different base model",
                lin.name
            );
        }
        let module_cfg = LoraConfig { rank, alpha, ..cfg.lora.clone() };
        lin.lora = Some(Lora::new(&lin.name, lin.in_dim, lin.out_dim, &module_cfg, 0).with_weights(a, b));
    }
    if model.blocks.iter().flat_map(|b| b.linears()).all(|l| l.lora.is_none()) {
        bail!("{shown}: the adapter holds no LoRA tensors");
    }
    Ok(())
}

/// The file's lora_A / lora_B tensors as f32 by module path; any other tensor, or a value that is not finite,
/// is an error naming the tensor.
fn read_lora_tensors(path: &Path) -> Result<BTreeMap<String, [Option<ShapedTensor>; 2]>> {
    let shown = path.display();
    if !path.exists() && path.with_file_name("adapter_model.bin").exists() {
        bail!(
            "{shown} is missing; the adapter has only adapter_model.bin (PyTorch pickle, which condlm does not \
             read): convert it with PEFT (load it and save_pretrained(dir, safe_serialization=True))"
        );
    }
    let bytes = crate::input::map(path, "adapter weights file")?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{shown}: not a valid safetensors file ({e})"))?;
    let mut found: BTreeMap<String, [Option<ShapedTensor>; 2]> = BTreeMap::new();
    for (key, view) in st.tensors() {
        let module_key = key.strip_prefix(PREFIX).unwrap_or(&key);
        let (module, which) = if let Some(m) = module_key.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = module_key.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            bail!("{shown}: tensor {key} is not a LoRA A/B matrix (only plain LoRA adapters are supported)");
        };
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => {
                view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                view.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => bail!("{shown}: tensor {key} has dtype {other:?} (expected F32, F16 or BF16)"),
        };
        check_finite(&data).map_err(|e| {
            anyhow!("{shown}: tensor {key} {e}: the file is damaged or the training that made it diverged")
        })?;
        found.entry(module.to_string()).or_default()[which] = Some((view.shape().to_vec(), data));
    }
    Ok(found)
}

/// "<adapter_config.json>: the adapter was trained for a different base model: …" when its
/// `base_model_name_or_path` names another model than `spec` (`--model` as given); `None` when it names the same
/// one (see `same_base`) or records none.
pub fn base_mismatch(adapter_dir: &Path, cfg: &AdapterConfig, spec: &str) -> Option<String> {
    let base = cfg.base_model.as_deref().filter(|b| !same_base(b, spec))?;
    Some(format!(
        "{}: the adapter was trained for a different base model: \"{base}\", not \"{spec}\"",
        adapter_dir.join("adapter_config.json").display()
    ))
}

/// Whether `recorded` (an adapter's `base_model_name_or_path`) and `spec` (`--model`) name the same model:
/// the same string, the same existing path, or the same model name — the last path component or hub id
/// part, ASCII case ignored, without a trailing slash, a `.gguf` extension or a GGUF quantization tag
/// (`.Q4_K_M`, `-f16`), with `models--org--name` (the HF cache's folder) read as `name`. A GGUF file is also
/// known by its folder's name, which PEFT records when the base was loaded from that folder.
pub fn same_base(recorded: &str, spec: &str) -> bool {
    let (recorded, spec) = (recorded.trim_end_matches('/'), spec.trim_end_matches('/'));
    if recorded == spec {
        return true;
    }
    let spec_path = Path::new(spec);
    let mut candidates = vec![spec_path];
    if spec.ends_with(".gguf") {
        candidates.extend(spec_path.parent().filter(|p| !p.as_os_str().is_empty()));
    }
    let canonical = Path::new(recorded).canonicalize().ok();
    let recorded_name = model_name(recorded);
    candidates.iter().any(|c| {
        canonical.is_some() && c.canonicalize().ok() == canonical
            || model_name(&c.to_string_lossy()).eq_ignore_ascii_case(&recorded_name)
    })
}

/// A model's name from a path or hub id: see `same_base`.
fn model_name(spec: &str) -> String {
    let mut components = spec.trim_end_matches('/').rsplit('/');
    let mut name = components.next().unwrap_or_default();
    // An HF cache snapshot: models--org--name/snapshots/<revision>.
    let parents: Vec<&str> = components.take(2).collect();
    if let [snapshots, repo] = parents[..]
        && snapshots == "snapshots"
        && let Some(repo) = repo.strip_prefix("models--")
    {
        name = repo.rsplit("--").next().unwrap_or(repo);
    }
    if let Some(stem) = name.strip_suffix(".gguf") {
        let quant = Regex::new(r"(?i)^(.+)[.-](?:f16|f32|bf16|i?q\d[a-z0-9_]*)$").expect("a valid regex");
        name = quant.captures(stem).and_then(|c| c.get(1)).map_or(stem, |m| m.as_str());
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_the_user_gave_them() {
        assert_eq!(serde_json::to_string(&decimal(0.05)).unwrap(), "0.05");
        assert_eq!(serde_json::to_string(&decimal(32.0)).unwrap(), "32.0");
        assert_eq!(serde_json::to_string(&decimal(0.1)).unwrap(), "0.1");
    }

    /// The config of these keys, read from a temp folder.
    fn config(json: &str) -> Result<AdapterConfig> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), json).unwrap();
        read_adapter_config(dir.path())
    }

    const Q0: &str = "model.layers.0.self_attn.q_proj";
    const Q1: &str = "model.layers.1.self_attn.q_proj";
    const K0: &str = "model.layers.0.self_attn.k_proj";

    #[test]
    fn missing_keys_take_peft_defaults() {
        let c = config("{}").unwrap();
        assert_eq!((c.lora.rank, c.lora.alpha, c.lora.dropout, c.lora.rslora), (8, 8.0, 0.0, false));
        // PEFT's default targets for Llama-family models: q_proj and v_proj.
        assert!(c.targets_module(Q0, Family::Llama) && !c.targets_module(K0, Family::Llama));
        assert!(c.targets_module("transformer.h.0.attn.c_attn", Family::Gpt2));
    }

    #[test]
    fn patterns_are_tried_in_file_order_at_a_dot_boundary() {
        let c = config(
            r#"{"r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj": 2, "layers.1.self_attn.q_proj": 6},
                           "alpha_pattern": {"_proj": 1}}"#,
        )
        .unwrap();
        // "q_proj" comes first in the file and matches layer 1's q_proj too (a BTreeMap would try the other first).
        assert_eq!(c.rank_alpha(Q1), (2, 8.0));
        // "_proj" must follow a dot: it matches no module.
        assert_eq!(c.rank_alpha(K0), (4, 8.0));
        assert!(
            config(r#"{"rank_pattern": {"q_proj": 0}}"#)
                .unwrap_err()
                .to_string()
                .contains("rank_pattern entry \"q_proj\" is 0")
        );
    }

    #[test]
    fn targets_exclude_and_layers_follow_peft() {
        let c =
            config(r#"{"target_modules": ["q_proj", "model.layers.1.self_attn.k_proj"], "layers_to_transform": 1}"#)
                .unwrap();
        // A full path in the list is taken as is; a suffix only inside layers_to_transform.
        assert!(c.targets_module("model.layers.1.self_attn.k_proj", Family::Llama));
        assert!(c.targets_module(Q1, Family::Llama) && !c.targets_module(Q0, Family::Llama));
        let c = config(r#"{"target_modules": "all-linear", "exclude_modules": ["q_proj"]}"#).unwrap();
        assert!(!c.targets_module(Q0, Family::Llama) && c.targets_module(K0, Family::Llama));
        let c = config(r#"{"target_modules": ".*\\.q_proj"}"#).unwrap();
        assert!(c.targets_module(Q0, Family::Llama) && !c.targets_module(K0, Family::Llama));
        let e = config(r#"{"target_modules": "q_proj", "layers_to_transform": [0]}"#).unwrap_err();
        assert!(e.to_string().contains("layers_to_transform"), "{e}");
        let e = config(r#"{"layers_pattern": "layers"}"#).unwrap_err();
        assert!(e.to_string().contains("layers_pattern"), "{e}");
    }

    #[test]
    fn same_base_compares_model_names() {
        for (recorded, spec) in [
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ("HuggingFaceTB/SmolLM2-135M-Instruct", "/models/smollm2-135m-instruct/"),
            ("org/Llama-3.2-1B", "/x/Llama-3.2-1B-Q4_K_M.gguf"),
            ("org/name", "/home/u/.cache/huggingface/hub/models--org--name/snapshots/abc123"),
        ] {
            assert!(same_base(recorded, spec), "{recorded} vs {spec}");
        }
        // A GGUF is also known by its folder's name.
        assert!(same_base("/a/tiny-llama-gguf", "/b/tiny-llama-gguf/model.gguf"));
        for (recorded, spec) in [
            ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            ("/a/tiny-llama", "/a/tiny-qwen2"),
            ("org/Llama-3.2-1B", "/x/Llama-3.2-3B.Q8_0.gguf"),
        ] {
            assert!(!same_base(recorded, spec), "{recorded} vs {spec}");
        }
    }
}
