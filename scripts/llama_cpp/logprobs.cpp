// condlm-logprobs: llama.cpp's log-probabilities of the y tokens of rows that `condlm score --per-token` wrote,
// so scripts/gguf_agreement.py can compare condlm, llama.cpp and transformers on the same token ids.
//
//   condlm-logprobs --model M.gguf [--lora ADAPTER.gguf] --rows SCORES.jsonl --out OUT.jsonl [--threads 2]
//                   [--llama-defaults]
//   condlm-logprobs --model M.gguf --tokenize PAIRS.jsonl --out IDS.jsonl
//
// Each input line needs "ids" (the row's token ids, x then y then EOS) and "y_start" (where y starts); other fields
// are ignored. Each output line is {"row": i, "token_logprobs": [...]}: for t in y_start..len(ids), the natural-log
// probability of ids[t] given ids[..t] (log-softmax in double precision), the same positions condlm's
// "token_logprobs" covers. Every row is one sequence decoded in one batch (logits only where a y token is
// predicted), and the memory is cleared between rows, so rows never see each other.
// With --tokenize, each {"prompt", "completion"} line becomes {"row": i, "ids": [...]}: llama.cpp's tokenizer from
// the GGUF's metadata on x (with the special tokens the vocab adds, e.g. BOS) then y (without), then EOS: the ids
// condlm builds for the row, so the script can check that llama.cpp tokenizes like condlm.
// Attention is exact by default: no flash attention and an F32 KV cache, because llama.cpp's CPU flash attention
// and its default F16 cache round attention to 16 bits (measured: 1.3e-3 mean, 1.9e-2 max |Δ log-prob| on an F32
// SmolLM2 against 4e-6 / 4e-5 without), so the comparison measures the weights and the matmuls. --llama-defaults
// keeps llama.cpp's own context defaults (flash attention auto, F16 KV cache): what llama-cli / Ollama run.
// A LoRA adapter is applied with scale 1.0 through llama.cpp's adapter API.
#include "llama.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

using json = nlohmann::json;

namespace {

[[noreturn]] void die(const std::string & msg) {
    fprintf(stderr, "condlm-logprobs: %s\n", msg.c_str());
    exit(1);
}

struct Row {
    std::vector<llama_token> ids;
    size_t y_start;
};

// Reads every row first, so a bad line fails before any model work and the context fits the longest row.
std::vector<Row> read_rows(const std::string & path, int32_t n_vocab) {
    std::ifstream in(path);
    if (!in) {
        die("cannot open --rows " + path);
    }
    std::vector<Row> rows;
    std::string line;
    for (size_t lineno = 1; std::getline(in, line); lineno++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            continue;
        }
        const std::string where = path + ":" + std::to_string(lineno);
        json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object()) {
            die(where + ": not a JSON object");
        }
        if (!j.contains("ids") || !j["ids"].is_array() || !j.contains("y_start") ||
            !j["y_start"].is_number_unsigned()) {
            die(where + ": needs \"ids\" and \"y_start\" (write it with condlm score --per-token)");
        }
        Row r;
        for (const auto & v : j["ids"]) {
            if (!v.is_number_unsigned() || v.get<uint64_t>() >= (uint64_t) n_vocab) {
                die(where + ": token id " + v.dump() + " is not in the model's vocabulary of " +
                    std::to_string(n_vocab) + " (was it scored with another model's tokenizer?)");
            }
            r.ids.push_back((llama_token) v.get<uint64_t>());
        }
        r.y_start = j["y_start"].get<size_t>();
        if (r.y_start == 0 || r.y_start >= r.ids.size()) {
            die(where + ": y_start " + std::to_string(r.y_start) + " leaves no context or no y token in " +
                std::to_string(r.ids.size()) + " ids");
        }
        rows.push_back(std::move(r));
    }
    if (rows.empty()) {
        die(path + " has no rows");
    }
    return rows;
}

// log softmax(logits)[target] in double precision.
double log_prob(const float * logits, int32_t n_vocab, llama_token target) {
    double mx = logits[0];
    for (int32_t v = 1; v < n_vocab; v++) {
        mx = std::max(mx, (double) logits[v]);
    }
    double sum = 0.0;
    for (int32_t v = 0; v < n_vocab; v++) {
        sum += std::exp((double) logits[v] - mx);
    }
    return (double) logits[target] - mx - std::log(sum);
}

std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special) {
    // A first call with no room returns minus the number of tokens needed.
    const int32_t n = -llama_tokenize(vocab, text.data(), (int32_t) text.size(), nullptr, 0, add_special, false);
    std::vector<llama_token> ids(std::max(n, 0));
    if (n < 0 || llama_tokenize(vocab, text.data(), (int32_t) text.size(), ids.data(), n, add_special, false) != n) {
        die("llama.cpp could not tokenize \"" + text + "\"");
    }
    return ids;
}

