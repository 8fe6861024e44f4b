//! The rows `generate --data` continues, in the formats training reads: each row's x presented as training
//! presents it, so a model fitted with condlm continues from the ids it learned after.
//!
//! | row has                        | x                                                                    |
//! |--------------------------------|----------------------------------------------------------------------|
//! | `"prompt"` (a string)          | the prompt, raw (or with `--chat` one user message)                  |
//! | `"prompt"` (a list of messages) | TRL's conversational prompt: every turn, rendered as a chat's are (`"completion"`, if any, is the reference) |
//! | `"messages"`                   | the turns before the last assistant turn (that turn is the reference, left in the row), or every turn when the chat ends in a user or tool turn; rendered with the chat template and its generation prompt |
//! | `"instruction"` (+ `"input"`)  | Alpaca's prompt ([`super::records::alpaca_prompt`]); `"output"` may be absent |
use super::chat::{ChatTemplate, encode_chat};
use super::records::{Fields, Message, Record, Role, alpaca_prompt, chat_key, parse_row};
use super::rows::{JsonObject, field_of, read_source_objects};
use super::source::DataSource;
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, bail};
use std::collections::HashSet;

/// The shape of a row, for errors.
pub const SHAPE: &str = "{\"prompt\": ...}, {\"messages\": [...]} or {\"instruction\": ...}";

/// What a row asks to continue.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// A `"prompt"` string.
    Text(String),
    /// An Alpaca row's prompt: always raw, as training presents it.
    Alpaca(String),
    /// The turns of a chat that a reply follows (none of them the reply), the row's `tools`, and how many of
    /// the turns training reads as one context (a conversational prompt's; 0 for a `messages` row).
    Chat { messages: Vec<Message>, tools: Option<minijinja::Value>, context_turns: usize },
}

impl Prompt {
    /// Equal for two rows exactly when their prompts are: `metrics` pairs a generation with its references by it
    /// (a chat by its turns' roles and contents).
    pub fn key(&self) -> String {
        match self {
            Prompt::Text(text) | Prompt::Alpaca(text) => text.clone(),
            Prompt::Chat { messages, tools, .. } => {
                let tools = tools.as_ref().and_then(|t| serde_json::to_value(t).ok()).unwrap_or_default();
                format!("{}\u{3}{tools}", chat_key(messages))
            }
        }
    }
}

/// One row of `generate --data`: where it is, its fields (written back beside the generation) and its prompt.
#[derive(Clone, Debug)]
pub struct PromptRow {
    pub source: String,
    pub fields: JsonObject,
    pub prompt: Prompt,
}

/// Every row of `data` with its prompt, x in `prompt_field` (`"prompt"` unless the user named another); a row of
/// none of the formats is an error naming it.
pub fn read_prompt_rows(data: &DataSource, prompt_field: &str) -> Result<Vec<PromptRow>> {
    read_source_objects(data, SHAPE)?
        .into_iter()
        .map(|(source, fields)| {
            let prompt = prompt_of(&fields, prompt_field, &source)?;
            Ok(PromptRow { source, fields, prompt })
        })
        .collect()
}

/// A row's prompt, its x in `field` (`"prompt"` unless the user named another); `source` names the row in errors.
/// A row with `"messages"` is a chat first, as training reads it.
pub fn prompt_of(row: &JsonObject, field: &str, source: &str) -> Result<Prompt> {
    if let Some(messages) = row.get("messages") {
        let ends_in_reply = messages
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m.get("role").and_then(|r| r.as_str()) == Some("assistant"));
        return chat_prompt(messages, row.get("tools"), source, ends_in_reply);
    }
    if let Some(messages @ serde_json::Value::Array(turns)) = row.get(field) {
        let mut prompt = chat_prompt(messages, row.get("tools"), source, false)?;
        if let Prompt::Chat { context_turns, .. } = &mut prompt {
            *context_turns = turns.len();
        }
        return Ok(prompt);
    }
    if row.contains_key(field) {
        return Ok(Prompt::Text(field_of(row, field, source)?));
    }
    if row.contains_key("instruction") {
        let instruction = field_of(row, "instruction", source)?;
        let input = if row.contains_key("input") { field_of(row, "input", source)? } else { String::new() };
        return Ok(Prompt::Alpaca(alpaca_prompt(&instruction, &input)));
    }
    bail!(
        "{source}: expected a row like {SHAPE}; found {}",
        row.keys().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
    )
}

/// The reply a chat, conversational or Alpaca row holds, which a generation from its prompt is scored against: a
/// chat's last turn if it is an assistant turn, the first turn of a conversational completion (in `field`) if it
/// is an assistant's text, Alpaca's "output".
pub fn reply_of(row: &JsonObject, prompt_field: &str, field: &str) -> Option<String> {
    let text = |turn: &serde_json::Value| {
        (turn.get("role")?.as_str()? == "assistant").then(|| turn.get("content")?.as_str().map(String::from))?
    };
    if let Some(messages) = row.get("messages") {
        return text(messages.as_array()?.last()?);
    }
    if row.get(prompt_field).is_some_and(|p| p.is_array()) {
        return text(row.get(field)?.as_array()?.first()?);
    }
    row.get("instruction").and(row.get("output")).and_then(|o| o.as_str()).map(String::from)
}

