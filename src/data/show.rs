//! Showing an encoded row token by token with its label state (what `condlm inspect` prints).
//!
//! Plain text (not a terminal, or `--color never`): tokens are separated by `·`; a marker opens every run of
//! tokens with the same state: `[x]` context (ignored by the loss), `[Y]` target (y, EOS / end-of-turn
//! included). With colour, the markers are replaced by colour: context dimmed, targets green.
//! Token text is the token decoded alone (its leading space kept, also where a SentencePiece decoder strips it),
//! with `\n`, `\r`, `\t` and other control characters escaped; a token that is only part of a UTF-8 character
//! (a byte-level piece or a SentencePiece `<0xC2>`) is shown as its bytes (`\xC2`).
use super::example::Example;
use crate::tokenizer::TextTokenizer;
use anstyle::{AnsiColor, Effects, Style};
use anyhow::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    Plain,
    Color,
}

pub const LEGEND_PLAIN: &str = "[x] context (no loss)   [Y] target (loss)   tokens separated by ·";

const X_STYLE: Style = Style::new().effects(Effects::DIMMED);
const Y_STYLE: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green))).effects(Effects::BOLD);
const SEP_STYLE: Style = Style::new().effects(Effects::DIMMED);

/// The legend line for `paint`.
pub fn legend(paint: Paint) -> String {
    match paint {
        Paint::Plain => LEGEND_PLAIN.to_string(),
        Paint::Color => format!(
            "{X_STYLE}context (no loss){X_STYLE:#}   {Y_STYLE}target (loss){Y_STYLE:#}   tokens separated by \
             {SEP_STYLE}·{SEP_STYLE:#}"
        ),
    }
}

/// One token as readable text: its text after another copy of itself, so a SentencePiece decoder that drops
/// the space at the very start of a text (Llama's "▁Blue" → "Blue") still shows it.
pub fn token_text(tok: &TextTokenizer, id: u32) -> String {
    let once = tok.decode(&[id]).unwrap_or_default();
    let twice = tok.decode(&[id, id]).unwrap_or_default();
    let decoded = twice.strip_prefix(once.as_str()).map_or(once.clone(), str::to_owned);
    if decoded.contains('\u{fffd}')
        && let Some(bytes) =
            tok.inner.id_to_token(id).and_then(|raw| sentencepiece_byte(&raw).or_else(|| byte_level_bytes(&raw)))
    {
        return bytes.iter().map(|b| format!("\\x{b:02X}")).collect();
    }
    if decoded.is_empty() {
        return tok.inner.id_to_token(id).unwrap_or_else(|| format!("<{id}>"));
    }
    let mut out = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The byte of a SentencePiece byte-fallback token (`<0xE2>`), if it is one.
fn sentencepiece_byte(raw: &str) -> Option<Vec<u8>> {
    let hex = raw.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok().map(|b| vec![b]))?
}

/// The bytes a byte-level BPE token spells (GPT-2's `bytes_to_unicode` inverted), if it is one.
fn byte_level_bytes(raw: &str) -> Option<Vec<u8>> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let others: Vec<u32> = (0..256).filter(|&b| !printable(b)).collect();
    raw.chars()
        .map(|c| {
            let c = c as u32;
            if c < 256 && printable(c) {
                Some(c as u8)
            } else if c >= 256 {
                others.get((c - 256) as usize).map(|&b| b as u8)
            } else {
                None
            }
        })
        .collect()
}

/// The example's tokens with their label states, on one line (long rows wrap in the terminal).
pub fn render_example(tok: &TextTokenizer, e: &Example, paint: Paint) -> Result<String> {
    let mut is_target = vec![false; e.ids.len()];
    for r in &e.targets {
        is_target[r.clone()].iter_mut().for_each(|t| *t = true);
    }
    let mut out = String::new();
    let mut state = None;
    for (i, (&id, &t)) in e.ids.iter().zip(&is_target).enumerate() {
        let text = token_text(tok, id);
        match paint {
            Paint::Plain => {
                if state != Some(t) {
                    out.push_str(if t { "[Y]" } else { "[x]" });
                } else if i > 0 {
                    out.push('·');
                }
                out.push_str(&text);
            }
            Paint::Color => {
                if i > 0 {
                    out.push_str(&format!("{SEP_STYLE}·{SEP_STYLE:#}"));
                }
                let style = if t { Y_STYLE } else { X_STYLE };
                out.push_str(&format!("{style}{text}{style:#}"));
            }
        }
        state = Some(t);
    }
    Ok(out)
}
