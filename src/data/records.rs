//! Reading data files into rows of one of three formats, with errors that name file and line (or row).
//!
//! A JSON file is JSONL (one JSON object per line, blank lines skipped) or one JSON array of objects (told apart
//! by the first non-blank character, `[`, whatever the extension). Parquet, CSV and TSV rows are turned into the
//! JSON object a JSONL file would hold ([`super::parquet_rows`], [`super::csv_rows`]) and read by the same
//! [`parse_row`], so every format gives the same records. Each row is detected on its own:
//!
//! | row has                                  | format        | x                                     | y          |
//! |------------------------------------------|---------------|---------------------------------------|------------|
//! | `"messages": [{"role", "content"}, ...]` | chat          | every turn before an assistant turn   | assistant turns |
//! | `"prompt"` and `"completion"` lists of messages | chat (TRL's conversational) | the prompt's turns, and the completion's before an assistant turn | the completion's assistant turns |
//! | the prompt field (default `"prompt"`)    | prompt/completion | the prompt field                  | the completion field |
//! | `"instruction"` (+ `"input"`), `"output"` | Alpaca       | [`alpaca_prompt`]                     | `output`   |
//!
//! The configured prompt field wins over `"instruction"`, so `--prompt-field instruction --completion-field output`
//! reads Alpaca files as plain pairs. Chat roles are `system`, `user`, `assistant` and `tool` (tool results are
//! context, like user turns); anything else is an error. Empty completions (and empty assistant turns) are errors:
//! an empty y would teach the model nothing but to stop at once.
use super::source::{DataSource, Reader};
use super::{csv_rows, parquet_rows};
use crate::input;
use anyhow::{Result, bail};
use std::path::Path;

/// Stanford Alpaca's prompt for rows with a non-empty `input` (`{instruction}`/`{input}` are substituted).
pub const ALPACA_PROMPT_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input \
that provides further context. Write a response that appropriately completes the request.\n\n\
### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";

