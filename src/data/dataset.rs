//! A tokenized dataset for training and evaluation: rows read by [`super::records`], encoded with the
//! conditional objective, truncated to `max_len`, with statistics and a split by prompt.
//!
//! **Encoding.** Pairs (and Alpaca rows): `[prefix] + enc(x) + enc(y) + [EOS]`, targets y + EOS, where the
//! prefix is what the tokenizer puts before a text (BOS or nothing); x and y are tokenized separately, nothing
//! is inserted between them. An empty x with a tokenizer that adds no BOS is an error (the first y token would
//! have no context). Chats: see [`super::chat`] (assistant turns and their end-of-turn token are the targets).
//!
//! **Truncation** to `max_len` keeps y. Call x everything before the last assistant turn (for a pair: the
//! prefix and x; for a chat this includes earlier turns, whose targets are lost if cut) and y the rest. When a
//! row is too long, x is cut from the left, keeping the prefix (BOS) and — when there is no prefix — one last x
//! token as context for y's first token; only if y alone still does not fit is y cut from the right, keeping
//! its start (its EOS is then lost). Rows with x cut and rows with y targets cut are counted.
//! A row left with no target (only when `max_len` leaves no room for y at all) is **dropped**, counted in
//! [`DataStats::rows_without_targets`] and listed in [`Dataset::dropped`]; a dataset where every row is
//! dropped is an error.
//!
//! **Split** ([`split_by_prompt`]): rows are grouped by their prompt (for chats, the turns before the last
//! assistant turn); whole groups go to one side, chosen by a hash of (seed, prompt text): deterministic, and
//! independent of row order, tokenizer and template.
use super::chat::{ChatTemplate, encode_chat, special_ids};
use super::example::Example;
use super::records::{Fields, Format, Record, Row, read_rows};
use super::source::DataSource;
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, anyhow, bail};
use std::collections::HashSet;

#[derive(Clone, Debug)]
pub struct DataOptions {
    pub prompt_field: String,
    pub completion_field: String,
    /// Longest row in tokens (normally at most the model's context window).
    pub max_len: usize,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions { prompt_field: "prompt".into(), completion_field: "completion".into(), max_len: usize::MAX }
    }
}

/// What truncation removed from one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Tokens cut from the left of x.
    pub x: usize,
    /// Target tokens cut from the right of y.
    pub y: usize,
}

/// Per-row facts kept next to each example (for statistics after a split).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowInfo {
    pub format: Format,
    /// Hash of the grouping key (the prompt text); rows with equal keys share it.
    pub key: u64,
    pub cut: Cut,
}

/// A row that truncation left without a target token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedRow {
    pub source: String,
    pub info: RowInfo,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataStats {
    /// Rows read, dropped ones included.
    pub rows: usize,
    pub pairs: usize,
    pub alpaca: usize,
    pub chats: usize,
    /// Distinct prompts (grouping keys).
    pub prompts: usize,
    /// Context tokens (not targets), over the kept rows after truncation.
    pub x_tokens: usize,
    /// Target tokens (y, EOS / end-of-turn included), over the kept rows after truncation.
    pub y_tokens: usize,
    pub max_x: usize,
    pub max_y: usize,
    pub max_len: usize,
    pub truncated_x: usize,
    pub truncated_y: usize,
    /// Rows with no target left after truncation (dropped).
    pub rows_without_targets: usize,
}

impl DataStats {
    pub fn of(examples: &[Example], info: &[RowInfo], dropped: &[DroppedRow], max_len: usize) -> DataStats {
        let mut s = DataStats { max_len, ..Default::default() };
        let all_info = info.iter().chain(dropped.iter().map(|d| &d.info));
        let mut keys = HashSet::new();
        for i in all_info {
            s.rows += 1;
            match i.format {
                Format::Pair => s.pairs += 1,
                Format::Alpaca => s.alpaca += 1,
                Format::Chat => s.chats += 1,
            }
            keys.insert(i.key);
            s.truncated_x += (i.cut.x > 0) as usize;
            s.truncated_y += (i.cut.y > 0) as usize;
        }
        s.prompts = keys.len();
        s.rows_without_targets = dropped.len();
        for e in examples {
            let y = e.n_targets();
            let x = e.ids.len() - y;
            s.x_tokens += x;
            s.y_tokens += y;
            s.max_x = s.max_x.max(x);
            s.max_y = s.max_y.max(y);
        }
        s
    }

