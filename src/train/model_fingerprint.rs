//! A resumed run must continue on the base model it started from: an adapter's steps, or a full fine-tune's
//! moments, mean nothing on other weights or another tokenizer. Each checkpoint records the model's
//! [`model_fingerprint`](crate::formats::fingerprint::model_fingerprint), and a resume compares it.
use anyhow::{Result, bail};
use std::path::Path;

/// Refuses a resume on another model than the run started from (`then`: the checkpoint's record; None for
/// checkpoints written before condlm recorded it).
pub fn check_same_model(model: &Path, then: Option<&str>, now: &str) -> Result<()> {
    match then {
        Some(then) if then != now => bail!(
            "the base model changed since this run started: {} is not the model the checkpoint was trained on \
             (its config, tokenizer or weights differ). Resume with the model the run started from, or start a new \
             run on this one",
            model.display()
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recorded_other_model_is_refused() {
        let m = Path::new("/models/m.gguf");
        assert!(check_same_model(m, Some("a"), "a").is_ok());
        assert!(check_same_model(m, None, "b").is_ok());
        let err = check_same_model(m, Some("a"), "b").unwrap_err().to_string();
        assert!(err.contains("m.gguf") && err.contains("base model changed"), "{err}");
    }
}
