//! Text ↔ ids: a Hugging Face `tokenizers::Tokenizer` with what conditional modelling needs around it — the
//! prefix the tokenizer puts before a text (BOS or nothing), EOS, and the chat template.
use crate::input;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::metaspace::PrependScheme;
use tokenizers::{Tokenizer, TokenizerImpl};

pub struct TextTokenizer {
    pub inner: Tokenizer,
    /// What the tokenizer itself puts before a text (BOS or nothing), found by asking it.
    pub prefix: Vec<u32>,
    pub eos_id: u32,
    pub chat_template: Option<String>,
    /// The tokenizer's BOS token as text (tokenizer_config.json `bos_token`, a GGUF's `bos_token_id`), whether or
    /// not it is put before texts: chat templates get it as `bos_token`, as transformers gives it.
    pub bos_token: Option<String>,
    /// For a SentencePiece tokenizer that puts "▁" before a text (its dummy prefix): the tokenizer without it,
    /// for text that continues other text, and its added tokens matched before normalization (id → text)
    /// (`encode_after`).
    continuation: Option<Continuation>,
}

/// How a text continuing other text is tokenized inside their joined text, where the dummy prefix goes only
/// before the joined text's start (Metaspace's prepend scheme "first") or before every piece between added
/// tokens (Metaspace "always", or a `Prepend("▁")` normalizer: Llama-2's and Phi-3's legacy tokenizers).
struct Continuation {
    no_prefix: Tokenizer,
    per_piece: bool,
    added: HashMap<u32, String>,
}

/// `t` without its dummy prefix, and whether it puts one before every piece between added tokens; None where it
/// puts none.
fn without_dummy_prefix(t: &Tokenizer) -> Option<(Tokenizer, bool)> {
    let mut no_prefix: TokenizerImpl<_, _, _, _, _> = t.clone().into_inner();
    let (mut changed, mut per_piece) = (false, false);
    let mut unprefix = |p: &mut PreTokenizerWrapper| {
        if let PreTokenizerWrapper::Metaspace(m) = p
            && m.get_prepend_scheme() != PrependScheme::Never
        {
            per_piece |= m.get_prepend_scheme() == PrependScheme::Always;
            m.set_prepend_scheme(PrependScheme::Never);
            changed = true;
        }
    };
    if let Some(mut p) = no_prefix.get_pre_tokenizer().cloned() {
        match &mut p {
            PreTokenizerWrapper::Sequence(s) => s.as_mut().iter_mut().for_each(&mut unprefix),
            p => unprefix(p),
        }
        no_prefix.with_pre_tokenizer(Some(p));
    }
    let is_prepend = |n: &NormalizerWrapper| matches!(n, NormalizerWrapper::Prepend(_));
    match no_prefix.get_normalizer().cloned() {
        Some(n) if is_prepend(&n) => {
            no_prefix.with_normalizer(None::<NormalizerWrapper>).ok()?;
            (changed, per_piece) = (true, true);
        }
        Some(NormalizerWrapper::Sequence(s)) if s.as_ref().iter().any(is_prepend) => {
            let rest: Vec<NormalizerWrapper> = s.as_ref().iter().filter(|n| !is_prepend(n)).cloned().collect();
            no_prefix.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(rest)))).ok()?;
            (changed, per_piece) = (true, true);
        }
        _ => {}
    }
    changed.then(|| (Tokenizer::from(no_prefix), per_piece))
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
        let continuation = without_dummy_prefix(&inner).map(|(no_prefix, per_piece)| Continuation {
            no_prefix,
            per_piece,
            // Split out before normalization, so a piece after one is normalized (prefixed) on its own.
            added: inner
                .get_added_tokens_decoder()
                .into_iter()
                .filter(|(_, t)| !t.normalized)
                .map(|(id, t)| (id, t.content))
                .collect(),
        });
        Ok(TextTokenizer { inner, prefix, eos_id, chat_template, bos_token: None, continuation })
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
        // A token named but missing from the vocabulary is an error: falling back to config.json's id would train
        // and score another EOS than the one the tokenizer config names.
        let token_id = |key: &str| -> Result<Option<u32>> {
            let Some(v) = cfg.get(key) else { return Ok(None) };
            let Some(s) = v.as_str().or_else(|| v.get("content")?.as_str()) else { return Ok(None) };
            match inner.token_to_id(s) {
                Some(id) => Ok(Some(id)),
                None => bail!(
                    "{}: {key} {s:?} is not in tokenizer.json's vocabulary; correct it (or remove the key to use \
                     config.json's id)",
                    cfg_path.display()
                ),
            }
        };
        let eos_id = token_id("eos_token")?.or(config_eos).with_context(|| {
            format!(
                "{}: no eos_token in tokenizer_config.json or config.json; the model could not learn to stop",
                dir.display()
            )
        })?;
        let bos_to_force = match cfg.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(true) => token_id("bos_token")?,
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
        // An empty template is none, as transformers reads it: chat rows then get "no chat template", not rows
        // rendered to nothing.
        let chat_template = chat_template.filter(|t| !t.trim().is_empty());
        // Only the chat template reads this one (as text): a name outside the vocabulary leaves it unset there.
        let bos_token = token_id("bos_token").ok().flatten().and_then(|id| inner.id_to_token(id));
        Ok(TextTokenizer { bos_token, ..Self::new(inner, eos_id, bos_to_force, chat_template)? })
    }

    /// Plain text → ids, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A (x, y) pair as condlm models it: `prefix + enc(x) + enc(y as x's continuation) + [EOS]`, and where y starts.
    pub fn encode_pair(&self, x: &str, y: &str) -> Result<(Vec<u32>, usize)> {
        let (mut ids, x) = (self.prefix.clone(), self.encode(x)?);
        let prev = x.last().copied();
        ids.extend(x);
        let y_start = ids.len();
        ids.extend(self.encode_after(y, prev)?);
        ids.push(self.eos_id);
        Ok((ids, y_start))
    }

    /// `text` continuing text whose last token is `prev` (None: `text` starts the text), tokenized as inside
    /// their joined text (byte-level BPE and the like: as [`Self::encode`]). A SentencePiece tokenizer's dummy
    /// prefix "▁" is not put before it unless the joined text would have it there too (its start; after an added
    /// token, for tokenizers that prefix every piece between added tokens): y after x gains no space, as
    /// "nothing is inserted between x and y" promises.
    pub fn encode_after(&self, text: &str, prev: Option<u32>) -> Result<Vec<u32>> {
        let Some(c) = &self.continuation else { return self.encode(text) };
        let Some(prev) = prev else { return self.encode(text) };
        let no_prefix = |t: &str| -> Result<Vec<u32>> {
            let enc = c.no_prefix.encode(t, false).map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
            Ok(enc.get_ids().to_vec())
        };
        if !c.per_piece {
            return no_prefix(text);
        }
        if c.added.contains_key(&prev) {
            return self.encode(text);
        }
        // Only the piece before the text's first added token continues the previous text; the pieces after added
        // tokens are prefixed, as in the joined text.
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
        // (An added token split out of the text, not a token of the model's that is also registered as one.)
        let mut ids_at = enc.get_ids().iter().zip(enc.get_offsets());
        let first_added = ids_at.find(|(id, o)| c.added.get(id).is_some_and(|t| text.get(o.0..o.1) == Some(t)));
        match first_added.map(|(_, o)| o.0) {
            Some(at) => Ok([no_prefix(&text[..at])?, self.encode(&text[at..])?].concat()),
            None => no_prefix(text),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow::anyhow!("decoding failed: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
