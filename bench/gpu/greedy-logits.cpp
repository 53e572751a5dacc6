// Greedy decoding with every step's logits kept, for comparing two backends token by token.
//
//   greedy-logits MODEL N_GPU_LAYERS N_PREDICT LOGITS_OUT PROMPT [THREADS]
//
// Evaluates PROMPT (with BOS), then N_PREDICT times takes the argmax of the last logits and feeds it
// back. Prints one line `tokens: t1 t2 ...` to stdout and writes the logits the argmax was taken from
// (N_PREDICT x n_vocab float32, step-major) to LOGITS_OUT. Two runs that agree on the first i tokens
// saw the same context at step i, so their logits there can be compared element by element
// (bench/gpu/check.py does; N_GPU_LAYERS 0 with CUDA_VISIBLE_DEVICES= is the CPU side).
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s MODEL N_GPU_LAYERS N_PREDICT LOGITS_OUT PROMPT [THREADS]\n", argv[0]);
        return 2;
    }
    const char * path = argv[1];
    const int ngl = atoi(argv[2]);
    const int n_predict = atoi(argv[3]);
    const char * out_path = argv[4];
    const std::string prompt = argv[5];
    const int threads = argc > 6 ? atoi(argv[6]) : 4;

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = ngl;
    llama_model * model = llama_model_load_from_file(path, mp);
    if (!model) {
        fprintf(stderr, "greedy-logits: could not load %s\n", path);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    std::vector<llama_token> toks(prompt.size() + 16);
    const int n_prompt = llama_tokenize(vocab, prompt.c_str(), (int) prompt.size(), toks.data(), (int) toks.size(), true, false);
    if (n_prompt <= 0) {
        fprintf(stderr, "greedy-logits: could not tokenize the prompt\n");
        return 1;
    }
    toks.resize(n_prompt);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_predict + 8;
    cp.n_batch = cp.n_ctx;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "greedy-logits: could not create a context\n");
        return 1;
    }

    FILE * out = fopen(out_path, "wb");
    if (!out) {
        fprintf(stderr, "greedy-logits: cannot write %s\n", out_path);
        return 1;
    }
    if (llama_decode(ctx, llama_batch_get_one(toks.data(), n_prompt)) != 0) {
        fprintf(stderr, "greedy-logits: decoding the prompt failed\n");
        return 1;
    }
    printf("tokens:");
    for (int i = 0; i < n_predict; ++i) {
        const float * logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (int t = 1; t < n_vocab; ++t) {
            if (logits[t] > logits[best]) {
                best = t;
            }
        }
        if (fwrite(logits, sizeof(float), n_vocab, out) != (size_t) n_vocab) {
            fprintf(stderr, "greedy-logits: short write to %s\n", out_path);
            return 1;
        }
        printf(" %d", best);
        fflush(stdout);
        if (llama_decode(ctx, llama_batch_get_one(&best, 1)) != 0) {
            fprintf(stderr, "greedy-logits: decoding step %d failed\n", i);
            return 1;
        }
    }
    printf("\n");
    fclose(out);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