/// Stanford Alpaca's prompt for rows without `input` (or with an empty one).
pub const ALPACA_PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that \
appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// The Stanford Alpaca prompt (github.com/tatsu-lab/stanford_alpaca, `PROMPT_DICT`) for an instruction and an
/// optional input; the completion is the row's `output` as it is (no separator is added: the prompt ends in a
/// newline).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    let template = if input.is_empty() { ALPACA_PROMPT_NO_INPUT } else { ALPACA_PROMPT_WITH_INPUT };
    // Substitute in one pass, so braces inside the instruction are never read as placeholders.
    let mut out = String::with_capacity(template.len() + instruction.len() + input.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(r) = rest.strip_prefix("{instruction}") {
            out.push_str(instruction);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{input}") {
            out.push_str(input);
            rest = r;
        } else {
            out.push('{');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Names of the prompt/completion fields (`--prompt-field`, `--completion-field`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    pub prompt: String,
    pub completion: String,
}

impl Fields {
    /// Every top-level field a row can be read from (what a Parquet reader needs of a file's columns).
    pub fn columns(&self) -> [&str; 7] {
        ["messages", "tools", &self.prompt, &self.completion, "instruction", "input", "output"]
    }
}

impl Default for Fields {
    fn default() -> Self {
        Fields { prompt: "prompt".into(), completion: "completion".into() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pair,
    Alpaca,
    Chat,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Pair => "prompt/completion",
            Format::Alpaca => "Alpaca",
            Format::Chat => "chat",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub const NAMES: [&'static str; 4] = ["system", "user", "assistant", "tool"];

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => return None,
        })
    }
}

/// One chat turn: its role and content, plus the message object exactly as the file gives it (key order
/// kept), which is what the chat template sees (so extra keys such as `tool_calls` or `name` reach it).
#[derive(Clone, Debug)]
pub struct Message {
    pub role: Role,
    pub content: String,
    pub value: minijinja::Value,
}

#[derive(Clone, Debug)]
pub enum Record {
    /// x and y as text (Alpaca rows become pairs through [`alpaca_prompt`]).
    Pair { prompt: String, completion: String },
    /// Turns up to and including the last assistant turn (later turns carry no target and are dropped), and
    /// the row's `tools` list if it has one (passed to the template as `tools`). The first `context_turns`
    /// turns are context even where they are assistant turns: the prompt of a conversational prompt/completion
    /// row (0 for a `messages` row, whose every assistant turn is a target).
    Chat { messages: Vec<Message>, tools: Option<minijinja::Value>, context_turns: usize },
}

#[derive(Clone, Debug)]
pub struct Row {
    /// `file:line` (JSONL) or `file:line (element i)` (JSON array, `i` 0-based), for messages.
    pub source: String,
    pub format: Format,
    pub record: Record,
}

impl Row {
    /// What `split_by_prompt` groups by: the prompt text for pairs (the full Alpaca prompt), and for chats
    /// every turn before the last assistant turn (roles and contents, independent of any template).
    pub fn group_key(&self) -> String {
        match &self.record {
            Record::Pair { prompt, .. } => prompt.clone(),
            Record::Chat { messages, .. } => chat_key(&messages[..messages.len() - 1]),
        }
    }
}

/// The turns of `messages` as one string, independent of any template and of the order of their keys: equal
/// exactly when the turns are (roles, contents, and every other key such as `tool_calls`).
pub fn chat_key(messages: &[Message]) -> String {
    let canonical = |m: &Message| serde_json::to_value(&m.value).map_or_else(|_| m.content.clone(), |v| v.to_string());
    messages.iter().map(canonical).collect::<Vec<_>>().join("\u{2}")
}

/// Reads every row of every file of `data`, in order (each file must hold rows).
pub fn read_rows(data: impl Into<DataSource>, fields: &Fields) -> Result<Vec<Row>> {
    let data = data.into();
    let mut rows = Vec::new();
    for path in &data.files {
        let before = rows.len();
        let mut push = |source: String, text: &str| -> Result<()> {
            rows.push(parse_row(text, fields).map_err(|e| anyhow::anyhow!("{source}: {e}"))?.with_source(source));
            Ok(())
        };
        match data.format.reader(path) {
            Reader::Json => rows.extend(read_json(path, fields)?),
            Reader::Parquet => parquet_rows::for_each_row(path, Some(&fields.columns()), &mut push)?,
            Reader::Delimited(d) => csv_rows::for_each_row(path, d, &mut push)?,
        }
        if rows.len() == before {
            bail!("{}: no rows", path.display());
        }
    }
    Ok(rows)
}

/// Every row of a JSONL file or JSON array.
fn read_json(path: &Path, fields: &Fields) -> Result<Vec<Row>> {
    let text = input::read_to_string(path, "data file")?;
    parse_rows(&text, &path.display().to_string(), fields)
}

/// Every row of the text of a JSONL file or JSON array (what [`read_rows`] does with the file's text); `name`
/// names the file in errors.
pub fn parse_rows(text: &str, name: &str, fields: &Fields) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for t in json_row_texts(text, name)? {
        let source = t.source(name);
        rows.push(parse_row(t.text, fields).map_err(|e| anyhow::anyhow!("{source}: {e}"))?.with_source(source));
    }
    if rows.is_empty() {
        bail!("{name}: no rows");
    }
    Ok(rows)
}

/// One row's JSON text in a JSONL file or a JSON array.
pub struct JsonRowText<'a> {
    /// The 1-based line where it starts.
    pub line: usize,
    /// Its index in a JSON array; None in JSONL.
    pub element: Option<usize>,
    pub text: &'a str,
}

impl JsonRowText<'_> {
    /// `name:line`, or `name:line (element i)` in a JSON array.
    pub fn source(&self, name: &str) -> String {
        match self.element {
            Some(i) => format!("{name}:{} (element {i})", self.line),
            None => format!("{name}:{}", self.line),
        }
    }
}

