//! `condlm generate`: continue one prompt (streamed to stdout) or every row of --data.
use super::device::DeviceArgs;
use super::{AdapterArgs, BaseArgs, DATA_FORMAT_HELP, EVAL_SPLIT_HELP, flag_value, model_identity, use_compute};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use condlm::data::chat::{ChatTemplate, GenerationPrompt, special_ids};
use condlm::data::prompts::{Prompt, PromptRow, chat_prompt_ids, read_prompt_rows};
use condlm::data::rows::JsonObject;
use condlm::data::source::{DataFormat, DataSource, EVAL_SPLITS, resolve_data};
use condlm::formats::load::{LoadedModel, open_model};
use condlm::generate::{
    BeamParams, EarlyStopping, Event, GenerateOptions, Generation, NonFiniteLogits, SamplingParams, Strategy,
    encode_prompt, generate, generate_from,
};
use condlm::kernels::compute::Compute;
use condlm::network::transformer::Transformer;
use condlm::output::check_not_an_input;
use condlm::output::fingerprint::{Fingerprint, row_hash};
use condlm::output::rows::{Destination, RowWriter, prepare};
use condlm::progress;
use condlm::tokenizer::TextTokenizer;
use condlm::train::memory::{DecodePlan, available_bytes};
use serde_json::Value;
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
    #[command(flatten)]
    base: BaseArgs,
    /// Decoding's products on a block-quantized base (Q4_0 … Q6_K): f32 (dequantized; the f32 base's results)
    /// or int8 (activations rounded to 8 bits, integer dot products on the stored blocks, as llama.cpp does —
    /// decode steps on every block type, prompts' prefills on the K-quants: faster, slightly different
    /// log-probs); or bf16 (GEMMs with bf16 operands, as `train --compute bf16`: on the CPU a pass's products
    /// only from 17 rows up, so decode steps stay f32 there; on a GPU every pass's, decode steps included, from
    /// the base kept only in bf16) [default: f32].
    #[arg(long, value_enum, default_value_t = Compute::F32, hide_default_value = true)]
    compute: Compute,
    #[command(flatten)]
    device: DeviceArgs,
    /// The prompt x; its continuation is streamed to stdout as it is generated [default: none; give it or --data].
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    prompt: Option<String>,
    /// Rows to continue (a data file: JSONL, JSON array, Parquet, CSV or TSV; a dataset folder; or a hub dataset id
    /// org/name), each from the ids training puts before its completion: a string "prompt"; a chat's "messages"
    /// before its last assistant turn (or all of them when the chat ends in a user or tool turn) and a "prompt"
    /// list of messages (TRL's conversational format), with the chat template's generation prompt; an Alpaca
    /// row's prompt. Every field is copied to the output row. Without
    /// sampling, a prompt repeated in the data is decoded once [default: none].
    #[arg(long)]
    data: Option<String>,
    #[arg(long, value_enum, default_value_t = DataFormat::Auto, hide_default_value = true, help = DATA_FORMAT_HELP)]
    data_format: DataFormat,
    /// Name of the rows' prompt field, as train's --prompt-field (a string, or a list of messages).
    #[arg(long, default_value = "prompt", requires = "data")]
    prompt_field: String,
    #[arg(long, requires = "data", help = EVAL_SPLIT_HELP)]
    split: Option<String>,
    /// With --data: write the rows plus "generation", "finish_reason", "new_tokens" (and "score" for beam search)
    /// as JSONL here; rows grow in FILE.partial as they finish, renamed to FILE when every row is done (an
    /// interrupted run leaves the partial: see --resume-output) [default: stdout, each row as it finishes].
    #[arg(long, requires = "data")]
    out: Option<PathBuf>,
    /// Replace an existing --out file (and, without --resume-output, discard its .partial) [default: off: an
    /// existing file is an error].
    #[arg(long, requires = "out")]
    overwrite: bool,
    /// Continue an interrupted run: keep the rows of --out's .partial, generate the rest. The partial must have
    /// been written with this model, adapter and these decoding flags (recorded in FILE.partial.json), and its
    /// rows must be of --data's rows as they are now. Sampled rows draw the same random numbers as in an
    /// uninterrupted run, but from logits computed beside other rows, which can differ in the last bits (a near
    /// tie may then go the other way); with --batch 1 for both runs, the resumed file is the uninterrupted one
    /// byte for byte [default: off: an existing .partial is an error].
    #[arg(long, requires = "out")]
    resume_output: bool,
    /// Render each "prompt" string (and --prompt) as a user message with the model's chat template
    /// (add_generation_prompt), as training on chat data renders it; the template writes any BOS itself. Chat rows
    /// always use the template, Alpaca rows never [default: off].
    #[arg(long)]
    chat: bool,
    /// At most this many new tokens per prompt, at least 1 (fewer where the context window ends first).
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    max_new_tokens: usize,
    /// Sampling temperature, finite and ≥ 0; 0 = greedy decoding (no sampling).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Sampling: keep the k most probable tokens; 0 = off.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    top_k: usize,
    /// Sampling: keep the most probable tokens up to this probability mass (nucleus), in (0, 1]; 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Sampling: drop tokens less probable than min-p × the most probable one, in [0, 1); 0 = off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    min_p: f32,
    /// Sampling seed: the draw of each step comes from (seed, row, step), whatever --batch is.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Divide positive / multiply negative scores of tokens already in the sequence (prompt included) by this,
    /// finite and > 0; 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f32,
    /// Never repeat an n-gram of this size (prompt included); 0 = off.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    no_repeat_ngram_size: usize,
    /// Beam search with this many beams (> 1); 1 = greedy or sampling.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    num_beams: usize,
    /// Beam search: hypotheses are scored sum(log p) / new_tokens^length_penalty (finite).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    length_penalty: f64,
    /// Beam search: stop when num-beams hypotheses are done (true), when the best running beam cannot beat them
    /// at its current length (false, transformers' default), or at its maximum length (never).
    #[arg(long, value_enum, default_value_t = EarlyStop::False)]
    early_stopping: EarlyStop,
    /// Stop when the text contains this string (repeatable); the output ends before it [default: none].
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Stop after generating this token id (repeatable), besides EOS [default: none].
    #[arg(long = "stop-id", value_name = "ID", allow_negative_numbers = true)]
    stop_ids: Vec<u32>,
    /// Do not stop at the tokenizer's EOS token [default: off].
    #[arg(long)]
    ignore_eos: bool,
    /// Prompts decoded together with --data (continuous batching; each takes num-beams cache slots), at least 1.
    #[arg(long, visible_alias = "batch-size", default_value_t = 8, allow_negative_numbers = true)]
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
    // Flags and the output file are checked before the model loads: a mistake costs nothing.
    if a.data.is_none() && a.out.is_some() {
        bail!("--out writes the rows of --data; with --prompt the generation streams to stdout (redirect it: > FILE)");
    }
    // clap drops a `requires = "data"` when --prompt, which conflicts with --data, is given.
    for (flag, given) in [("--ids", a.ids), ("--split", a.split.is_some())] {
        if a.data.is_none() && given {
            bail!("{flag} applies to the rows of --data; with --prompt leave it out");
        }
    }
    let mut opts = options(&a)?;
    if let (Some(out), Some(data)) = (&a.out, &a.data) {
        let inputs: Vec<&Path> =
            [Path::new(&a.model), Path::new(data)].into_iter().chain(a.adapter.adapter.as_deref()).collect();
        check_not_an_input(out, &inputs)?;
    }
    let out = a.data.is_some().then(|| prepare(a.out.as_deref(), a.overwrite, a.resume_output)).transpose()?;
    let data =
        a.data.as_deref().map(|d| resolve_data(d, a.data_format, a.split.as_deref(), EVAL_SPLITS)).transpose()?;
    let fingerprint = match &out {
        Some(out) if out.is_file() => {
            let f = settings(&a, &opts)?;
            out.check_settings(&f)?;
            f
        }
        _ => Fingerprint::new("generate"),
    };
    let opened = open_model(&a.model)?;
    let weight_bytes: usize = opened.weights.resident_bytes(a.base.base_dtype).values().sum();
    let mut m = opened.load(a.base.base_dtype)?;
    a.adapter.apply(&a.model, &mut m)?;
    a.device.check_compute(a.compute)?;
    use_compute(a.compute, true, true)?;
    if !a.ignore_eos {
        let eos = m.tokenizer.eos_id;
        opts.stop_ids.retain(|&t| t != eos);
        opts.stop_ids.insert(0, eos);
    }
    // The template is read where a prompt needs it: a model whose template does not compile still continues text.
    let template = std::cell::OnceCell::new();
    let template = || template.get_or_init(|| ChatTemplate::for_tokenizer(&m.tokenizer).map_err(|e| format!("{e:#}")));
    if a.chat && template().as_ref().map_err(|e| anyhow::anyhow!("{e}"))?.is_none() {
        bail!("{}: --chat, but the model has no chat template", a.model);
    }
    let special = special_ids(&m.tokenizer);
    let encode = |prompt: &Prompt| -> Result<Vec<u32>> {
        let needs_template = a.chat || matches!(prompt, Prompt::Chat { .. });
        let template = if needs_template { template().as_ref().map_err(|e| anyhow::anyhow!("{e}"))? } else { &None };
        match (prompt, template) {
            (Prompt::Text(text), Some(t)) if a.chat => {
                let msg = minijinja::Value::from_pairs([("role", "user"), ("content", text.as_str())]);
                let rendered = t.render(&[msg], None, GenerationPrompt::Add)?;
                m.tokenizer.encode(&rendered)
            }
            (Prompt::Text(text) | Prompt::Alpaca(text), _) => encode_prompt(&m.tokenizer, text),
            (Prompt::Chat { messages, tools, context_turns }, Some(t)) => {
                chat_prompt_ids(&m.tokenizer, t, messages, *context_turns, tools.as_ref(), &special)
            }
            (Prompt::Chat { .. }, None) => {
                bail!("a chat row, but the model has no chat template to render it with (give prompts as text)")
            }
        }
    };
    match (&a.prompt, &data, out) {
        (Some(p), _, _) => {
            let prompt = encode(&Prompt::Text(p.clone()))?;
            check_memory(&m.model, weight_bytes, std::slice::from_ref(&prompt), &opts)?;
            run_prompt(&m.model, &m.tokenizer, prompt, &opts)
        }
        (None, Some(data), Some(out)) => run_data(&a, &m, weight_bytes, data, (out, fingerprint), &opts, encode),
        _ => bail!("give --prompt or --data"),
    }
}

