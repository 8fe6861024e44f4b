//! An Ollama `Modelfile` for an exported GGUF (`ollama create NAME -f Modelfile`): FROM the file next to it,
//! a TEMPLATE and the stop tokens.
//!
//! Ollama's templates are Go templates, not Jinja. A ChatML template (`<|im_start|>role … <|im_end|>`, used by
//! SmolLM2 and Qwen2) is written out as its Go twin; any other chat template is left to Ollama, which
//! recognises the common ones in the GGUF's `tokenizer.chat_template`; a model without a chat template gets
//! the raw prompt (`{{ .Prompt }}`), which is what condlm trained it on for prompt/completion rows.

/// ChatML as a Go template over Ollama's messages, ending with the assistant turn to complete.
const CHATML: &str =
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";

/// The Modelfile text for `gguf_file` (a name relative to the Modelfile's folder).
pub fn modelfile(gguf_file: &str, chat_template: Option<&str>, eos_token: &str) -> String {
    let mut out =
        format!("# Ollama Modelfile written by condlm: ollama create NAME -f Modelfile\nFROM ./{gguf_file}\n");
    let mut stops = vec![eos_token.to_string()];
    match chat_template {
        Some(t) if t.contains("<|im_start|>") && t.contains("<|im_end|>") => {
            out.push_str(&format!("TEMPLATE \"\"\"{CHATML}\"\"\"\n"));
            stops.push("<|im_end|>".into());
        }
        Some(_) => out.push_str("# TEMPLATE: Ollama takes the chat template from the GGUF's tokenizer.chat_template\n"),
        None => out.push_str(
            "# the model has no chat template: prompts go in as they are, as in prompt/completion training\n\
             TEMPLATE \"\"\"{{ .Prompt }}\"\"\"\n",
        ),
    }
    stops.dedup();
    for s in stops {
        out.push_str(&format!("PARAMETER stop {}\n", serde_json::Value::String(s)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_becomes_a_go_template() {
        let m = modelfile("m.gguf", Some("{{'<|im_start|>' + role}}...<|im_end|>"), "<|im_end|>");
        assert!(m.contains("FROM ./m.gguf\n"), "{m}");
        assert!(m.contains("TEMPLATE \"\"\"{{- range .Messages }}<|im_start|>{{ .Role }}\n"), "{m}");
        assert_eq!(m.matches("PARAMETER stop \"<|im_end|>\"").count(), 1, "{m}");
    }

    #[test]
    fn no_template_means_raw_prompts_and_eos_stops() {
        let m = modelfile("m.gguf", None, "</s>");
        assert!(m.contains("TEMPLATE \"\"\"{{ .Prompt }}\"\"\""), "{m}");
        assert!(m.contains("PARAMETER stop \"</s>\""), "{m}");
        let m = modelfile("m.gguf", Some("{% for m in messages %}[INST]{% endfor %}"), "</s>");
        assert!(!m.contains("TEMPLATE \"\"\"") && m.contains("tokenizer.chat_template"), "{m}");
    }
}
