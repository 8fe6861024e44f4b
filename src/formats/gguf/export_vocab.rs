//! The `tokenizer.*` keys of an exported GGUF file. From a GGUF source they are copied as they are (they
//! are what llama.cpp read there); from a Hugging Face folder they are built as llama.cpp's converter builds
//! a byte-level BPE vocabulary: every id's token (gaps up to the model's vocabulary size as `[PADn]`,
//! unused), token types (special added tokens are control tokens), merges, the pre-tokenizer's llama.cpp
//! name, the special ids and the chat template. A folder whose tokenizer is SentencePiece takes them from a GGUF
//! with its vocabulary (`--vocab-from`, checked token by token).
use super::file::{GgufFile, MetaValue};
use super::tokenizer::{split_regex_for_pre, token_type, tokenizer_from_gguf_vocab};
use crate::formats::load::gguf_vocab;
use crate::formats::resolve::ModelFiles;
use crate::input;
use crate::network::config::Config;
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// llama.cpp pre-tokenizer names whose split regex condlm knows (see [`split_regex_for_pre`]).
const SPLIT_PRES: &[&str] = &["llama-bpe", "qwen2", "qwen35", "tekken", "gpt-4o"];

/// Every `tokenizer.ggml.pre` name llama.cpp loads (src/llama-vocab.cpp, November 2026); it refuses a file with any
/// other ("unknown pre-tokenizer type").
const LLAMA_CPP_PRES: &[&str] = &[
    "default",
    "minicpm5",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "youtu",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "jais-2",
    "gemma4",
    "granite-embed-multi-311m",
    "sarvam-moe",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "whitespace",
    "refact",
    "command-r",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "qwen35",
    "stablelm2",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "glm4",
    "chatglm-bpe",
    "viking",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "exaone4",
    "exaone-moe",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "granite-embed-multi-97m",
    "tiny_aya",
    "cohere2moe",
    "superbpe",
    "trillion",
    "granite-docling",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "seed-coder",
    "hunyuan",
    "hunyuan-dense",
    "joyai-llm",
    "kimi-k2",
    "grok-2",
    "afmoe",
    "laguna",
    "minimax-m2",
    "solar-open",
    "mellum2",
    "k2-horizon",
];

/// Checks a `--tokenizer-pre` name before any work: a name llama.cpp does not know gives a file it refuses to load.
pub fn check_pre_name(pre: &str) -> Result<()> {
    if !LLAMA_CPP_PRES.contains(&pre) {
        bail!(
            "--tokenizer-pre {pre:?}: llama.cpp knows no pre-tokenizer of that name and would refuse the file \
             (\"unknown pre-tokenizer type\"); its names (November 2026): {}",
            LLAMA_CPP_PRES.join(", ")
        );
    }
    Ok(())
}

/// GGUF metadata entries in order.
type Metadata = Vec<(String, MetaValue)>;

/// Refuses `--vocab-from GGUF` unless the file's vocabulary is the model's: as condlm reads it, the same token
/// spelled the same under every id of the model's tokenizer, and beyond them at most the padding up to the
/// model's `vocab_size` embedding rows that llama.cpp's converter adds (`[PADn]`: Phi-3's 32064 rows hold 32011
/// tokens). A fine-tune keeps its base's vocabulary, so its base GGUF passes.
pub fn check_vocab_from(gguf: &Path, tok: &TextTokenizer, config: &Config) -> Result<()> {
    let g = GgufFile::open(gguf)?;
    if g.opt_str("general.type")? == Some("adapter") {
        bail!("--vocab-from {}: a LoRA adapter, not a model; give the GGUF of the base model", gguf.display());
    }
    let theirs = tokenizer_from_gguf_vocab(&gguf_vocab(&g)?)
        .with_context(|| format!("--vocab-from {}: cannot read its tokenizer", gguf.display()))?;
    let (n_ours, n_theirs) = (tok.inner.get_vocab_size(true), theirs.get_vocab_size(true));
    if n_theirs < n_ours || n_theirs > n_ours.max(config.vocab_size) {
        bail!(
            "--vocab-from {}: its vocabulary has {n_theirs} tokens and the model's {n_ours} ({} embedding rows): it \
             is not this model's; give the GGUF of the base the model was fine-tuned from",
            gguf.display(),
            config.vocab_size
        );
    }
    for id in 0..n_ours as u32 {
        let (a, b) = (tok.inner.id_to_token(id), theirs.id_to_token(id));
        if a != b {
            let (a, b) = (a.unwrap_or_else(|| "no token".into()), b.unwrap_or_else(|| "no token".into()));
            bail!(
                "--vocab-from {}: token {id} is {b:?} there and {a:?} in the model: it is not this model's \
                 vocabulary; give the GGUF of the base the model was fine-tuned from",
                gguf.display()
            );
        }
    }
    Ok(())
}

