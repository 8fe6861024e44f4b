//! `condlm generate`: continue one prompt (streamed to stdout) or every row of a JSONL file.
use super::AdapterArgs;
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use condlm::data::chat::{ChatTemplate, GenerationPrompt};
use condlm::data::rows::{JsonObject, read_objects, string_field};
use condlm::formats::load::load_model;
use condlm::generate::{
    BeamParams, EarlyStopping, Event, GenerateOptions, Generation, SamplingParams, Strategy, encode_prompt, generate,
};
use condlm::network::transformer::Transformer;
use condlm::output::write_atomic;
use condlm::progress;
use condlm::tokenizer::TextTokenizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Generate y from x. The prompt is encoded exactly as training encodes x (the tokenizer's BOS if it adds one,
/// then enc(prompt), nothing appended), so a model fitted with condlm continues from the same ids. Greedy
/// decoding by default; sampling when --temperature is above 0; beam search (transformers' semantics) when
/// --num-beams is above 1. Generation ends at EOS, a --stop-id, a --stop string (the text ends before it),
/// --max-new-tokens or the end of the context window.
#[derive(Args)]
pub struct GenerateArgs {
    /// Model: an HF checkpoint folder, a .gguf file, or a hub id org/name (from the HF cache, downloaded when online).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// The prompt x; its continuation is streamed to stdout as it is generated [default: none; give it or --data].
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    prompt: Option<String>,
    /// JSONL file of {"prompt": x, ...} rows: generate for every row; other fields are passed through. Without
    /// sampling, a prompt repeated in the file is decoded once [default: none].
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: write the rows plus "generation", "finish_reason", "new_tokens" (and "score" for beam search)
    /// as JSONL here, atomically [default: stdout].
    #[arg(long, requires = "data")]
    out: Option<PathBuf>,
    /// Render each prompt as a user message with the model's chat template (add_generation_prompt), as training
    /// on chat data renders it; the template writes any BOS itself [default: off].
    #[arg(long)]
    chat: bool,
    /// At most this many new tokens per prompt (fewer where the context window ends first).
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy decoding (no sampling).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sampling: keep the k most probable tokens; 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sampling: keep the most probable tokens up to this probability mass (nucleus); 1 = off.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sampling: drop tokens less probable than min-p × the most probable one; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Sampling seed: the draw of each step comes from (seed, row, step), whatever --batch is.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Divide positive / multiply negative scores of tokens already in the sequence (prompt included) by this;
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Never repeat an n-gram of this size (prompt included); 0 = off.
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    /// Beam search with this many beams (> 1); 1 = greedy or sampling.
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    /// Beam search: hypotheses are scored sum(log p) / new_tokens^length_penalty.
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
    /// Beam search: stop when num-beams hypotheses are done (true), when the best running beam cannot beat them
    /// at its current length (false, transformers' default), or at its maximum length (never).
    #[arg(long, value_enum, default_value_t = EarlyStop::False)]
    early_stopping: EarlyStop,
    /// Stop when the text contains this string (repeatable); the output ends before it [default: none].
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Stop after generating this token id (repeatable), besides EOS [default: none].
    #[arg(long = "stop-id", value_name = "ID")]
    stop_ids: Vec<u32>,
    /// Do not stop at the tokenizer's EOS token [default: off].
    #[arg(long)]
    ignore_eos: bool,
    /// Prompts decoded together with --data (continuous batching; each takes num-beams cache slots).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// With --data: also write "prompt_ids" and "generated_ids" (the latter including the stop token)
    /// [default: off].
    #[arg(long, requires = "data")]
    ids: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum EarlyStop {
    True,
    False,
    Never,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let mut m = load_model(&a.model)?;
    a.adapter.apply(&a.model, &mut m)?;
    let opts = options(&a, &m.tokenizer)?;
    let template = if a.chat {
        let t = ChatTemplate::for_tokenizer(&m.tokenizer)?;
        Some(t.with_context(|| format!("{}: --chat, but the model has no chat template", a.model))?)
    } else {
        None
    };
    let encode = |text: &str| -> Result<Vec<u32>> {
        match &template {
            Some(t) => {
                let msg = minijinja::Value::from_pairs([("role", "user"), ("content", text)]);
                let rendered = t.render(&[msg], None, GenerationPrompt::Add)?;
                m.tokenizer.encode(&rendered)
            }
            None => encode_prompt(&m.tokenizer, text),
        }
    };
    match (&a.prompt, &a.data) {
        (Some(p), _) => run_prompt(&m.model, &m.tokenizer, encode(p)?, &opts),
        (None, Some(path)) => run_data(&a, &m.model, &m.tokenizer, path, &opts, encode),
        (None, None) => bail!("give --prompt or --data"),
    }
}

fn options(a: &GenerateArgs, tok: &TextTokenizer) -> Result<GenerateOptions> {
    let sampling_flags = a.top_k != 0 || a.top_p != 1.0 || a.min_p != 0.0;
    let strategy = if a.num_beams > 1 {
        if a.temperature > 0.0 || sampling_flags {
            bail!("beam search (--num-beams > 1) does not sample: drop --temperature/--top-k/--top-p/--min-p");
        }
        let early_stopping = match a.early_stopping {
            EarlyStop::True => EarlyStopping::True,
            EarlyStop::False => EarlyStopping::False,
            EarlyStop::Never => EarlyStopping::Never,
        };
        Strategy::Beam(BeamParams { num_beams: a.num_beams, length_penalty: a.length_penalty, early_stopping })
    } else if a.num_beams == 0 {
        bail!("--num-beams must be at least 1");
    } else if a.temperature > 0.0 {
        Strategy::Sample(SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            seed: a.seed,
        })
    } else if a.temperature < 0.0 {
        bail!("--temperature must be ≥ 0 (0 = greedy)");
    } else {
        if sampling_flags {
            bail!("--top-k/--top-p/--min-p filter sampling: set --temperature > 0 (0 means greedy decoding)");
        }
        Strategy::Greedy
    };
    let mut stop_ids = if a.ignore_eos { vec![] } else { vec![tok.eos_id] };
    for &t in &a.stop_ids {
        if !stop_ids.contains(&t) {
            stop_ids.push(t);
        }
    }
    Ok(GenerateOptions {
        strategy,
        max_new_tokens: a.max_new_tokens,
        repetition_penalty: a.repetition_penalty,
        no_repeat_ngram_size: a.no_repeat_ngram_size,
        stop_ids,
        stop_strings: a.stop.clone(),
        batch: a.batch,
        prefill_tokens: 512,
    })
}

fn run_prompt(model: &Transformer, tok: &TextTokenizer, prompt: Vec<u32>, opts: &GenerateOptions) -> Result<()> {
    let n_prompt = prompt.len();
    let start = Instant::now();
    let mut first_token: Option<Instant> = None;
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let out = generate(model, tok, &[prompt], opts, |e| match e {
        Event::Token { .. } => {
            first_token.get_or_insert_with(Instant::now);
        }
        Event::Text { text, .. } => {
            if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
                write_err.get_or_insert(e);
            }
        }
        Event::Done { .. } => {}
    })?;
    if let Some(e) = write_err {
        return Err(e).context("cannot write to stdout");
    }
    writeln!(stdout)?;
    let end = Instant::now();
    let g = &out[0];
    let total = (end - start).as_secs_f64();
    let mut msg = format!("{} prompt + {} new tokens, finish: {}", n_prompt, g.ids.len(), g.finish.as_str());
    if let Some(t) = first_token {
        let (prefill, decode) = ((t - start).as_secs_f64(), (end - t).as_secs_f64());
        msg.push_str(&format!(
            "; prefill {:.1} ms ({:.0} tokens/s), decode {:.1} tokens/s",
            prefill * 1e3,
            n_prompt as f64 / prefill,
            (g.ids.len().saturating_sub(1)) as f64 / decode.max(1e-9)
        ));
    } else {
        msg.push_str(&format!("; {:.2} s", total));
    }
    if let Some(s) = g.score {
        msg.push_str(&format!("; beam score {s:.4}"));
    }
    eprintln!("{msg}");
    Ok(())
}

