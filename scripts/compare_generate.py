#!/usr/bin/env python3
"""kiln's batched generation vs transformers' `generate` on the same device, shapes and batches.

Runs `kiln bench generate` (random weights; every sequence gets `--prompt-len` random prompt
tokens and exactly `--new-tokens` new ones), then transformers' `generate` on a randomly
initialised model of the same shape (greedy, the same token counts, min_new_tokens = max so no
sequence stops early), and prints generated tokens/s of both and the ratio.

  scripts/cuda-env.sh python scripts/compare_generate.py --kiln .device/kiln --device cuda     # Mistral-7B shape, bf16
  python scripts/compare_generate.py --kiln target/release/kiln --device cpu --preset tiny --batches 1,4 --prompt-len 64 --new-tokens 16
"""
import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time

import torch

SHAPES = {
    "mistral-7b": dict(arch="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, rope_theta=1e6,
                       max_position_embeddings=32768, tie_word_embeddings=False),
    "llama3-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=5e5,
                      max_position_embeddings=8192, tie_word_embeddings=False),
    "tiny": dict(arch="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, rope_theta=1e4, max_position_embeddings=4096,
                 tie_word_embeddings=True),
}


def torch_model(shape, device):
    import transformers

    s = dict(SHAPES[shape])
    arch = s.pop("arch")
    cfg_cls, model_cls = {
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    }[arch]
    cfg = cfg_cls(**s)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    # torch >= 2 builds the weights on the device directly; older torch (CPU runs only) has no
    # device context manager and builds on the CPU.
    ctx = torch.device(device) if hasattr(torch.device, "__enter__") else contextlib.nullcontext()
    try:
        with ctx:
            model = model_cls(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = None
    if not hasattr(torch.device, "__enter__"):
        # generate() probes torch.distributed.fsdp, which fails to import on Debian's torch 1.13
        # under Python 3.11; the model is not FSDP-wrapped.
        import transformers.generation.utils as gen_utils
        gen_utils.is_fsdp_managed_module = lambda module: False
    return model.eval(), cfg


def torch_tokens_per_s(model, cfg, device, batch, prompt_len, new_tokens):
    g = torch.Generator(device="cpu").manual_seed(batch)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              pad_token_id=0)
    with torch.no_grad():
        model.generate(ids[:, :8], **dict(kw, max_new_tokens=2, min_new_tokens=2, attention_mask=mask[:, :8]))
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    generated = (out.shape[1] - prompt_len) * batch
    return generated / dt, dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--preset", choices=list(SHAPES), default=None)
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=400)
    a = ap.parse_args()
    preset = a.preset or ("mistral-7b" if a.device == "cuda" else "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/gen.json"
        cmd = [a.kiln, "bench", "generate", "--device", a.device, "--preset", preset, "--batches", a.batches,
               "--prompt-len", str(a.prompt_len), "--new-tokens", str(a.new_tokens), "--json", path]
        print("$", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        kiln = json.load(open(path))
    model, cfg = torch_model(preset, a.device)
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    import transformers
    print(f"device: {dev}; torch {torch.__version__}, transformers {transformers.__version__}; kiln: {kiln['backend']}")
    print(f"shape {preset}, random weights; prompt {a.prompt_len} tokens, {a.new_tokens} new tokens per sequence; "
          f"copy ceiling {kiln['copy_gb_s']:.0f} GB/s (kiln-measured)\n")
    print("| batch | kiln tokens/s | transformers tokens/s | kiln / transformers | kiln decode step ms | step ÷ memory bound |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in kiln["rows"]:
        tps, _ = torch_tokens_per_s(model, cfg, a.device, r["batch"], a.prompt_len, a.new_tokens)
        print(f"| {r['batch']} | {r['tokens_per_s']:.1f} | {tps:.1f} | {r['tokens_per_s'] / tps:.2f} | "
              f"{r['decode_step_ms']:.2f} | {r['of_memory_bound']:.2f}× |")


if __name__ == "__main__":
    main()