/// The `tokenizer.*` metadata for a model loaded from `files` with tokenizer `tok`; `pre` overrides the
/// pre-tokenizer name (`tokenizer.ggml.pre`), and is refused where condlm knows the tokenizer splits text otherwise.
pub fn tokenizer_metadata(
    files: &ModelFiles,
    tok: &TextTokenizer,
    config: &Config,
    pre: Option<&str>,
) -> Result<Metadata> {
    let (mut m, own_pre) = match files {
        ModelFiles::Gguf(path) => {
            let g = GgufFile::open(path)?;
            let own = g.get("tokenizer.ggml.pre").and_then(MetaValue::as_str).map(str::to_string);
            let mut m: Metadata = g
                .metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // The model's own chat template (the one it was trained with) over the vocabulary source's, which a
            // base GGUF often lacks.
            if let Some(t) = &tok.chat_template {
                m.retain(|(k, _)| k != "tokenizer.chat_template");
                m.push(("tokenizer.chat_template".into(), MetaValue::Str(t.clone())));
            }
            (m, own)
        }
        ModelFiles::HfDir(dir) => from_hf(dir, tok, config, pre)?,
    };
    if let Some(pre) = pre {
        check_pre_name(pre)?;
        if let Some(own) = own_pre.as_deref().filter(|&own| split_regex_for_pre(own) != split_regex_for_pre(pre)) {
            bail!(
                "--tokenizer-pre {pre:?}: the tokenizer splits text as llama.cpp's {own:?}, and {pre:?} splits it \
                 otherwise, so llama.cpp would tokenize text unlike the model saw it; leave --tokenizer-pre off"
            );
        }
        m.retain(|(k, _)| k != "tokenizer.ggml.pre");
        m.push(("tokenizer.ggml.pre".into(), MetaValue::Str(pre.into())));
    }
    Ok(m)
}

/// The metadata llama.cpp's converter writes for an HF byte-level BPE tokenizer, and the llama.cpp name of its
/// pre-tokenizer where condlm recognises it (`pre`, the name the user gave, stands in where it does not).
fn from_hf(
    dir: &Path,
    tok: &TextTokenizer,
    config: &Config,
    given_pre: Option<&str>,
) -> Result<(Metadata, Option<String>)> {
    let json: Value = serde_json::from_str(
        &tok.inner.to_string(false).map_err(|e| anyhow::anyhow!("cannot serialize the tokenizer: {e}"))?,
    )?;
    let model = &json["model"];
    if model["type"] != "BPE" || !mentions_byte_level(&json["pre_tokenizer"]) {
        bail!(
            "{}/tokenizer.json: condlm writes the GGUF vocabulary of byte-level BPE tokenizers (GPT-2, Llama 3, \
             Qwen2, SmolLM) only, and this one is a {}; pass --vocab-from BASE.gguf to copy the vocabulary of the GGUF \
             the model was fine-tuned from (or any GGUF with this vocabulary)",
            dir.display(),
            match model["type"].as_str() {
                Some("BPE") => "BPE model without byte-level pre-tokenization (SentencePiece-style)".to_string(),
                other => format!("{} model", other.unwrap_or("unknown")),
            }
        );
    }
    let n = config.vocab_size;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n];
    let mut put = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).with_context(|| {
            format!("{}/tokenizer.json: token {text:?} has id {id}, past the model's {n} embeddings", dir.display())
        })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    let file = dir.join("tokenizer.json");
    let vocab =
        model["vocab"].as_object().with_context(|| format!("{}: model.vocab is not an object", file.display()))?;
    for (text, id) in vocab {
        let id =
            id.as_u64().with_context(|| format!("{}: the id of token {text:?} is not a number", file.display()))?;
        put(id, text, token_type::NORMAL)?;
    }
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let special = t["special"].as_bool().unwrap_or(false);
        let ty = if special { token_type::CONTROL } else { token_type::USER_DEFINED };
        put(t["id"].as_u64().unwrap_or(u64::MAX), t["content"].as_str().unwrap_or_default(), ty)?;
    }
    let (tokens, types): (Vec<MetaValue>, Vec<MetaValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (text, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), token_type::UNUSED));
            (MetaValue::Str(text), MetaValue::I32(ty))
        })
        .unzip();
    let merges: Vec<MetaValue> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::Array(pair) => MetaValue::Str(pair.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")),
            other => MetaValue::Str(other.as_str().unwrap_or_default().to_string()),
        })
        .collect();
    let own_pre = pre_name(&json["pre_tokenizer"]);
    let pre = own_pre.or(given_pre).with_context(|| {
        format!(
            "{}/tokenizer.json: its pre-tokenizer ({}) has no llama.cpp name condlm knows; pass \
             --tokenizer-pre NAME with llama.cpp's tokenizer.ggml.pre for this model (e.g. llama-bpe, qwen2, \
             smollm, gpt-2)",
            dir.display(),
            json["pre_tokenizer"]
        )
    })?;
    let mut m = vec![
        ("tokenizer.ggml.model".to_string(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), MetaValue::Str(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), MetaValue::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), MetaValue::Array(types)),
        ("tokenizer.ggml.merges".to_string(), MetaValue::Array(merges)),
    ];
    let named = special_ids(dir, tok)?;
    let bos = named.bos.or(config.bos_token_id);
    for (key, id) in [
        ("bos_token_id", bos),
        ("eos_token_id", Some(tok.eos_id)),
        ("unknown_token_id", named.unk),
        ("padding_token_id", named.pad),
    ] {
        if let Some(id) = id {
            m.push((format!("tokenizer.ggml.{key}"), MetaValue::U32(id)));
        }
    }
    let add_bos = !tok.prefix.is_empty();
    m.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(add_bos)));
    m.push(("tokenizer.ggml.add_eos_token".into(), MetaValue::Bool(false)));
    if let Some(t) = &tok.chat_template {
        m.push(("tokenizer.chat_template".into(), MetaValue::Str(t.clone())));
    }
    Ok((m, own_pre.map(str::to_string)))
}