fn run_data(
    a: &GenerateArgs,
    model: &Transformer,
    tok: &TextTokenizer,
    path: &Path,
    opts: &GenerateOptions,
    encode: impl Fn(&str) -> Result<Vec<u32>>,
) -> Result<()> {
    let rows = read_prompt_rows(path)?;
    let prompts = encode_prompts(&rows, path, model, encode)?;
    // Greedy and beam search are deterministic: a prompt repeated in the file (E2E-style data with several
    // references per x) is generated once and its output copied to each of its rows.
    let (distinct, of_row) = if matches!(opts.strategy, Strategy::Sample(_)) {
        (prompts.clone(), (0..prompts.len()).collect())
    } else {
        distinct_prompts(&prompts)
    };
    let bar =
        progress::bar(distinct.len() as u64, "{spinner} generating {pos}/{len} prompts [{bar:30}] {per_sec} ETA {eta}");
    let start = Instant::now();
    let mut new_tokens = 0usize;
    let gens = generate(model, tok, &distinct, opts, |e| {
        if let Event::Done { generation, .. } = e {
            new_tokens += generation.ids.len();
            bar.inc(1);
        }
    })
    .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let mut lines = String::new();
    for (((_, row, _), &d), p) in rows.iter().zip(&of_row).zip(&prompts) {
        lines.push_str(&output_row(row, &gens[d], a.ids.then_some(p)).to_string());
        lines.push('\n');
    }
    match &a.out {
        Some(p) => write_atomic(p, lines.as_bytes())?,
        None => print!("{lines}"),
    }
    eprintln!(
        "generated for {} rows ({} distinct prompts): {new_tokens} new tokens in {secs:.1} s ({:.0} tokens/s)",
        rows.len(),
        distinct.len(),
        new_tokens as f64 / secs
    );
    Ok(())
}

