//! Incremental detokenization and stop strings.
//!
//! Tokens do not map to whole characters: byte-level BPE splits a multi-byte UTF-8 character across tokens,
//! and SentencePiece-style decoders drop or add spaces depending on what comes before. [`Streamer`] therefore
//! decodes a sliding window (the scheme of text-generation-inference): the text of the tokens since the last
//! emitted piece, minus the text of the same window without the newest tokens. Text is emitted only once it no
//! longer ends in an incomplete character (U+FFFD from a partial byte sequence).
//!
//! Stop strings are searched in the accumulated text; text is held back while its end could still be the start
//! of a stop string, so streamed output never shows a stop string (or a piece of one that then completes).
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, bail};

/// Decodes generated tokens one at a time into text, watching for stop strings.
pub struct Streamer<'t> {
    tok: &'t TextTokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// Everything decoded so far.
    text: String,
    /// Bytes of `text` already handed out by [`Streamer::printable`].
    printed: usize,
    /// Bytes of `text` already searched for stop strings (minus the overlap a stop string may span).
    searched: usize,
    stop: &'t [String],
    /// Byte offset in `text` where the first stop string starts, once one is found.
    stopped_at: Option<usize>,
}

impl<'t> Streamer<'t> {
    pub fn new(tok: &'t TextTokenizer, stop_strings: &'t [String]) -> Self {
        Streamer {
            tok,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            printed: 0,
            searched: 0,
            stop: stop_strings,
            stopped_at: None,
        }
    }

    /// Adds one token; returns true when the text now contains a stop string.
    pub fn push(&mut self, id: u32) -> Result<bool> {
        self.ids.push(id);
        let prefix = self.tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.tok.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && let Some(new) = full.strip_prefix(prefix.as_str())
        {
            self.text.push_str(new);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        Ok(self.search())
    }

    /// Decodes whatever is still pending (e.g. a final incomplete character, shown as U+FFFD).
    pub fn flush(&mut self) -> Result<bool> {
        if self.read_offset < self.ids.len() {
            let prefix = self.tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
            let full = self.tok.decode(&self.ids[self.prefix_offset..])?;
            match full.strip_prefix(prefix.as_str()) {
                Some(new) => self.text.push_str(new),
                None => {
                    // The window re-decoded differently: fall back to decoding everything.
                    self.text = self.tok.decode(&self.ids)?;
                    self.printed = self.printed.min(self.text.len());
                    while !self.text.is_char_boundary(self.printed) {
                        self.printed -= 1;
                    }
                    self.searched = 0;
                }
            }
            self.prefix_offset = self.ids.len();
            self.read_offset = self.ids.len();
        }
        Ok(self.search())
    }

    fn search(&mut self) -> bool {
        if self.stopped_at.is_some() {
            return true;
        }
        if self.stop.is_empty() {
            return false;
        }
        let mut from = self.searched;
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stopped_at = self.stop.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|p| p + from)).min();
        let longest = self.stop.iter().map(|s| s.len()).max().unwrap_or(1);
        self.searched = (self.text.len() + 1).saturating_sub(longest);
        self.stopped_at.is_some()
    }

    /// The text so far: cut before the stop string once one was found.
    pub fn text(&self) -> &str {
        &self.text[..self.stopped_at.unwrap_or(self.text.len())]
    }

    pub fn stopped(&self) -> bool {
        self.stopped_at.is_some()
    }

    /// Text that is final and not yet handed out. While no stop string was found, a tail that could be the
    /// beginning of one is held back; with `all`, everything up to the end (or the stop string) is released.
    pub fn printable(&mut self, all: bool) -> &str {
        let end = match self.stopped_at {
            Some(p) => p,
            None if all => self.text.len(),
            None => self.text.len() - self.held_back(),
        };
        let start = self.printed.min(end);
        self.printed = self.printed.max(end);
        &self.text[start..end]
    }

    /// Length of the longest suffix of the text that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let mut hold = 0;
        for s in self.stop {
            for k in (hold + 1..s.len().min(self.text.len() + 1)).rev() {
                if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    hold = k;
                    break;
                }
            }
        }
        hold
    }
}

/// Checks stop strings: each must be non-empty, and text that the tokenizer can produce — encoding it (after a
/// neutral first character, so no leading-space rule applies) and decoding the ids must give it back. A string
/// with characters the vocabulary cannot represent (they would encode as an unknown token) could never appear
/// in generated text, so it is an error rather than a silent no-op.
pub fn check_stop_strings(tok: &TextTokenizer, stop: &[String]) -> Result<()> {
    for s in stop {
        if s.is_empty() {
            bail!("a stop string is empty: it would match before the first token (give a non-empty --stop)");
        }
        let probe = format!("x{s}");
        let back = tok.decode(&tok.encode(&probe)?)?;
        if !back.contains(s.as_str()) {
            bail!(
                "stop string {s:?} cannot be produced by this model's tokenizer (it decodes back as {back:?}), \
                 so generation could never stop on it"
            );
        }
    }
    Ok(())
}