/// What the generations depend on besides the rows: the model, the adapter and every flag that changes an
/// output. Not --batch or --threads: see `--resume-output`.
fn settings(a: &GenerateArgs, opts: &GenerateOptions) -> Result<Fingerprint> {
    let mut f = Fingerprint::new("generate");
    f.set("--model", model_identity(&a.model)?);
    f.set("--adapter", a.adapter.identity()?);
    f.set("--base-dtype", flag_value(a.base.base_dtype));
    f.set("--compute", flag_value(a.compute));
    f.set("--device", a.device.kind());
    f.set("--chat", a.chat);
    f.set("--max-new-tokens", opts.max_new_tokens);
    // The filters are checked to be off unless sampling; the seed and the beam flags count only where they apply.
    f.set("--temperature", a.temperature.to_string());
    f.set("--top-k", a.top_k);
    f.set("--top-p", a.top_p.to_string());
    f.set("--min-p", a.min_p.to_string());
    f.set("--num-beams", a.num_beams);
    match &opts.strategy {
        Strategy::Greedy => {}
        Strategy::Sample(p) => f.set("--seed", p.seed),
        Strategy::Beam(b) => {
            f.set("--length-penalty", b.length_penalty.to_string());
            f.set("--early-stopping", flag_value(a.early_stopping));
        }
    }
    f.set("--repetition-penalty", opts.repetition_penalty.to_string());
    f.set("--no-repeat-ngram-size", opts.no_repeat_ngram_size);
    f.set("--stop", opts.stop_strings.clone());
    f.set("--stop-id", opts.stop_ids.clone());
    f.set("--ignore-eos", a.ignore_eos);
    f.set("--ids", a.ids);
    Ok(f)
}