    /// Rows kept (with at least one target).
    pub fn examples(&self) -> usize {
        self.rows - self.rows_without_targets
    }

    /// A few lines for a log: counts, x/y token totals, means and maxima, truncation.
    pub fn describe(&self, label: &str) -> String {
        let kept = self.examples().max(1) as f64;
        let mut formats = Vec::new();
        for (n, name) in [(self.pairs, "prompt/completion"), (self.alpaca, "Alpaca"), (self.chats, "chat")] {
            if n > 0 {
                formats.push(format!("{n} {name}"));
            }
        }
        let limit = if self.max_len == usize::MAX {
            "no length limit".to_string()
        } else {
            format!("max_len {}", self.max_len)
        };
        let mut out = format!(
            "{label}: {} rows ({}), {} distinct prompts\n  \
             x tokens (context, no loss): {} total, mean {:.1}, max {}\n  \
             y tokens (targets, EOS / end-of-turn included): {} total, mean {:.1}, max {}\n  \
             truncation ({limit}): x cut in {} rows, y cut in {} rows",
            self.rows,
            formats.join(", "),
            self.prompts,
            self.x_tokens,
            self.x_tokens as f64 / kept,
            self.max_x,
            self.y_tokens,
            self.y_tokens as f64 / kept,
            self.max_y,
            self.truncated_x,
            self.truncated_y,
        );
        if self.rows_without_targets > 0 {
            out.push_str(&format!(
                "\n  warning: {} rows have no y token left after truncation and were dropped",
                self.rows_without_targets
            ));
        } else {
            out.push_str("; no row without y tokens");
        }
        out
    }
}

#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub examples: Vec<Example>,
    /// Where each example came from: `file:line` (or `file:line (element i)` for a JSON array).
    pub sources: Vec<String>,
    /// Format, grouping key and truncation of each example.
    pub info: Vec<RowInfo>,
    /// Rows dropped because truncation left them no target.
    pub dropped: Vec<DroppedRow>,
    pub stats: DataStats,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    fn restat(mut self) -> Self {
        self.stats = DataStats::of(&self.examples, &self.info, &self.dropped, self.stats.max_len);
        self
    }
}

/// A stable 64-bit hash of a grouping key (FNV-1a).
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Reads, encodes and truncates every row of `data` (a file, or the files of a split; see [`super::records`]).
pub fn load_dataset(data: impl Into<DataSource>, tok: &TextTokenizer, opts: &DataOptions) -> Result<Dataset> {
    let fields = Fields { prompt: opts.prompt_field.clone(), completion: opts.completion_field.clone() };
    let rows = read_rows(data, &fields)?;
    encode_rows(&rows, tok, opts.max_len)
}

/// Encodes rows already read (errors name each row's source).
pub fn encode_rows(rows: &[Row], tok: &TextTokenizer, max_len: usize) -> Result<Dataset> {
    if max_len == 0 {
        bail!("max_len must be at least 1");
    }
    let needs_chat = rows.iter().any(|r| r.format == Format::Chat);
    let template = if needs_chat { ChatTemplate::for_tokenizer(tok)? } else { None };
    let special = if needs_chat { special_ids(tok) } else { HashSet::new() };
    let mut ds = Dataset { stats: DataStats { max_len, ..Default::default() }, ..Default::default() };
    for row in rows {
        let enc = encode_row(row, tok, template.as_ref(), &special).map_err(|e| anyhow!("{}: {e:#}", row.source))?;
        let (example, cut) = truncate(&enc, max_len);
        let info = RowInfo { format: row.format, key: key_hash(&row.group_key()), cut };
        if example.n_targets() == 0 {
            ds.dropped.push(DroppedRow { source: row.source.clone(), info });
        } else {
            ds.examples.push(example);
            ds.sources.push(row.source.clone());
            ds.info.push(info);
        }
    }
    if ds.examples.is_empty()
        && let Some(first) = ds.dropped.first().map(|d| &d.source)
    {
        bail!(
            "none of the {} rows has a y token left after truncation to max_len {max_len} (first: {first}); \
             raise max_len",
            rows.len()
        );
    }
    Ok(ds.restat())
}