// --tokenize: one line of ids per {"prompt", "completion"} line.
void tokenize_rows(const llama_vocab * vocab, const std::string & path, FILE * out) {
    std::ifstream in(path);
    if (!in) {
        die("cannot open --tokenize " + path);
    }
    std::string line;
    for (size_t lineno = 1, i = 0; std::getline(in, line); lineno++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            continue;
        }
        json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object() || !j.contains("prompt") || !j["prompt"].is_string() ||
            !j.contains("completion") || !j["completion"].is_string()) {
            die(path + ":" + std::to_string(lineno) + ": needs string fields \"prompt\" and \"completion\"");
        }
        std::vector<llama_token> ids = tokenize(vocab, j["prompt"].get<std::string>(), true);
        const std::vector<llama_token> y = tokenize(vocab, j["completion"].get<std::string>(), false);
        ids.insert(ids.end(), y.begin(), y.end());
        ids.push_back(llama_vocab_eos(vocab));
        fputs((json{ { "row", i++ }, { "ids", ids } }.dump() + "\n").c_str(), out);
    }
}

// Written to OUT.partial, renamed by finish() when every row is done: a failed run leaves no OUT.
FILE * open_partial(const std::string & out_path) {
    FILE * out = fopen((out_path + ".partial").c_str(), "w");
    if (!out) {
        die("cannot write " + out_path + ".partial");
    }
    return out;
}

void finish(FILE * out, const std::string & out_path) {
    if (fclose(out) != 0 || std::rename((out_path + ".partial").c_str(), out_path.c_str()) != 0) {
        die("cannot write " + out_path);
    }
}

void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

}  // namespace

int main(int argc, char ** argv) {
    std::string model_path, lora_path, rows_path, tokenize_path, out_path;
    int threads = 2;
    bool llama_defaults = false;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        if (a == "--llama-defaults") {
            llama_defaults = true;
            continue;
        }
        if (i + 1 >= argc) {
            die("missing value after " + a);
        }
        const std::string v = argv[++i];
        if (a == "--model") {
            model_path = v;
        } else if (a == "--lora") {
            lora_path = v;
        } else if (a == "--rows") {
            rows_path = v;
        } else if (a == "--tokenize") {
            tokenize_path = v;
        } else if (a == "--out") {
            out_path = v;
        } else if (a == "--threads") {
            threads = std::atoi(v.c_str());
        } else {
            die("unknown argument " + a +
                " (usage: --model M.gguf [--lora A.gguf] --rows SCORES.jsonl --out OUT.jsonl [--threads 2] [--llama-defaults])");
        }
    }
    if (model_path.empty() || rows_path.empty() == tokenize_path.empty() || out_path.empty() || threads < 1) {
        die("usage: --model M.gguf [--lora A.gguf] --rows SCORES.jsonl --out OUT.jsonl [--threads 2] [--llama-defaults], or "
            "--model M.gguf --tokenize PAIRS.jsonl --out IDS.jsonl");
    }

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = !tokenize_path.empty();
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) {
        die("llama.cpp could not load the model " + model_path);
    }
    if (!tokenize_path.empty()) {
        FILE * out = open_partial(out_path);
        tokenize_rows(llama_model_get_vocab(model), tokenize_path, out);
        finish(out, out_path);
        llama_model_free(model);
        return 0;
    }
    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const std::vector<Row> rows = read_rows(rows_path, n_vocab);

    size_t longest = 0;
    for (const Row & r : rows) {
        longest = std::max(longest, r.ids.size());
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) ((longest + 255) / 256 * 256);
    cp.n_batch = cp.n_ctx;  // a row is one decode call and one physical batch
    cp.n_ubatch = cp.n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    if (!llama_defaults) {
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.type_k = GGML_TYPE_F32;
        cp.type_v = GGML_TYPE_F32;
    }
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        die("llama.cpp could not create a context for " + model_path);
    }
    if (!lora_path.empty()) {
        llama_adapter_lora * adapter = llama_adapter_lora_init(model, lora_path.c_str());
        if (!adapter) {
            die("llama.cpp could not load the LoRA adapter " + lora_path + " for " + model_path);
        }
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx, &adapter, 1, &scale) != 0) {
            die("llama.cpp could not apply the LoRA adapter " + lora_path);
        }
    }

    FILE * out = open_partial(out_path);
    llama_batch batch = llama_batch_init((int32_t) longest, 0, 1);
    for (size_t i = 0; i < rows.size(); i++) {
        const Row & r = rows[i];
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.n_tokens = (int32_t) r.ids.size();
        for (size_t t = 0; t < r.ids.size(); t++) {
            batch.token[t] = r.ids[t];
            batch.pos[t] = (llama_pos) t;
            batch.n_seq_id[t] = 1;
            batch.seq_id[t][0] = 0;
            // Position t predicts token t + 1: logits wherever the next token is a y token.
            batch.logits[t] = t + 1 >= r.y_start && t + 1 < r.ids.size();
        }
        if (llama_decode(ctx, batch) != 0) {
            die("llama_decode failed on row " + std::to_string(i) + " of " + rows_path);
        }
        json lps = json::array();
        for (size_t t = r.y_start; t < r.ids.size(); t++) {
            const float * logits = llama_get_logits_ith(ctx, (int32_t) (t - 1));
            if (!logits) {
                die("no logits at position " + std::to_string(t - 1) + " of row " + std::to_string(i));
            }
            lps.push_back(log_prob(logits, n_vocab, r.ids[t]));
        }
        const std::string line = json{ { "row", i }, { "token_logprobs", lps } }.dump() + "\n";
        fputs(line.c_str(), out);
    }
    llama_batch_free(batch);
    finish(out, out_path);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