fn mentions_byte_level(pre: &Value) -> bool {
    pre["type"] == "ByteLevel" || pre["pretokenizers"].as_array().is_some_and(|l| l.iter().any(mentions_byte_level))
}

/// llama.cpp's `tokenizer.ggml.pre` for an HF pre-tokenizer (serialized), when condlm knows the equivalent.
fn pre_name(pre: &Value) -> Option<&'static str> {
    let byte_level = |v: &Value, regex: bool| {
        v["type"] == "ByteLevel" && v["use_regex"].as_bool().unwrap_or(true) == regex && v["add_prefix_space"] != true
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    match pre["pretokenizers"].as_array()?.as_slice() {
        // SmolLM's (and StarCoder's): digits one by one, then GPT-2's split
        [d, b] if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b, true) => Some("smollm"),
        [s, b] if s["type"] == "Split" && byte_level(b, false) => {
            let regex = s["pattern"]["Regex"].as_str()?;
            SPLIT_PRES.iter().copied().find(|p| split_regex_for_pre(p) == Some(regex))
        }
        _ => None,
    }
}

/// Special token ids named in tokenizer_config.json (by their text).
struct SpecialIds {
    bos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
}

fn special_ids(dir: &Path, tok: &TextTokenizer) -> Result<SpecialIds> {
    let path = dir.join("tokenizer_config.json");
    let cfg: Value = if path.is_file() {
        serde_json::from_str(&input::read_to_string(&path, "tokenizer config")?)
            .with_context(|| format!("{}: not valid JSON", path.display()))?
    } else {
        Value::Null
    };
    let id = |key: &str| {
        let v = &cfg[key];
        let text = v.as_str().or_else(|| v["content"].as_str())?;
        tok.inner.token_to_id(text)
    };
    Ok(SpecialIds { bos: id("bos_token"), unk: id("unk_token"), pad: id("pad_token") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pre_tokenizers_map_to_llama_cpp_names() {
        let bl = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": regex});
        assert_eq!(pre_name(&bl(true)), Some("gpt-2"));
        let smol =
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, bl(true)]});
        assert_eq!(pre_name(&smol), Some("smollm"));
        let split = |r: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}, bl(false)]})
        };
        assert_eq!(pre_name(&split(split_regex_for_pre("qwen2").unwrap())), Some("qwen2"));
        assert_eq!(pre_name(&split(split_regex_for_pre("llama-bpe").unwrap())), Some("llama-bpe"));
        assert_eq!(pre_name(&split("\\s+")), None);
        assert_eq!(pre_name(&json!({"type": "Metaspace"})), None);
    }
}
