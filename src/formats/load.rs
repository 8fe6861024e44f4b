//! Loading a model end to end: resolve `--model`, read config, weights and tokenizer.
use super::assemble::load_transformer;
use super::gguf::config::config_from_gguf;
use super::gguf::file::GgufFile;
use super::gguf::tokenizer::{GgufVocab, tokenizer_from_gguf_vocab};
use super::resolve::{ModelFiles, resolve};
use super::safetensors_files::SafetensorsFiles;
use super::weights::{BaseDtype, Weights};
use crate::network::config::Config;
use crate::network::transformer::Transformer;
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result};

pub struct LoadedModel {
    pub files: ModelFiles,
    pub model: Transformer,
    pub tokenizer: TextTokenizer,
}

/// Opens the checkpoint's weights and config without converting any tensor (for `info` and loading).
pub fn open_weights(files: &ModelFiles) -> Result<(Config, Weights)> {
    match files {
        ModelFiles::HfDir(dir) => {
            let config = Config::from_hf_json(&dir.join("config.json"))?;
            let st = SafetensorsFiles::open(dir)?;
            Ok((config, Weights::Safetensors { dir: dir.clone(), files: st }))
        }
        ModelFiles::Gguf(path) => {
            let file = GgufFile::open(path)?;
            let config = config_from_gguf(&file, path)?;
            let block_count = format!("{}.block_count", config.architecture);
            let weights = Weights::Gguf {
                stored_blocks: file.opt_usize(&block_count)?.unwrap_or(config.num_layers),
                arch: config.architecture.clone(),
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
                num_layers: config.num_layers,
                delta_net: config.delta_net,
                path: path.clone(),
                file,
            };
            Ok((config, weights))
        }
    }
}

/// The tokenizer that belongs to the checkpoint.
pub fn load_tokenizer(files: &ModelFiles, config: &Config, weights: &Weights) -> Result<TextTokenizer> {
    match (files, weights) {
        (ModelFiles::Gguf(path), Weights::Gguf { file, .. }) => {
            let vocab = gguf_vocab(file).with_context(|| format!("{}: cannot read the tokenizer", path.display()))?;
            let inner = tokenizer_from_gguf_vocab(&vocab)
                .with_context(|| format!("{}: cannot build the tokenizer", path.display()))?;
            let eos = vocab.eos_id.or(config.eos_token_ids.first().copied()).with_context(|| {
                format!("{}: no tokenizer.ggml.eos_token_id; the model could not learn to stop", path.display())
            })?;
            // an empty template is none, as for an HF folder
            let template = file.opt_str("tokenizer.chat_template")?.filter(|t| !t.trim().is_empty()).map(str::to_owned);
            let bos_token = vocab.bos_id.and_then(|id| inner.id_to_token(id));
            let mut tok = TextTokenizer::new(inner, eos, None, template)?;
            tok.bos_token = bos_token;
            Ok(tok)
        }
        _ => TextTokenizer::from_hf_dir(files.path(), config.eos_token_ids.first().copied()),
    }
}

/// The `tokenizer.ggml.*` keys (and `general.architecture`, which picks the SentencePiece flavour); a key of
/// the wrong type is an error naming the file and the key.
pub fn gguf_vocab(g: &GgufFile) -> Result<GgufVocab> {
    let strings = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
    const SCORES: &str = "tokenizer.ggml.scores";
    Ok(GgufVocab {
        model: g.get_str("tokenizer.ggml.model")?.to_string(),
        arch: g.opt_str("general.architecture")?.map(str::to_owned),
        scores: if g.get(SCORES).is_some() { g.get_f32_array(SCORES)? } else { Vec::new() },
        pre: g.opt_str("tokenizer.ggml.pre")?.map(str::to_owned),
        tokens: strings(g.get_str_array("tokenizer.ggml.tokens")?),
        token_types: g.opt_i32_array("tokenizer.ggml.token_type")?.unwrap_or_default(),
        merges: g.opt_str_array("tokenizer.ggml.merges")?.map_or_else(Vec::new, strings),
        bos_id: g.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_id: g.opt_u32("tokenizer.ggml.eos_token_id")?,
        unk_id: g.opt_u32("tokenizer.ggml.unknown_token_id")?,
        pad_id: g.opt_u32("tokenizer.ggml.padding_token_id")?,
        add_bos: g.opt_bool("tokenizer.ggml.add_bos_token")?,
        add_eos: g.opt_bool("tokenizer.ggml.add_eos_token")?,
    })
}

/// Resolves `spec` and loads model and tokenizer, the block matrices kept as the checkpoint stores them.
pub fn load_model(spec: &str) -> Result<LoadedModel> {
    load_model_as(spec, BaseDtype::Stored)
}

/// As [`load_model`], the block matrices kept as `base` says. Trainable matrices become f32 whatever `base` is.
pub fn load_model_as(spec: &str, base: BaseDtype) -> Result<LoadedModel> {
    open_model(spec)?.load(base)
}

/// A checkpoint opened but its weights not yet converted: config, tensor table and tokenizer (what a memory
/// plan or a dry run needs).
pub struct OpenedModel {
    pub files: ModelFiles,
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: TextTokenizer,
}