/// A row as ids and target flags before truncation, with what truncation must respect.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub target: Vec<bool>,
    /// Leading tokens truncation never cuts (the tokenizer's BOS prefix).
    pub keep: usize,
    /// Where y (the last answer) starts: x is `keep..y_start`.
    pub y_start: usize,
}

/// One row → ids and targets (before truncation).
pub fn encode_row(
    row: &Row,
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    special: &HashSet<u32>,
) -> Result<Encoded> {
    match &row.record {
        Record::Pair { prompt, completion } => {
            if prompt.is_empty() && tok.prefix.is_empty() {
                bail!(
                    "empty prompt and a tokenizer that adds no BOS: the first completion token would have no \
                     context; give every row a prompt"
                );
            }
            let (ids, y_start) = tok.encode_pair(prompt, completion)?;
            let mut target = vec![false; y_start];
            target.resize(ids.len(), true);
            Ok(Encoded { ids, target, keep: tok.prefix.len(), y_start })
        }
        Record::Chat { messages, tools, context_turns } => {
            let template = template.ok_or_else(|| {
                anyhow!(
                    "this row is a chat but the model has no chat template (tokenizer_config.json \
                     \"chat_template\", chat_template.jinja, or GGUF tokenizer.chat_template)"
                )
            })?;
            let c = encode_chat(tok, template, messages, *context_turns, tools.as_ref(), special)?;
            let keep = if !tok.prefix.is_empty() && c.ids.starts_with(&tok.prefix) { tok.prefix.len() } else { 0 };
            Ok(Encoded { ids: c.ids, target: c.target, keep, y_start: c.last_turn_start.max(keep) })
        }
    }
}

/// Cuts an encoded row to `max_len` tokens: x from the left first (keeping `keep` and, without a prefix,
/// one context token), then y from the right. Position 0 is never a target. `Cut::y` counts every target lost:
/// the tail's, and a chat's earlier assistant turns cut with its context.
pub fn truncate(e: &Encoded, max_len: usize) -> (Example, Cut) {
    let n = e.ids.len();
    let (mut ids, mut target) = (e.ids.clone(), e.target.clone());
    let mut cut = Cut::default();
    if n > max_len {
        let x_len = e.y_start - e.keep;
        let ctx_min = if e.keep == 0 { x_len.min(1) } else { 0 };
        let cut_x = (n - max_len).min(x_len - ctx_min);
        ids.drain(e.keep..e.keep + cut_x);
        target.drain(e.keep..e.keep + cut_x);
        if ids.len() > max_len {
            ids.truncate(max_len);
            target.truncate(max_len);
        }
        cut.x = cut_x;
    }
    if let Some(t) = target.first_mut() {
        *t = false;
    }
    let targets_in = |t: &[bool]| t.iter().filter(|&&t| t).count();
    cut.y = targets_in(&e.target[e.target.first().map_or(0, |_| 1)..]) - targets_in(&target);
    let mut targets = Vec::new();
    let mut i = 0;
    while i < target.len() {
        if target[i] {
            let s = i;
            while i < target.len() && target[i] {
                i += 1;
            }
            targets.push(s..i);
        } else {
            i += 1;
        }
    }
    (Example { ids, targets }, cut)
}