/// Each row's prompt as ids; a prompt that leaves no room to generate is an error naming its line.
fn encode_prompts(
    rows: &[PromptRow],
    path: &Path,
    model: &Transformer,
    encode: impl Fn(&str) -> Result<Vec<u32>>,
) -> Result<Vec<Vec<u32>>> {
    let context = condlm::generate::context_len(model);
    rows.iter()
        .map(|(line, _, prompt)| {
            let ids = encode(prompt).with_context(|| format!("{}:{line}", path.display()))?;
            if ids.len() >= context {
                bail!(
                    "{}:{line}: the prompt has {} tokens, but the model's context window is {context}: no room to \
                     generate",
                    path.display(),
                    ids.len()
                );
            }
            Ok(ids)
        })
        .collect()
}

/// The distinct prompts in first-seen order, and for each input prompt the index of its distinct one.
fn distinct_prompts(prompts: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<usize>) {
    let mut seen: std::collections::HashMap<&[u32], usize> = Default::default();
    let mut distinct = Vec::new();
    let of_row = prompts
        .iter()
        .map(|p| {
            *seen.entry(p).or_insert_with(|| {
                distinct.push(p.clone());
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, of_row)
}

/// The input row with the generation's fields added (they replace fields of the same name).
fn output_row(
    row: &serde_json::Map<String, serde_json::Value>,
    g: &Generation,
    prompt_ids: Option<&Vec<u32>>,
) -> serde_json::Value {
    let mut out = row.clone();
    out.insert("generation".into(), g.text.clone().into());
    out.insert("finish_reason".into(), g.finish.as_str().into());
    out.insert("new_tokens".into(), g.ids.len().into());
    if let Some(s) = g.score {
        out.insert("score".into(), serde_json::json!(s));
    }
    if let Some(p) = prompt_ids {
        out.insert("prompt_ids".into(), serde_json::json!(p));
        out.insert("generated_ids".into(), serde_json::json!(g.ids));
    }
    serde_json::Value::Object(out)
}

/// Rows of a JSONL file that each have a string "prompt": (line, the row, the prompt).
type PromptRow = (usize, JsonObject, String);

fn read_prompt_rows(path: &Path) -> Result<Vec<PromptRow>> {
    read_objects(path, "{\"prompt\": ...}")?
        .into_iter()
        .map(|(line, obj)| {
            let prompt = string_field(&obj, "prompt", path, line)?;
            Ok((line, obj, prompt))
        })
        .collect()
}
