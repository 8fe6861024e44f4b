//! Text ↔ ids: a Hugging Face `tokenizers::Tokenizer` with what conditional modelling needs around it — the
//! prefix the tokenizer puts before a text (BOS or nothing), EOS, and the chat template.
use crate::input;
use anyhow::{Context, Result, bail};
use std::path::Path;
use tokenizers::Tokenizer;

pub struct TextTokenizer {
    pub inner: Tokenizer,
    /// What the tokenizer itself puts before a text (BOS or nothing), found by asking it.
    pub prefix: Vec<u32>,
    pub eos_id: u32,
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    /// Wraps a tokenizer; `add_bos` forces a BOS prefix when config says so but the tokenizer's
    /// post-processor does not add one (tokenizer_config.json `add_bos_token: true`).
    pub fn new(
        inner: Tokenizer,
        eos_id: u32,
        bos_to_force: Option<u32>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let probe = "condlm probe";
        let with = inner.encode(probe, true).map_err(|e| anyhow::anyhow!("tokenizer failed on a probe text: {e}"))?;
        let without =
            inner.encode(probe, false).map_err(|e| anyhow::anyhow!("tokenizer failed on a probe text: {e}"))?;
        let (with, without) = (with.get_ids(), without.get_ids());
        let mut prefix = (0..=with.len().saturating_sub(without.len()))
            .find(|&k| with[k..].starts_with(without))
            .map(|k| with[..k].to_vec())
            .context("the tokenizer's special-token post-processor rewrites text tokens; cannot tell where BOS goes")?;
        if prefix.is_empty()
            && let Some(bos) = bos_to_force
        {
            prefix.push(bos);
        }
        Ok(TextTokenizer { inner, prefix, eos_id, chat_template })
    }

    /// Loads `tokenizer.json` and `tokenizer_config.json` from an HF folder.
    pub fn from_hf_dir(dir: &Path, config_eos: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{}: tokenizer.json is missing; copy it from the original model folder", dir.display());
        }
        let inner: Tokenizer = input::read_to_string(&path, "tokenizer file")?
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text = input::read_to_string(&cfg_path, "tokenizer config")?;
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?
        } else {
            serde_json::Value::Null
        };
        let token_id = |key: &str| -> Option<u32> {
            let v = cfg.get(key)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let eos_id = token_id("eos_token").or(config_eos).with_context(|| {
            format!(
                "{}: no eos_token in tokenizer_config.json or config.json; the model could not learn to stop",
                dir.display()
            )
        })?;
        let bos_to_force = match cfg.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(true) => token_id("bos_token"),
            _ => None,
        };
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => {
                let path = dir.join("chat_template.jinja");
                path.exists().then(|| input::read_to_string(&path, "chat template")).transpose()?
            }
        };
        Self::new(inner, eos_id, bos_to_force, chat_template)
    }

    /// Plain text → ids, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow::anyhow!("decoding failed: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
