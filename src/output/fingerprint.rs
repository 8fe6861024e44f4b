//! What the rows of a partial output depend on, so that `--resume-output` can tell whether they are the rows
//! this run would write.
//!
//! A [`Fingerprint`] names the command, every flag that changes a result (by its flag name), the identity of the
//! files the results come from (the model, the adapter: `formats::fingerprint::files_identity`) and a hash of each input row
//! ([`row_hash`]). The rows writer (`output/rows.rs`) keeps it beside `FILE.partial` as `FILE.partial.json` and compares it with the
//! resuming run's before any row is kept; [`Fingerprint::differences`] says what differs.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The `format` of the fingerprints this version writes; another one is refused (written by another version).
pub const FORMAT: &str = "condlm partial output 1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// [`FORMAT`].
    pub format: String,
    /// The subcommand: `score`, `generate`.
    pub command: String,
    /// Everything besides the rows that the results depend on, by flag name (`--model`, `--temperature`, …):
    /// a file's identity, a flag's value (as the user would write it), `null` for an absent option.
    pub settings: BTreeMap<String, Value>,
    /// [`row_hash`] of each input row, in input order.
    pub rows: Vec<String>,
}

impl Fingerprint {
    /// A fingerprint of `command` with no settings and no rows yet.
    pub fn new(command: &str) -> Self {
        Fingerprint { format: FORMAT.into(), command: command.into(), settings: BTreeMap::new(), rows: vec![] }
    }

    /// Records setting `flag` (its value as JSON).
    pub fn set(&mut self, flag: &str, value: impl Into<Value>) {
        self.settings.insert(flag.into(), value.into());
    }

    /// How `self` (what the partial was written with) differs from `now` (this run), in command and settings, one
    /// line each (`--seed: 7 then, 0 now`; for a file, which of its parts changed); empty when they agree.
    /// Rows are compared one by one as they are read back, not here.
    pub fn differences(&self, now: &Fingerprint) -> Vec<String> {
        let mut out = vec![];
        if self.command != now.command {
            out.push(format!("written by `condlm {}`, this is `condlm {}`", self.command, now.command));
            return out;
        }
        let keys: std::collections::BTreeSet<&String> = self.settings.keys().chain(now.settings.keys()).collect();
        for k in keys {
            let (then, here) =
                (self.settings.get(k).unwrap_or(&Value::Null), now.settings.get(k).unwrap_or(&Value::Null));
            diff(k, then, here, &mut out);
        }
        out
    }
}

/// Lines naming where `then` and `now` differ, under the name `at`: objects part by part, anything else whole.
fn diff(at: &str, then: &Value, now: &Value, out: &mut Vec<String>) {
    match (then, now) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                diff(&format!("{at} {k}"), x, y, out);
            }
        }
        _ if then != now => out.push(format!("{at}: {} then, {} now", shown(then), shown(now))),
        _ => {}
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("path").and_then(Value::as_str).unwrap_or("given").into(),
        v => v.to_string(),
    }
}

/// SHA-256 of `bytes`, its first 64 bits in hex: enough to tell an edited row from the one a partial holds.
pub fn row_hash(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_changed_setting_and_file() {
        let mut a = Fingerprint::new("generate");
        a.set("--seed", 7);
        a.set("--temperature", "0.8");
        a.set("--model", serde_json::json!({"path": "/m", "files": {"config.json": "sha256 1", "w": "sha256 2"}}));
        a.set("--adapter", Value::Null);
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.set("--seed", 8);
        b.set("--model", serde_json::json!({"path": "/m", "files": {"config.json": "sha256 1", "w": "sha256 3"}}));
        b.set("--adapter", serde_json::json!({"path": "/a", "files": {}}));
        b.set("--top-k", 4);
        let d = a.differences(&b);
        assert_eq!(
            d,
            [
                "--adapter: none then, /a now",
                "--model files w: sha256 2 then, sha256 3 now",
                "--seed: 7 then, 8 now",
                "--top-k: none then, 4 now"
            ]
        );
        b.command = "score".into();
        assert_eq!(a.differences(&b), ["written by `condlm generate`, this is `condlm score`"]);
    }
}