/// A chat's context: read as training reads a chat (the same checks and template values). `messages` ends in
/// the reference reply (dropped) or, with a stand-in reply put after it, is all context.
fn chat_prompt(
    messages: &serde_json::Value,
    tools: Option<&serde_json::Value>,
    source: &str,
    ends_in_reply: bool,
) -> Result<Prompt> {
    let mut messages = messages.clone();
    if !ends_in_reply && let Some(list) = messages.as_array_mut() {
        list.push(serde_json::json!({"role": "assistant", "content": STAND_IN}));
    }
    let mut row = serde_json::json!({ "messages": messages });
    if let Some(t) = tools {
        row["tools"] = t.clone();
    }
    let parsed = parse_row(&row.to_string(), &Fields::default()).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    let Record::Chat { mut messages, tools, .. } = parsed.record else { unreachable!("a row with \"messages\"") };
    messages.pop();
    Ok(Prompt::Chat { messages, tools, context_turns: 0 })
}

/// The content of the reply put after a chat to find the ids before it (never encoded into a prompt).
const STAND_IN: &str = "…";

/// The ids that training puts before an assistant turn following `messages`: each segment tokenized as
/// [`encode_chat`] tokenizes it, ending in the template's generation prompt.
pub fn chat_prompt_ids(
    tok: &TextTokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    context_turns: usize,
    tools: Option<&minijinja::Value>,
    special: &HashSet<u32>,
) -> Result<Vec<u32>> {
    let reply = Message {
        role: Role::Assistant,
        content: STAND_IN.into(),
        value: minijinja::Value::from_pairs([("role", "assistant"), ("content", STAND_IN)]),
    };
    let with_reply: Vec<Message> = messages.iter().cloned().chain([reply]).collect();
    let mut chat = encode_chat(tok, template, &with_reply, context_turns, tools, special)?;
    chat.ids.truncate(chat.last_turn_start);
    Ok(chat.ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(row: serde_json::Value) -> Result<Prompt> {
        prompt_of(row.as_object().unwrap(), "prompt", "rows.jsonl:3")
    }

    fn roles(p: &Prompt) -> Vec<Role> {
        match p {
            Prompt::Chat { messages, .. } => messages.iter().map(|m| m.role).collect(),
            other => panic!("not a chat: {other:?}"),
        }
    }

    #[test]
    fn a_chat_ending_in_a_reply_is_continued_before_it() {
        let p = prompt(serde_json::json!({"messages": [
            {"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}
        ]}))
        .unwrap();
        assert_eq!(roles(&p), [Role::System, Role::User]);
    }

    #[test]
    fn a_chat_ending_in_a_user_turn_is_continued_after_every_turn() {
        let p = prompt(serde_json::json!({"messages": [
            {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}
        ]}))
        .unwrap();
        assert_eq!(roles(&p), [Role::User, Role::Assistant, Role::User]);
    }

    #[test]
    fn a_conversational_prompt_is_every_turn_it_holds() {
        let p = prompt(serde_json::json!({
            "prompt": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
            "completion": [{"role": "assistant", "content": "b"}]
        }))
        .unwrap();
        assert_eq!(roles(&p), [Role::User, Role::Assistant]);
        assert!(matches!(p, Prompt::Chat { context_turns: 2, .. }));
        let row = serde_json::json!({"prompt": [{"role": "user", "content": "u"}],
                                     "completion": [{"role": "assistant", "content": "b"}]});
        assert_eq!(reply_of(row.as_object().unwrap(), "prompt", "completion").as_deref(), Some("b"));
    }

    #[test]
    fn messages_come_first_as_training_reads_them() {
        let p = prompt(serde_json::json!({"prompt": "text", "completion": "c",
            "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}))
        .unwrap();
        assert_eq!(roles(&p), [Role::User]);
    }

    #[test]
    fn alpaca_rows_need_no_output() {
        let Prompt::Alpaca(p) = prompt(serde_json::json!({"instruction": "Add", "input": "1 2"})).unwrap() else {
            panic!()
        };
        assert_eq!(p, alpaca_prompt("Add", "1 2"));
    }

    #[test]
    fn other_rows_are_refused_by_name() {
        let e = prompt(serde_json::json!({"question": "q"})).unwrap_err().to_string();
        assert!(e.starts_with("rows.jsonl:3: expected a row like") && e.contains("\"question\""), "{e}");
        let e = prompt(serde_json::json!({"messages": [{"role": "bot", "content": "x"}]})).unwrap_err().to_string();
        assert!(e.starts_with("rows.jsonl:3: messages[0] has unknown role \"bot\""), "{e}");
    }
}