/// Holds out about `fraction` of the distinct prompts (with all their rows) as the second set. Deterministic
/// in (seed, prompt texts): groups are ordered by a hash of (seed, key) and the first ⌈fraction · groups⌉ — at
/// least one and at most all but one when 0 < fraction < 1 and there are two groups or more — go to the
/// held-out side.
pub fn split_by_prompt(all: Dataset, fraction: f64, seed: u64) -> (Dataset, Dataset) {
    let mut keys: Vec<u64> = all.info.iter().chain(all.dropped.iter().map(|d| &d.info)).map(|i| i.key).collect();
    keys.sort_unstable();
    keys.dedup();
    let groups = keys.len();
    let mut n_held = if fraction > 0.0 { ((fraction * groups as f64).round() as usize).max(1) } else { 0 };
    if fraction < 1.0 && groups >= 2 {
        n_held = n_held.min(groups - 1);
    }
    n_held = n_held.min(groups);
    let order = |k: u64| crate::rng::mix(crate::rng::mix(seed) ^ k);
    keys.sort_unstable_by_key(|&k| (order(k), k));
    let held: HashSet<u64> = keys[..n_held].iter().copied().collect();
    let max_len = all.stats.max_len;
    let empty = || Dataset { stats: DataStats { max_len, ..Default::default() }, ..Default::default() };
    let (mut train, mut eval) = (empty(), empty());
    for ((e, s), i) in all.examples.into_iter().zip(all.sources).zip(all.info) {
        let side = if held.contains(&i.key) { &mut eval } else { &mut train };
        side.examples.push(e);
        side.sources.push(s);
        side.info.push(i);
    }
    for d in all.dropped {
        if held.contains(&d.info.key) { &mut eval } else { &mut train }.dropped.push(d);
    }
    (train.restat(), eval.restat())
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn enc(x: usize, y: usize, keep: usize) -> Encoded {
        let ids: Vec<u32> = (0..(keep + x + y) as u32).collect();
        let target = (0..ids.len()).map(|i| i >= keep + x).collect();
        Encoded { ids, target, keep, y_start: keep + x }
    }

    #[test]
    fn truncation_cuts_x_first_then_y() {
        // fits
        let (e, c) = truncate(&enc(3, 2, 1), 6);
        assert_eq!((e.ids.len(), e.targets.clone(), c), (6, vec![4..6], Cut::default()));
        // x cut from the left, BOS kept
        let (e, c) = truncate(&enc(5, 2, 1), 5);
        assert_eq!(e.ids, vec![0, 4, 5, 6, 7]);
        assert_eq!((e.targets, c), (vec![3..5], Cut { x: 3, y: 0 }));
        // y alone too long: x gone, y cut from the right keeping its start
        let (e, c) = truncate(&enc(3, 6, 1), 4);
        assert_eq!(e.ids, vec![0, 4, 5, 6]);
        assert_eq!((e.targets, c), (vec![1..4], Cut { x: 3, y: 3 }));
        // no prefix: one x token stays as context
        let (e, c) = truncate(&enc(3, 6, 0), 4);
        assert_eq!(e.ids, vec![2, 3, 4, 5]);
        assert_eq!((e.targets, c), (vec![1..4], Cut { x: 2, y: 3 }));
        // no room for y at all
        let (e, _) = truncate(&enc(3, 2, 1), 1);
        assert_eq!((e.n_targets(), e.ids), (0, vec![0]));
        // a chat: an earlier assistant turn (targets 2..4) inside the context cut from the left counts as y cut
        let mut chat = enc(6, 2, 1);
        chat.target[2..4].fill(true);
        let (e, c) = truncate(&chat, 5);
        assert_eq!(e.ids, vec![0, 5, 6, 7, 8]);
        assert_eq!((e.targets, c), (vec![3..5], Cut { x: 4, y: 2 }));
        // and one left at position 0, which is never a target, too
        let mut chat = enc(6, 2, 0);
        chat.target[2..4].fill(true);
        let (e, c) = truncate(&chat, 5);
        assert_eq!(e.ids, vec![3, 4, 5, 6, 7]);
        assert_eq!((e.targets, c), (vec![3..5], Cut { x: 3, y: 2 }));
    }

    #[test]
    fn dropped_rows_are_counted_and_split_by_key() {
        let info = |key| RowInfo { format: Format::Pair, key, cut: Cut { x: 3, y: 0 } };
        let ds = Dataset {
            examples: vec![Example::pair(vec![1, 2, 3], 2), Example::pair(vec![1, 2], 1)],
            sources: vec!["f:1".into(), "f:2".into()],
            info: vec![info(1), info(2)],
            dropped: vec![DroppedRow { source: "f:3".into(), info: info(2) }],
            stats: DataStats { max_len: 8, ..Default::default() },
        }
        .restat();
        let s = &ds.stats;
        assert_eq!((s.rows, s.examples(), s.rows_without_targets, s.prompts, s.truncated_x), (3, 2, 1, 2, 3));
        assert_eq!((s.x_tokens, s.y_tokens, s.max_x, s.max_y), (3, 2, 2, 1));
        assert!(s.describe("t").contains("warning: 1 rows have no y token"), "{}", s.describe("t"));
        for seed in 0..8 {
            let (a, b) = split_by_prompt(ds.clone(), 0.5, seed);
            let (with_2, other) = if a.info.iter().any(|i| i.key == 2) { (a, b) } else { (b, a) };
            assert_eq!((with_2.dropped.len(), other.dropped.len()), (1, 0));
            assert_eq!(with_2.stats.rows + other.stats.rows, 3);
        }
    }
}