/// The rows of the text of a JSON data file: the elements of a JSON array, else the non-blank lines (JSONL); a
/// leading byte-order mark is dropped. `name` names the file in errors.
pub fn json_row_texts<'a>(text: &'a str, name: &str) -> Result<Vec<JsonRowText<'a>>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('[') {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            bail!("{name}: not valid JSON ({e}); expected a JSON array of row objects, or JSONL (one object per line)");
        }
        let elements = array_elements(text).into_iter().enumerate();
        return Ok(elements.map(|(i, (line, text))| JsonRowText { line, element: Some(i), text }).collect());
    }
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    Ok(lines.map(|(i, text)| JsonRowText { line: i + 1, element: None, text }).collect())
}

impl Row {
    fn with_source(mut self, source: String) -> Row {
        self.source = source;
        self
    }
}

/// (1-based line, text) of each element of a JSON array that is known to be valid.
fn array_elements(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut line) = (0usize, false, false, 1usize);
    let mut start: Option<(usize, usize)> = None;
    fn close<'a>(text: &'a str, out: &mut Vec<(usize, &'a str)>, start: &mut Option<(usize, usize)>, end: usize) {
        if let Some((s, l)) = start.take() {
            out.push((l, text[s..end].trim_end()));
        }
    }
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'[' | b'{' => {
                if depth == 1 && start.is_none() {
                    start = Some((i, line));
                }
                depth += 1;
            }
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    close(text, &mut out, &mut start, i);
                }
            }
            b',' if depth == 1 => close(text, &mut out, &mut start, i),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                if depth == 1 && start.is_none() {
                    start = Some((i, line));
                }
                if b == b'"' {
                    in_string = true;
                }
            }
        }
    }
    out
}

fn keys_of(obj: &serde_json::Map<String, serde_json::Value>) -> String {
    if obj.is_empty() {
        return "none".into();
    }
    obj.keys().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

const EXPECTED: &str = "{\"prompt\": x, \"completion\": y}, {\"instruction\": ..., \"input\": ..., \"output\": y} \
(Alpaca), {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} (chat) or {\"prompt\": [messages], \
\"completion\": [messages]} (conversational)";

/// One row's text → a record; the error says what was expected, without the location (the caller adds it).
pub fn parse_row(text: &str, fields: &Fields) -> Result<Row, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let obj = v.as_object().ok_or_else(|| format!("expected a JSON object like {EXPECTED}; got {}", kind_of(&v)))?;
    let string = |name: &str, what: &str| -> Result<Option<String>, String> {
        match obj.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Null) => {
                Err(format!("field \"{name}\" ({what}) is null (a missing value); fill it in or drop the row"))
            }
            Some(other) => Err(format!("field \"{name}\" ({what}) must be a string, got {}", kind_of(other))),
        }
    };
    let require = |name: &str, what: &str| -> Result<String, String> {
        string(name, what)?.ok_or_else(|| format!("missing field \"{name}\" ({what}); found {}", keys_of(obj)))
    };
    let row = |format, record| Row { source: String::new(), format, record };
    let (pf, cf) = (fields.prompt.as_str(), fields.completion.as_str());
    // Fields named by --prompt-field / --completion-field are what the user asked for, over a "messages" beside.
    let named = *fields != Fields::default() && obj.contains_key(pf);
    if let Some(messages) = obj.get("messages").filter(|_| !named) {
        return parse_chat(text, messages).map(|r| row(Format::Chat, r));
    }
    if let (Some(serde_json::Value::Array(prompt)), Some(completion)) = (obj.get(pf), obj.get(cf)) {
        return conversation(prompt, completion, obj.get("tools"), (pf, cf)).map(|r| row(Format::Chat, r));
    }
    if obj.contains_key(pf) || (obj.contains_key(cf) && !obj.contains_key("instruction")) {
        let prompt = require(pf, "the prompt x")?;
        let completion = require(cf, "the completion y")?;
        if completion.is_empty() {
            return Err(format!(
                "field \"{cf}\" is empty: an empty completion would teach only EOS; drop the row or fill it in"
            ));
        }
        return Ok(row(Format::Pair, Record::Pair { prompt, completion }));
    }
    if obj.contains_key("instruction") || obj.contains_key("output") {
        let instruction = require("instruction", "Alpaca instruction")?;
        let input = string("input", "Alpaca input")?.unwrap_or_default();
        let output = require("output", "Alpaca output, the completion y")?;
        if output.is_empty() {
            return Err("field \"output\" is empty: an empty completion would teach only EOS; drop the row or \
                        fill it in"
                .into());
        }
        return Ok(row(
            Format::Alpaca,
            Record::Pair { prompt: alpaca_prompt(&instruction, &input), completion: output },
        ));
    }
    Err(format!("missing fields: expected {EXPECTED}; found {}", keys_of(obj)))
}

