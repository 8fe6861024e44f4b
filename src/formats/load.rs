//! Loading a model end to end: resolve `--model`, read config, weights and tokenizer.
use super::assemble::load_transformer;
use super::gguf::config::config_from_gguf;
use super::gguf::file::GgufFile;
use super::gguf::tokenizer::{GgufVocab, tokenizer_from_gguf_vocab};
use super::resolve::{ModelFiles, resolve};
use super::safetensors_files::SafetensorsFiles;
use super::weights::Weights;
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
            let weights = Weights::Gguf {
                arch: config.architecture.clone(),
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
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
            let template = file.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_owned);
            TextTokenizer::new(inner, eos, None, template)
        }
        _ => TextTokenizer::from_hf_dir(files.path(), config.eos_token_ids.first().copied()),
    }
}

fn gguf_vocab(g: &GgufFile) -> Result<GgufVocab> {
    let opt_u32 = |k: &str| -> Result<Option<u32>> { g.get(k).map(|_| g.get_u32(k)).transpose() };
    let opt_bool = |k: &str| g.get(k).and_then(|v| v.as_bool());
    Ok(GgufVocab {
        model: g.get_str("tokenizer.ggml.model")?.to_string(),
        pre: g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).map(str::to_owned),
        tokens: g.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(str::to_owned).collect(),
        token_types: match g.get("tokenizer.ggml.token_type") {
            Some(_) => g.get_i32_array("tokenizer.ggml.token_type")?,
            None => vec![],
        },
        merges: match g.get("tokenizer.ggml.merges") {
            Some(_) => g.get_str_array("tokenizer.ggml.merges")?.into_iter().map(str::to_owned).collect(),
            None => vec![],
        },
        bos_id: opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_id: opt_u32("tokenizer.ggml.eos_token_id")?,
        unk_id: opt_u32("tokenizer.ggml.unknown_token_id")?,
        pad_id: opt_u32("tokenizer.ggml.padding_token_id")?,
        add_bos: opt_bool("tokenizer.ggml.add_bos_token"),
        add_eos: opt_bool("tokenizer.ggml.add_eos_token"),
    })
}

/// Resolves `spec` and loads model and tokenizer.
pub fn load_model(spec: &str) -> Result<LoadedModel> {
    let files = resolve(spec)?;
    let (config, weights) = open_weights(&files)?;
    let tokenizer = load_tokenizer(&files, &config, &weights)?;
    let model = load_transformer(config, &weights)?;
    Ok(LoadedModel { files, model, tokenizer })
}