/// Prints the memory plan of decoding `prompts` (weights, KV cache) and refuses one the machine cannot hold.
fn check_memory(model: &Transformer, weight_bytes: usize, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<()> {
    let beams = match &opts.strategy {
        Strategy::Beam(b) => b.num_beams,
        _ => 1,
    };
    let window = model.config.max_positions;
    let capacity = prompts.iter().map(|p| (p.len() + opts.max_new_tokens).min(window)).max().unwrap_or(1);
    let plan = DecodePlan::new(&model.config, weight_bytes, opts.batch.min(prompts.len()).max(1) * beams, capacity);
    eprintln!("memory: {}", plan.describe());
    plan.check(available_bytes())
}

/// The decoding options of the flags, every range checked; stop ids are the --stop-id ones (the caller adds
/// the tokenizer's EOS).
fn options(a: &GenerateArgs) -> Result<GenerateOptions> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        bail!("--temperature must be finite and ≥ 0 (got {}); 0 = greedy decoding", a.temperature);
    }
    if !a.length_penalty.is_finite() {
        bail!("--length-penalty must be finite (got {}); 1 = no length normalisation", a.length_penalty);
    }
    let sampling =
        SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, min_p: a.min_p, seed: a.seed };
    sampling.check_filters()?;
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
    } else if a.length_penalty != 1.0 || !matches!(a.early_stopping, EarlyStop::False) {
        bail!("--length-penalty and --early-stopping shape beam search: set --num-beams > 1 (or drop them)");
    } else if a.temperature > 0.0 {
        Strategy::Sample(sampling)
    } else {
        if sampling_flags {
            bail!("--top-k/--top-p/--min-p filter sampling: set --temperature > 0 (0 means greedy decoding)");
        }
        Strategy::Greedy
    };
    let mut stop_ids = vec![];
    for &t in &a.stop_ids {
        if !stop_ids.contains(&t) {
            stop_ids.push(t);
        }
    }
    let opts = GenerateOptions {
        strategy,
        max_new_tokens: a.max_new_tokens,
        repetition_penalty: a.repetition_penalty,
        no_repeat_ngram_size: a.no_repeat_ngram_size,
        stop_ids,
        stop_strings: a.stop.clone(),
        batch: a.batch,
        prefill_tokens: 512,
        device: a.device.placement(),
    };
    opts.check_settings()?;
    Ok(opts)
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
    })
    .map_err(|e| match e.downcast_ref::<NonFiniteLogits>() {
        Some(n) => anyhow::anyhow!(n.describe("--prompt")),
        None => e,
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
    m: &LoadedModel,
    weight_bytes: usize,
    data: &DataSource,
    (out, mut fingerprint): (Destination, Fingerprint),
    opts: &GenerateOptions,
    encode: impl Fn(&Prompt) -> Result<Vec<u32>>,
) -> Result<()> {
    let (model, tok) = (&m.model, &m.tokenizer);
    let rows = read_prompt_rows(data, &a.prompt_field)?;
    let prompts = encode_prompts(&rows, model, encode)?;
    check_memory(model, weight_bytes, &prompts, opts)?;
    let beam = matches!(opts.strategy, Strategy::Beam(_));
    // A row's output depends on its fields (written back with it) and its prompt's ids.
    fingerprint.rows = rows
        .iter()
        .zip(&prompts)
        .map(|(r, ids)| row_hash(serde_json::json!([r.fields, ids]).to_string().as_bytes()))
        .collect();
    let sources: Vec<String> = rows.iter().map(|r| r.source.clone()).collect();
    let (mut writer, done) =
        out.open(&fingerprint, &sources, |i, line| done_row(&rows, &prompts, i, line, beam, a.ids))?;
    let resumed = done.len();
    let (todo_rows, todo) = (&rows[resumed..], &prompts[resumed..]);
    let sampling = matches!(opts.strategy, Strategy::Sample(_));
    let plan = if sampling { Plan::every_row(todo) } else { Plan::once_per_prompt(&prompts[..resumed], done, todo) };
    let prompts_of_todo = todo.iter().collect::<std::collections::HashSet<_>>().len();
    let Plan { distinct, first, mut fields, of_row } = plan;
    let template = if sampling {
        "{spinner} generating {pos}/{len} rows [{bar:30}] {per_sec} ETA {eta}"
    } else {
        "{spinner} generating {pos}/{len} prompts [{bar:30}] {per_sec} ETA {eta}"
    };
    let bar = progress::bar(distinct.len() as u64, template);
    let start = Instant::now();
    let mut new_tokens = 0usize;
    let mut next = 0;
    write_ready(&mut writer, todo_rows, &of_row, &fields, &mut next)?;
    generate_from(model, tok, &distinct, resumed, opts, |e| {
        if let Event::Done { prompt, generation } = e {
            new_tokens += generation.ids.len();
            bar.inc(1);
            fields[first + prompt] = Some(generated_fields(generation, a.ids.then_some(&distinct[prompt])));
            // The bar steps aside while rows go to the terminal.
            bar.suspend(|| write_ready(&mut writer, todo_rows, &of_row, &fields, &mut next))?;
        }
        Ok(())
    })
    .map_err(|e| match e.downcast_ref::<NonFiniteLogits>() {
        Some(n) => {
            let r = of_row.iter().position(|&t| t == first + n.prompt).unwrap_or(0);
            anyhow::anyhow!(n.describe(&todo_rows[r].source))
        }
        None => anyhow::anyhow!("{}: {e:#}", data.label),
    })?;
    writer.finish()?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let how = if sampling {
        "one sample per row".to_string()
    } else if distinct.len() == prompts_of_todo {
        "each distinct prompt decoded once".to_string()
    } else {
        let reused = prompts_of_todo - distinct.len();
        format!("{} decoded, {reused} reused from the kept rows", distinct.len())
    };
    let kept = if resumed > 0 { format!("; {resumed} rows kept from the interrupted run") } else { String::new() };
    eprintln!(
        "generated for {} rows ({prompts_of_todo} distinct prompts): {new_tokens} new tokens in {secs:.1} s ({:.0} \
         tokens/s); {how}{kept}",
        todo.len(),
        new_tokens as f64 / secs
    );
    Ok(())
}

/// What to decode for the rows still to write, and where each row's output fields come from.
struct Plan {
    /// Prompts to decode; prompt d's fields go to `fields[first + d]`.
    distinct: Vec<Vec<u32>>,
    first: usize,
    /// The fields rows get (see [`generated_fields`]): outputs an interrupted run kept, then those of the
    /// prompts to decode (None until done).
    fields: Vec<Option<JsonObject>>,
    /// For each row, its entry of `fields`.
    of_row: Vec<usize>,
}

impl Plan {
    /// Sampling: every row draws its own sample.
    fn every_row(todo: &[Vec<u32>]) -> Plan {
        Plan { distinct: todo.to_vec(), first: 0, fields: vec![None; todo.len()], of_row: (0..todo.len()).collect() }
    }

    /// Greedy and beam search are deterministic: a prompt repeated in the file (E2E-style data with several
    /// references per x) is decoded once and its output copied to each of its rows — also when an interrupted
    /// run kept it (`kept` prompts, their output fields `done`), so that resuming writes what one run would.
    fn once_per_prompt(kept: &[Vec<u32>], done: Vec<JsonObject>, todo: &[Vec<u32>]) -> Plan {
        let mut known: std::collections::HashMap<&[u32], usize> = Default::default();
        let mut fields = vec![];
        for (p, f) in kept.iter().zip(done) {
            known.entry(p).or_insert_with(|| {
                fields.push(Some(f));
                fields.len() - 1
            });
        }
        let first = fields.len();
        let mut distinct = vec![];
        let of_row = todo
            .iter()
            .map(|p| {
                *known.entry(p).or_insert_with(|| {
                    distinct.push(p.clone());
                    fields.push(None);
                    fields.len() - 1
                })
            })
            .collect();
        Plan { distinct, first, fields, of_row }
    }
}

/// Writes the rows from `*next` on, in input order, while each one's output fields are known; then flushes, so
/// an interruption keeps them.
fn write_ready(
    writer: &mut RowWriter,
    rows: &[PromptRow],
    of_row: &[usize],
    fields: &[Option<JsonObject>],
    next: &mut usize,
) -> Result<()> {
    while let Some(f) = of_row.get(*next).and_then(|&t| fields[t].as_ref()) {
        let mut out = rows[*next].fields.clone();
        out.extend(f.clone());
        writer.push(&Value::Object(out))?;
        *next += 1;
    }
    writer.flush()
}

/// A row an interrupted run wrote (read back by --resume-output): it must be input row `i` with the fields
/// [`generated_fields`] adds under these settings (beam search adds "score", --ids the ids), and with --ids the
/// same prompt ids. Returns those fields.
fn done_row(
    rows: &[PromptRow],
    prompts: &[Vec<u32>],
    i: usize,
    line: &Value,
    beam: bool,
    ids: bool,
) -> Result<JsonObject> {
    let Some(PromptRow { source, fields: row, .. }) = rows.get(i) else {
        bail!("row {}, but --data has only {} rows", i + 1, rows.len())
    };
    let Some(obj) = line.as_object() else { bail!("not a JSON object") };
    let added = ["generation", "finish_reason", "new_tokens"]
        .into_iter()
        .chain(beam.then_some("score"))
        .chain(ids.then_some(["prompt_ids", "generated_ids"]).into_iter().flatten());
    let added: Vec<&str> = added.collect();
    let same_input = row.iter().all(|(k, v)| added.contains(&k.as_str()) || obj.get(k) == Some(v));
    let same_fields = obj.len() == row.keys().filter(|k| !added.contains(&k.as_str())).count() + added.len()
        && added.iter().all(|k| obj.contains_key(*k));
    if !same_input {
        bail!("it is not the output of {source} of --data");
    }
    if !same_fields {
        bail!("its fields are not the ones these settings write (--num-beams, --ids)");
    }
    if ids && obj["prompt_ids"] != serde_json::json!(prompts[i]) {
        bail!("its prompt_ids are not this model's encoding of {source} of --data");
    }
    Ok(added.iter().map(|&k| (k.to_string(), obj[k].clone())).collect())
}

/// Each row's prompt as ids; a prompt that leaves no room to generate is an error naming its row.
fn encode_prompts(
    rows: &[PromptRow],
    model: &Transformer,
    encode: impl Fn(&Prompt) -> Result<Vec<u32>>,
) -> Result<Vec<Vec<u32>>> {
    let context = condlm::generate::context_len(model);
    rows.iter()
        .map(|PromptRow { source, prompt, .. }| {
            let ids = encode(prompt).with_context(|| source.clone())?;
            if ids.len() >= context {
                bail!(
                    "{source}: the prompt has {} tokens, but the model's context window is {context}: no room to \
                     generate",
                    ids.len()
                );
            }
            Ok(ids)
        })
        .collect()
}

/// The fields a generation adds to its rows (they replace input fields of the same name).
fn generated_fields(g: &Generation, prompt_ids: Option<&Vec<u32>>) -> JsonObject {
    let mut out = JsonObject::new();
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
    out
}