/// Resolves `spec`, reads its config and tokenizer and checks they belong together.
pub fn open_model(spec: &str) -> Result<OpenedModel> {
    let files = resolve(spec)?;
    let (config, weights) = open_weights(&files)?;
    let tokenizer = load_tokenizer(&files, &config, &weights)?;
    check_vocab(&files, &config, &tokenizer)?;
    Ok(OpenedModel { files, config, weights, tokenizer })
}

impl OpenedModel {
    /// Builds the network, its block matrices kept as `base` says.
    pub fn load(self, base: BaseDtype) -> Result<LoadedModel> {
        let model = load_transformer(self.config, &self.weights, base)?;
        Ok(LoadedModel { files: self.files, model, tokenizer: self.tokenizer })
    }
}

/// Every id the tokenizer can produce must have an embedding row: an id past the table would index out of
/// it. More rows than tokens is fine (checkpoints often pad the vocabulary to a multiple of 64).
fn check_vocab(files: &ModelFiles, config: &Config, tok: &TextTokenizer) -> Result<()> {
    let vocab = tok.inner.get_vocab(true);
    let specials = tok.prefix.iter().chain([&tok.eos_id]);
    let Some(max_id) = vocab.values().chain(specials).copied().max() else { return Ok(()) };
    if max_id as usize >= config.vocab_size {
        anyhow::bail!(
            "{}: the tokenizer has token ids up to {max_id}, but the model's embedding has {} rows (vocab_size); \
             the tokenizer and the weights do not belong together",
            files.path().display(),
            config.vocab_size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata value to write: GGUF type 8 (string), 4 (u32), or an array (type 9) of either.
    enum Value<'a> {
        Str(&'a str),
        U32(u32),
        Strs(&'a [&'a str]),
        U32s(&'a [u32]),
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                put_str(out, s);
            }
            Value::U32(x) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&x.to_le_bytes());
            }
            Value::Strs(a) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                a.iter().for_each(|s| put_str(out, s));
            }
            Value::U32s(a) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                a.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
        }
    }

    /// The tokenizer of a GGUF v3 file with these metadata pairs and no tensors, or the error as text, with
    /// the file's path.
    fn vocab(kvs: &[(&str, Value)]) -> (Result<GgufVocab, String>, String) {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        f.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            put_str(&mut f, k);
            put_value(&mut f, v);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typed.gguf");
        std::fs::write(&path, f).unwrap();
        let g = GgufFile::open(&path).unwrap();
        (gguf_vocab(&g).map_err(|e| format!("{e:#}")), path.display().to_string())
    }

    #[test]
    fn tokenizer_keys_of_the_wrong_type_are_errors_naming_file_and_key() {
        const MODEL: (&str, Value) = ("tokenizer.ggml.model", Value::Str("gpt2"));
        let tokens = ("tokenizer.ggml.tokens", Value::Strs(&["a", "b", "ab"]));
        let (v, _) = vocab(&[MODEL, tokens, ("tokenizer.ggml.bos_token_id", Value::U32(1))]);
        let v = v.unwrap();
        assert_eq!((v.tokens.len(), v.bos_id, v.pre, v.merges.len()), (3, Some(1), None, 0));

        let tokens = || ("tokenizer.ggml.tokens", Value::Strs(&["a", "b", "ab"]));
        let cases = [
            (
                vec![MODEL, ("tokenizer.ggml.tokens", Value::U32s(&[1, 2]))],
                "tokenizer.ggml.tokens",
                "expected a string",
            ),
            (vec![MODEL, ("tokenizer.ggml.tokens", Value::Str("a b"))], "tokenizer.ggml.tokens", "an array of strings"),
            (vec![MODEL, tokens(), ("tokenizer.ggml.bos_token_id", Value::Str("1"))], "bos_token_id", "an integer"),
            (vec![MODEL, tokens(), ("tokenizer.ggml.pre", Value::U32(2))], "tokenizer.ggml.pre", "a string"),
            (vec![MODEL, tokens(), ("tokenizer.ggml.merges", Value::U32s(&[0]))], "merges", "expected a string"),
            (vec![MODEL, tokens(), ("tokenizer.ggml.token_type", Value::Strs(&["1"]))], "token_type", "an integer"),
            (vec![MODEL, tokens(), ("tokenizer.ggml.add_bos_token", Value::U32(1))], "add_bos_token", "a bool"),
            (
                vec![MODEL, tokens(), ("tokenizer.ggml.scores", Value::Strs(&["0"]))],
                "tokenizer.ggml.scores",
                "a number",
            ),
            (vec![MODEL, tokens(), ("general.architecture", Value::U32(1))], "general.architecture", "a string"),
            (vec![("tokenizer.ggml.model", Value::U32s(&[])), tokens()], "tokenizer.ggml.model", "a string"),
        ];
        for (kvs, key, expected) in cases {
            let (v, path) = vocab(&kvs);
            let e = v.expect_err(key);
            assert!(e.contains(&path) && e.contains(key) && e.contains(expected), "{key}: {e}");
        }
    }
}
