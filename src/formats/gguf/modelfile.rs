//! An Ollama `Modelfile` for an exported GGUF (`ollama create NAME -f Modelfile`): FROM the file next to it,
//! a TEMPLATE and the stop tokens.
//!
//! Ollama's templates are Go templates, not Jinja. The TEMPLATE presents prompts as training did, as far as condlm
//! knows it ([`TrainedOn`], recorded by `condlm train`): a model or adapter trained on prompt/completion rows only
//! gets the raw prompt (`{{ .Prompt }}`) even when its base has a chat template, one trained on Alpaca rows only
//! gets Stanford Alpaca's prompt around the instruction. Otherwise (chats among the rows, or no record: a base model
//! or an adapter made elsewhere) the chat template decides: a ChatML template (`<|im_start|>role … <|im_end|>`, used
//! by SmolLM2 and Qwen2) is written out as its Go twin; any other chat template is left to Ollama, which recognises
//! the common ones in the GGUF's `tokenizer.chat_template`; a model without a chat template gets the raw prompt.
use crate::formats::trained_on::TrainedOn;

/// ChatML as a Go template over Ollama's messages, ending with the assistant turn to complete.
const CHATML: &str =
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";

const RAW: &str = "{{ .Prompt }}";

/// The Modelfile text for `gguf_file` (a name relative to the Modelfile's folder); `alpaca_prompt` is the prompt of
/// Alpaca rows without input, `{instruction}` where the instruction goes (`data::records`); `default_system` the
/// system message the chat template writes into a conversation that has none (SmolLM2's), which the Go twin of a
/// ChatML template gets as the Modelfile's SYSTEM (Ollama adds it to a conversation without one).
pub fn modelfile(
    gguf_file: &str,
    chat_template: Option<&str>,
    default_system: Option<&str>,
    eos_token: &str,
    trained_on: Option<TrainedOn>,
    alpaca_prompt: &str,
) -> String {
    let mut out =
        format!("# Ollama Modelfile written by condlm: ollama create NAME -f Modelfile\nFROM ./{gguf_file}\n");
    let mut stops = vec![eos_token.to_string()];
    let template = |comment: &str, go: &str| format!("# {comment}\nTEMPLATE \"\"\"{go}\"\"\"\n");
    match (trained_on, chat_template) {
        (Some(t), _) if !t.chats && t.alpaca && !t.pairs => out.push_str(&template(
            "trained on Alpaca rows: the prompt is the instruction, in Stanford Alpaca's template",
            &alpaca_prompt.replace("{instruction}", RAW),
        )),
        (Some(t), Some(_)) if !t.chats => out.push_str(&template(
            &format!("trained on {} rows, not chats: prompts go in as they are", t.names().join(" and ")),
            RAW,
        )),
        (_, Some(t)) if t.contains("<|im_start|>") && t.contains("<|im_end|>") => {
            out.push_str(&format!("TEMPLATE \"\"\"{CHATML}\"\"\"\n"));
            if let Some(system) = default_system {
                out.push_str("# the chat template's system message for a conversation that brings none\n");
                out.push_str(&format!("SYSTEM \"\"\"{system}\"\"\"\n"));
            }
            stops.push("<|im_end|>".into());
        }
        (_, Some(_)) => {
            out.push_str("# TEMPLATE: Ollama takes the chat template from the GGUF's tokenizer.chat_template\n")
        }
        (_, None) => out.push_str(&template(
            "the model has no chat template: prompts go in as they are, as in prompt/completion training",
            RAW,
        )),
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

    const CHATML_JINJA: &str = "{{'<|im_start|>' + role}}...<|im_end|>";
    const ALPACA: &str = "Below is an instruction.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

    #[test]
    fn chatml_becomes_a_go_template() {
        let m = modelfile("m.gguf", Some(CHATML_JINJA), None, "<|im_end|>", None, ALPACA);
        assert!(m.contains("FROM ./m.gguf\n"), "{m}");
        assert!(m.contains("TEMPLATE \"\"\"{{- range .Messages }}<|im_start|>{{ .Role }}\n"), "{m}");
        assert_eq!(m.matches("PARAMETER stop \"<|im_end|>\"").count(), 1, "{m}");
        assert!(!m.contains("SYSTEM"), "{m}");
        let m = modelfile("m.gguf", Some(CHATML_JINJA), Some("You are SmolLM."), "<|im_end|>", None, ALPACA);
        assert!(m.contains("SYSTEM \"\"\"You are SmolLM.\"\"\"\n"), "{m}");
    }

    #[test]
    fn no_template_means_raw_prompts_and_eos_stops() {
        let m = modelfile("m.gguf", None, None, "</s>", None, ALPACA);
        assert!(m.contains("TEMPLATE \"\"\"{{ .Prompt }}\"\"\""), "{m}");
        assert!(m.contains("PARAMETER stop \"</s>\""), "{m}");
        let m = modelfile("m.gguf", Some("{% for m in messages %}[INST]{% endfor %}"), None, "</s>", None, ALPACA);
        assert!(!m.contains("TEMPLATE \"\"\"") && m.contains("tokenizer.chat_template"), "{m}");
    }

    #[test]
    fn the_template_follows_what_training_saw() {
        let on = |pairs, alpaca, chats| Some(TrainedOn { pairs, alpaca, chats, ..Default::default() });
        // An adapter of a ChatML model trained on prompt/completion rows: raw prompts, EOS stops.
        let m = modelfile("m.gguf", Some(CHATML_JINJA), None, "<|im_end|>", on(true, false, false), ALPACA);
        assert!(m.contains("TEMPLATE \"\"\"{{ .Prompt }}\"\"\"") && m.contains("prompt/completion rows"), "{m}");
        assert!(!m.contains("range .Messages"), "{m}");
        let m = modelfile("m.gguf", Some(CHATML_JINJA), None, "<|endoftext|>", on(false, true, false), ALPACA);
        assert!(m.contains("### Instruction:\n{{ .Prompt }}\n\n### Response:\n\"\"\""), "{m}");
        assert!(m.contains("PARAMETER stop \"<|endoftext|>\"") && !m.contains("<|im_end|>"), "{m}");
        // Chats among the rows: the chat template.
        let m = modelfile("m.gguf", Some(CHATML_JINJA), None, "<|im_end|>", on(true, false, true), ALPACA);
        assert!(m.contains("range .Messages"), "{m}");
    }
}
