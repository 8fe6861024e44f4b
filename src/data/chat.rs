//! Chat templates with Hugging Face semantics, and chat → ids with loss on assistant turns only.
//!
//! **Rendering** follows transformers' `apply_chat_template` (Jinja2 `ImmutableSandboxedEnvironment` with
//! `trim_blocks`, `lstrip_blocks`, loop controls): the template sees `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, `tools` (the row's `tools`, else none) and `documents` (none), and can call
//! `raise_exception(msg)`, `strftime_now(fmt)` (one clock reading per template, so every rendering of a row
//! agrees), `namespace(...)`, `dict(...)`, the `tojson` filter with Python's `json.dumps` output
//! (`ensure_ascii=False`, `indent`, `separators`, `sort_keys`) and Python string/dict methods (`.strip()`,
//! `.startswith()`, `.split()`, `.items()`, … from minijinja-contrib's `pycompat`). The `{% generation %}` …
//! `{% endgeneration %}` tags (transformers' `AssistantTracker`) render their body unchanged; they mark nothing
//! here, because the mask comes from the construction below. `bos_token` is the tokenizer's BOS text
//! whenever one is known (whether or not the tokenizer puts it before plain texts, as transformers passes it;
//! else the prefix it adds) and `eos_token` the EOS token's text. Known differences from
//! Jinja2: Python-only printing (`{{ true }}` prints `true`, not `True`).
//!
//! **Which tokens are targets**, by construction, never by searching the rendered text: for each assistant
//! turn k, `render(messages[..k], add_generation_prompt=true)` ends where the answer starts and
//! `render(messages[..=k])` where it ends; the text between consecutive renderings is one segment, tokenized on
//! its own. The assistant segments are the targets, including the end-of-turn token the template writes
//! (`<|im_end|>`, `<|eot_id|>`, `</s>`): the model must learn to stop. Whitespace the template writes after
//! the turn (ChatML's `\n` after `<|im_end|>`) is a separate non-target segment: the model learns to stop at
//! the end-of-turn token, and what follows it is the next turn's context. (TRL's training templates put that
//! whitespace inside `{% generation %}`, and ChatML's `\n` after `<|im_start|>assistant` too; those tokens are
//! the only difference from their masks.) If the last assistant turn does not end in a special token (a template with
//! no end-of-turn marker), EOS is appended to it as a target. A template whose earlier rendering is not a
//! prefix of a later one cannot be split this way and is an error. No BOS is added beyond what the template
//! writes (transformers tokenizes the rendering with `add_special_tokens=False`).
use super::records::{Message, Role};
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, anyhow, bail};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use std::collections::HashSet;

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template's first line (shortened), to name it in errors.
    name: String,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE: &str = "chat_template";

/// Whether a rendering ends with the header of a new assistant turn, ready for the model to answer
/// (transformers' `add_generation_prompt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationPrompt {
    Add,
    Omit,
}

/// Instructions one rendering of a chat template may run.
const TEMPLATE_FUEL: u64 = 50_000_000;