/// TRL's conversational prompt/completion row: the prompt's turns, then the completion's, whose assistant
/// turns alone are targets (the prompt's earlier answers are context, as TRL's completion-only loss has them).
fn conversation(
    prompt: &[serde_json::Value],
    completion: &serde_json::Value,
    tools: Option<&serde_json::Value>,
    (pf, cf): (&str, &str),
) -> Result<Record, String> {
    let Some(completion) = completion.as_array() else {
        return Err(format!(
            "field \"{pf}\" is a list of messages, so \"{cf}\" must be one too (TRL's conversational \
             prompt/completion), got {}",
            kind_of(completion)
        ));
    };
    if !completion.iter().any(|m| m.get("role").and_then(|r| r.as_str()) == Some("assistant")) {
        return Err(format!("\"{cf}\" has no assistant turn, so nothing to learn"));
    }
    let mut row = serde_json::json!({ "messages": prompt.iter().chain(completion).collect::<Vec<_>>() });
    if let Some(t) = tools {
        row["tools"] = t.clone();
    }
    let text = row.to_string();
    match parse_chat(&text, &row["messages"])? {
        Record::Chat { messages, tools, .. } => Ok(Record::Chat { messages, tools, context_turns: prompt.len() }),
        pair => Ok(pair),
    }
}