impl ChatTemplate {
    /// Compiles a Hugging Face chat template.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| anyhow!("cannot configure the template engine: {e}"))?,
        );
        // A template comes with the model file: bound the work one rendering may do, so a hostile or broken
        // template (an endless loop) fails with an error instead of hanging. Real templates use a few hundred
        // units per message.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        let now = chrono::Local::now();
        env.add_function("strftime_now", move |fmt: String| -> Result<String, Error> {
            use chrono::format::{Item, StrftimeItems};
            let items: Vec<Item> = StrftimeItems::new(&fmt).collect();
            if items.iter().any(|i| matches!(i, Item::Error)) {
                return Err(Error::new(ErrorKind::InvalidOperation, format!("strftime_now: bad format {fmt:?}")));
            }
            Ok(now.format_with_items(items.into_iter()).to_string())
        });
        let name = template_name(source);
        env.add_template_owned(TEMPLATE, strip_generation_tags(source))
            .map_err(|e| anyhow!("the chat template ({name}) does not compile: {e:#}"))?;
        Ok(ChatTemplate { env, name, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    /// The tokenizer's own template (None when the model has none).
    pub fn for_tokenizer(tok: &TextTokenizer) -> Result<Option<Self>> {
        let Some(source) = &tok.chat_template else { return Ok(None) };
        let text = |ids: &[u32]| ids.iter().filter_map(|&i| tok.inner.id_to_token(i)).collect::<String>();
        let bos = tok.bos_token.clone().unwrap_or_else(|| text(&tok.prefix));
        Self::new(source, &bos, &text(&[tok.eos_id])).map(Some)
    }

    /// Names the template in messages: its first characters.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The conversation rendered as transformers would (`tools` as the template variable of that name).
    pub fn render(&self, messages: &[Value], tools: Option<&Value>, prompt: GenerationPrompt) -> Result<String> {
        let tmpl = self.env.get_template(TEMPLATE).map_err(|e| anyhow!("{e}"))?;
        let ctx = minijinja::context! {
            messages => Value::from(messages.to_vec()),
            add_generation_prompt => prompt == GenerationPrompt::Add,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => tools.cloned().unwrap_or(Value::from(())),
            documents => Value::from(()),
        };
        tmpl.render(ctx).map_err(|e| {
            let mut msg = format!("the chat template ({}) failed: {e}", self.name);
            if let Some(detail) = e.detail() {
                msg.push_str(&format!(" ({detail})"));
            }
            anyhow!(msg)
        })
    }
}

fn template_name(source: &str) -> String {
    let flat: String = source.chars().map(|c| if c.is_whitespace() { ' ' } else { c }).collect();
    let short: String = flat.chars().take(60).collect();
    if short.len() < flat.len() { format!("template starting `{short}…`") } else { format!("template `{short}`") }
}

/// Turns transformers' `{% generation %}` / `{% endgeneration %}` into `{% if true %}` / `{% endif %}`,
/// keeping whitespace control markers (`-`, `+`), so the body renders with exactly Jinja2's whitespace.
pub fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let replaced = (|| {
            let inner = &rest[2..];
            let (open, inner) = match inner.chars().next() {
                Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
                _ => (String::new(), inner),
            };
            let inner = inner.trim_start();
            let (word, inner) = if let Some(r) = inner.strip_prefix("endgeneration") {
                ("endif", r)
            } else if let Some(r) = inner.strip_prefix("generation") {
                ("if true", r)
            } else {
                return None;
            };
            let inner = inner.trim_start();
            let (close, inner) = match inner.chars().next() {
                Some(c @ ('-' | '+')) if inner[1..].starts_with("%}") => (c.to_string(), &inner[1..]),
                _ => (String::new(), inner),
            };
            let after = inner.strip_prefix("%}")?;
            Some((format!("{{%{open} {word} {close}%}}"), source.len() - after.len()))
        })();
        match replaced {
            Some((tag, end)) => {
                out.push_str(&tag);
                rest = &source[end..];
            }
            None => {
                out.push_str("{%");
                rest = &rest[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Python's `json.dumps(x, ensure_ascii, indent, separators, sort_keys)`, transformers' `tojson`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            // Python would print any width; beyond this a template is broken, not formatting.
            (Some(n), _) if n <= 64 => Some(" ".repeat(n.max(0) as usize)),
            (Some(n), _) => {
                return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: indent {n} is over 64")));
            }
            (_, Some(s)) => Some(s.to_string()),
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an int or a string")),
        },
    };
    let (item_sep, key_sep) = match separators.filter(|s| !s.is_none()) {
        Some(s) => {
            let a = s.get_item_by_index(0)?;
            let b = s.get_item_by_index(1)?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")),
            }
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    py_json(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn py_json(v: &Value, o: &JsonOpts, level: usize, out: &mut String) -> Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float(f));
            }
        }
        ValueKind::String | ValueKind::Bytes => py_string(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                py_json(item, o, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                match k.as_str() {
                    Some(s) => py_string(s, o.ensure_ascii, out),
                    None => py_string(&k.to_string(), o.ensure_ascii, out),
                }
                out.push_str(&o.key_sep);
                py_json(&v.get_item(k)?, o, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => py_string(&v.to_string(), o.ensure_ascii, out),
    }
    Ok(())
}

fn py_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` as `json.dumps` writes it: shortest round-trip digits, exponent form below 1e-4 and
/// from 1e16 on.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let sci = format!("{f:e}"); // e.g. "-1.25e-5"
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let s = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// A rendered, tokenized conversation: ids, which are targets, and where the last assistant turn starts.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTokens {
    pub ids: Vec<u32>,
    pub target: Vec<bool>,
    /// Index of the first token of the last assistant turn (its answer, after the template's header).
    pub last_turn_start: usize,
}

/// A piece of a rendered conversation: context (no loss) or an assistant answer (targets).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Segment {
    Context,
    Target,
}

/// Renders `messages` (which end with an assistant turn) prefix by prefix and tokenizes each segment alone;
/// the segments of assistant turns from `messages[context_turns]` on are targets (earlier ones are context
/// text). See the module notes.
pub fn encode_chat(
    tok: &TextTokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    context_turns: usize,
    tools: Option<&Value>,
    special: &HashSet<u32>,
) -> Result<ChatTokens> {
    let values: Vec<Value> = messages.iter().map(|m| m.value.clone()).collect();
    let mut ids = Vec::new();
    let mut target = Vec::new();
    let mut last_turn_start = 0;
    let mut done = String::new(); // the rendering so far, everything of it tokenized
    let push = |text: &str, segment: Segment, ids: &mut Vec<u32>, target: &mut Vec<bool>| -> Result<()> {
        let t = tok.encode_after(text, ids.last().copied())?;
        target.extend(std::iter::repeat_n(segment == Segment::Target, t.len()));
        ids.extend(t);
        Ok(())
    };
    let not_prefix = |shorter: &str, longer: &str, what: &str| -> anyhow::Error {
        let at = shorter
            .char_indices()
            .zip(longer.chars())
            .find(|((_, a), b)| a != b)
            .map_or(shorter.len().min(longer.len()), |((i, _), _)| i);
        let show = |s: &str| format!("{:?}", s.get(at..).unwrap_or("").chars().take(40).collect::<String>());
        anyhow!(
            "the chat template ({}) is not prefix-stable: {what} (they differ at character {at}: {} vs {}); \
             condlm marks the assistant tokens by rendering the conversation turn by turn, so it needs a \
             template whose earlier renderings are prefixes of later ones",
            template.name(),
            show(shorter),
            show(longer)
        )
    };
    for (k, m) in messages.iter().enumerate() {
        if m.role != Role::Assistant || k < context_turns {
            continue;
        }
        let before = template.render(&values[..k], tools, GenerationPrompt::Add)?;
        let after = template.render(&values[..=k], tools, GenerationPrompt::Omit)?;
        if !before.starts_with(&done) {
            return Err(not_prefix(
                &done,
                &before,
                &format!(
                    "the rendering of messages[..{k}] with add_generation_prompt=true does not start with the \
                     rendering of the conversation up to the previous assistant turn"
                ),
            ));
        }
        if !after.starts_with(&before) {
            return Err(not_prefix(
                &before,
                &after,
                &format!(
                    "the rendering of messages[..{k}] with add_generation_prompt=true is not a prefix of the \
                     rendering of messages[..={k}]"
                ),
            ));
        }
        push(&before[done.len()..], Segment::Context, &mut ids, &mut target)?;
        let answer = &after[before.len()..];
        let body = answer.trim_end();
        last_turn_start = ids.len();
        push(body, Segment::Target, &mut ids, &mut target)?;
        let is_last = k + 1 == messages.len();
        if is_last && !ids.last().is_some_and(|t| special.contains(t) || *t == tok.eos_id) {
            // No end-of-turn marker from the template: EOS teaches the model to stop.
            ids.push(tok.eos_id);
            target.push(true);
            break;
        }
        push(&answer[body.len()..], Segment::Context, &mut ids, &mut target)?;
        done = after;
    }
    if target.iter().all(|t| !t) {
        bail!("the chat template ({}) rendered no assistant text", template.name());
    }
    Ok(ChatTokens { ids, target, last_turn_start })
}

/// Ids of the tokenizer's special added tokens (the end-of-turn markers templates write).
pub fn special_ids(tok: &TextTokenizer) -> HashSet<u32> {
    tok.inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_floats() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1.5e-4, "0.00015"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (1.2345e22, "1.2345e+22"),
        ] {
            assert_eq!(py_float(f), want, "{f}");
        }
    }

    #[test]
    fn an_endless_template_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[], None, GenerationPrompt::Add).unwrap_err();
        assert!(format!("{err:#}").contains("fuel"), "{err:#}");
    }

    #[test]
    fn a_huge_tojson_indent_is_an_error() {
        let t = ChatTemplate::new("{{ messages|tojson(indent=100000000000) }}", "", "").unwrap();
        let err = t.render(&[], None, GenerationPrompt::Add).unwrap_err();
        assert!(format!("{err:#}").contains("indent 100000000000 is over 64"), "{err:#}");
    }

    #[test]
    fn generation_tags_become_ifs() {
        assert_eq!(strip_generation_tags("a{% generation %}b{%- endgeneration -%}c"), "a{% if true %}b{%- endif -%}c");
        assert_eq!(strip_generation_tags("{%generation%}{% if x %}"), "{% if true %}{% if x %}");
        assert_eq!(strip_generation_tags("{% generations %}"), "{% generations %}");
    }

    #[test]
    fn tojson_is_pythons() {
        let t = ChatTemplate::new(
            "{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ x|tojson(separators=(',', ':'), sort_keys=true) }}",
            "",
            "",
        )
        .unwrap();
        let env = &t.env;
        let x: Value = serde_json::from_str(r#"{"b": [1, 2.5, "é<\n"], "a": {}, "c": null, "d": true}"#).unwrap();
        let out = env.get_template(TEMPLATE).unwrap().render(minijinja::context! { x }).unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, 2.5, \"é<\\n\"], \"a\": {}, \"c\": null, \"d\": true}|{\n  \"b\": [\n    1,\n    2.5,\n    \
             \"é<\\n\"\n  ],\n  \"a\": {},\n  \"c\": null,\n  \"d\": true\n}|{\"a\":{},\"b\":[1,2.5,\"é<\\n\"],\"c\":null,\"d\":true}"
        );
    }

    #[test]
    fn hf_helpers() {
        let t = ChatTemplate::new(
            "{{ '  a b '.strip().split(' ')|length }}{% if 'xy'.startswith('x') %}S{% endif %}\
             {{ strftime_now('%Y')|length }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}\
             {{ m.content }}{% endfor %}{{ raise_exception('boom') if add_generation_prompt }}",
            "",
            "",
        )
        .unwrap();
        let msgs = vec![Value::from_pairs([("content", "one")]), Value::from_pairs([("content", "two")])];
        assert_eq!(t.render(&msgs, None, GenerationPrompt::Omit).unwrap(), "2S4one");
        let e = t.render(&msgs, None, GenerationPrompt::Add).unwrap_err().to_string();
        assert!(e.contains("boom"), "{e}");
    }
}