fn parse_chat(text: &str, messages: &serde_json::Value) -> Result<Record, String> {
    let list = messages.as_array().ok_or_else(|| {
        format!("\"messages\" must be an array of {{\"role\", \"content\"}} objects, got {}", kind_of(messages))
    })?;
    if list.is_empty() {
        return Err("\"messages\" is empty; a chat needs at least one assistant turn".into());
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let obj = m.as_object().ok_or_else(|| {
            format!("messages[{i}] must be an object {{\"role\": ..., \"content\": ...}}, got {}", kind_of(m))
        })?;
        let role_name = match obj.get("role") {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(other) => return Err(format!("messages[{i}].role must be a string, got {}", kind_of(other))),
            None => return Err(format!("messages[{i}] has no \"role\"; found {}", keys_of(obj))),
        };
        let role = Role::parse(role_name).ok_or_else(|| {
            format!("messages[{i}] has unknown role \"{role_name}\"; allowed roles: {}", Role::NAMES.join(", "))
        })?;
        let has_tool_calls = obj.get("tool_calls").and_then(|t| t.as_array()).is_some_and(|t| !t.is_empty());
        let content = match obj.get("content") {
            Some(serde_json::Value::String(s)) => s.clone(),
            None | Some(serde_json::Value::Null) if role == Role::Assistant && has_tool_calls => String::new(),
            None => return Err(format!("messages[{i}] ({role_name}) has no \"content\"; found {}", keys_of(obj))),
            Some(other) => {
                return Err(format!(
                    "messages[{i}].content must be a string, got {} (multi-part content is not supported)",
                    kind_of(other)
                ));
            }
        };
        if role == Role::Assistant && content.is_empty() && !has_tool_calls {
            return Err(format!(
                "messages[{i}] is an empty assistant turn: it would teach only the end-of-turn token; drop it or \
                 fill it in"
            ));
        }
        out.push((role, content));
    }
    let Some(last) = out.iter().rposition(|(r, _)| *r == Role::Assistant) else {
        return Err(format!(
            "the chat has no assistant turn, so nothing to learn (roles: {})",
            out.iter().map(|(r, _)| Role::NAMES[*r as usize]).collect::<Vec<_>>().join(", ")
        ));
    };
    // The template sees the objects as written (key order kept): parse the row again as template values.
    let row: minijinja::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let values = row.get_attr("messages").map_err(|e| e.to_string())?;
    let tools = row.get_attr("tools").ok().filter(|t| !t.is_undefined() && !t.is_none());
    let messages = out
        .into_iter()
        .take(last + 1)
        .enumerate()
        .map(|(i, (role, content))| {
            let value = values.get_item_by_index(i).map_err(|e| e.to_string())?;
            Ok(Message { role, content, value: without_nulls(value) })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Record::Chat { messages, tools, context_turns: 0 })
}

/// Drops the keys whose value is null, as transformers does before rendering (`content: null` next to
/// `tool_calls` is then simply absent).
fn without_nulls(v: minijinja::Value) -> minijinja::Value {
    let Ok(keys) = v.try_iter() else { return v };
    if v.kind() != minijinja::value::ValueKind::Map {
        return v;
    }
    let pairs: Vec<(minijinja::Value, minijinja::Value)> =
        keys.filter_map(|k| v.get_item(&k).ok().filter(|x| !x.is_none()).map(|x| (k, x))).collect();
    minijinja::Value::from_pairs(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_prompt_substitutes_once() {
        let p = alpaca_prompt("Say {input}", "");
        assert!(p.contains("### Instruction:\nSay {input}\n\n### Response:\n") && !p.contains("### Input"), "{p}");
        let p = alpaca_prompt("Add", "1 {instruction} 2");
        assert!(p.ends_with("### Instruction:\nAdd\n\n### Input:\n1 {instruction} 2\n\n### Response:\n"), "{p}");
    }

    #[test]
    fn array_elements_give_lines() {
        let text = "[\n {\"a\": \"x,]\\\"\"},\n\n {\"b\": [1, {\"c\": 2}]}, 3\n]";
        let el = array_elements(text);
        assert_eq!(el, vec![(2, "{\"a\": \"x,]\\\"\"}"), (4, "{\"b\": [1, {\"c\": 2}]}"), (4, "3")]);
        assert!(array_elements("[]").is_empty());
    }

    #[test]
    fn conversational_rows_are_chats_whose_prompt_is_context() {
        let f = Fields::default();
        let r = parse_row(
            r#"{"prompt": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"},
                {"role": "user", "content": "v"}], "completion": [{"role": "assistant", "content": "b"}]}"#,
            &f,
        )
        .unwrap();
        assert_eq!(r.format, Format::Chat);
        let Record::Chat { messages, context_turns, .. } = &r.record else { panic!() };
        assert_eq!((messages.len(), *context_turns), (4, 3));
        assert_eq!(r.group_key(), chat_key(&messages[..3]));
        let e = parse_row(r#"{"prompt": [{"role": "user", "content": "u"}], "completion": "b"}"#, &f).unwrap_err();
        assert!(e.contains("\"completion\" must be one too"), "{e}");
        let e = parse_row(r#"{"prompt": [{"role": "user", "content": "u"}], "completion": []}"#, &f).unwrap_err();
        assert!(e.contains("\"completion\" has no assistant turn"), "{e}");
    }

    #[test]
    fn detects_formats() {
        let f = Fields::default();
        let r = parse_row(r#"{"prompt": "a", "completion": "b"}"#, &f).unwrap();
        assert_eq!(r.format, Format::Pair);
        let r = parse_row(r#"{"instruction": "a", "output": "b"}"#, &f).unwrap();
        assert_eq!(r.format, Format::Alpaca);
        let r = parse_row(r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}"#, &f).unwrap();
        let Record::Chat { messages, .. } = r.record else { panic!() };
        assert_eq!(messages.len(), 2, "turns after the last assistant turn are dropped");
        let f2 = Fields { prompt: "instruction".into(), completion: "output".into() };
        let r = parse_row(r#"{"instruction": "a", "output": "b"}"#, &f2).unwrap();
        assert_eq!(r.format, Format::Pair);
        // the fields asked for win over a "messages" beside them; without them, messages is read
        let both = r#"{"q": "a", "a": "b", "messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}"#;
        let f3 = Fields { prompt: "q".into(), completion: "a".into() };
        let r = parse_row(both, &f3).unwrap();
        assert_eq!(r.format, Format::Pair);
        assert_eq!(parse_row(both, &f).unwrap().format, Format::Chat);
    }
}
