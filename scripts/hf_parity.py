#!/usr/bin/env python3
"""Reference dumps from Hugging Face transformers for kiln's HF import/export parity tests.

`make` builds small seeded random models (Llama with GQA, Llama-3.1 `llama3` RoPE scaling with tied
embeddings, Llama with an explicit head_dim, Mistral), saves each as a float32 HF directory
DIR/<case>/hf, and writes for a fixed batch (B=2, T=16) DIR/<case>/batch.json
({"input_ids": [[..]], "targets": [[..]]}) and DIR/<case>/reference.safetensors (float32):
`logits` [B,T,V], `loss` [1] = mean cross-entropy of logits vs targets over all B*T positions
(no shift; kiln's convention), and `grad.<name>` for every entry of model.named_parameters()
(tied models list only model.embed_tokens.weight; its grad includes the lm_head part).
DIR/cases.json lists the cases. Each case also gets DIR/<case>/generate.json: {"prompts": [[..]],
"generated": [[..]], "min_margin": x} — GEN_NEW greedy tokens from `model.generate` (KV cache, no
EOS) after prompts of different lengths, and the smallest gap between the top two logits over all
steps (how close the references came to a tie).

`check-export` loads DIR/<case>/export (a directory kiln wrote) with transformers for every case
that has one, fails on missing/unexpected keys, and compares its logits on the case's batch with
the reference: relative L2 error <= 1e-4 for float32 safetensors, <= 2e-2 for bf16/f16.

  scripts/setup-hf-venv.sh /tmp/hf-venv
  /tmp/hf-venv/bin/python scripts/hf_parity.py make --out DIR
  /tmp/hf-venv/bin/python scripts/hf_parity.py check-export --dir DIR
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

B, T = 2, 16
GEN_LENGTHS, GEN_NEW = [1, 3, 5, 8, 11, 12], 16  # prompt + new <= 28 < the Mistral case's window of 32
COMMON = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, intermediate_size=96,
              max_position_embeddings=64, initializer_range=0.1, rms_norm_eps=1e-5,
              attn_implementation="eager")
# With head_dim 16 and theta 5e5 the RoPE wavelengths are 2*pi*5e5^(i/8) = 6.3, 32, 167, ...; an original
# length of 64 puts them in all three llama3 regions: kept (< 64/4), smoothed (16..64), divided by 8 (> 64).
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
CASES = {
    "llama_gqa_untied": (LlamaConfig, LlamaForCausalLM, dict(
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False)),
    "llama3_rope_tied": (LlamaConfig, LlamaForCausalLM, dict(
        num_attention_heads=4, num_key_value_heads=1, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING,
        tie_word_embeddings=True, max_position_embeddings=128)),
    "llama_head_dim": (LlamaConfig, LlamaForCausalLM, dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0, tie_word_embeddings=False)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(
        num_attention_heads=4, num_key_value_heads=2, sliding_window=32, rope_theta=10000.0,
        tie_word_embeddings=False)),
    # Biases on every projection (attention_bias: q, k, v, o; mlp_bias: gate, up, down).
    "llama_bias": (LlamaConfig, LlamaForCausalLM, dict(
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False,
        attention_bias=True, mlp_bias=True)),
    # A sliding window of 6 keys: the forward batch stays within it (T_WINDOW), generation goes
    # far past it (prompts up to 12 tokens, then 16 new), so the KV cache must apply it.
    "mistral_window": (MistralConfig, MistralForCausalLM, dict(
        num_attention_heads=4, num_key_value_heads=2, sliding_window=6, rope_theta=10000.0,
        tie_word_embeddings=False)),
}
T_WINDOW = 6  # the forward/backward batch's length for the sliding-window case


def make(out):
    os.makedirs(out, exist_ok=True)
    for seed, (case, (cfg_cls, model_cls, kw)) in enumerate(CASES.items()):
        torch.manual_seed(1000 + seed)
        cfg = cfg_cls(**{**COMMON, **kw})
        model = model_cls(cfg).float()
        with torch.no_grad():  # norm weights init to 1 and biases to 0; perturb them so a missing
            for name, p in model.named_parameters():  # or misplaced one shows
                if name.endswith("norm.weight"):
                    p.add_(0.2 * torch.randn_like(p))
                elif name.endswith(".bias"):
                    p.add_(0.5 * torch.randn_like(p))
        if case == "llama3_rope_tied":  # the scaling must actually change frequencies at this size
            plain = model_cls(cfg_cls(**{**COMMON, **kw, "rope_scaling": None})).model.rotary_emb.inv_freq
            ratio = (plain / model.model.rotary_emb.inv_freq).tolist()
            kept, divided = sum(abs(r - 1) < 1e-6 for r in ratio), sum(abs(r - 8) < 1e-5 for r in ratio)
            assert kept and divided and kept + divided < len(ratio), f"llama3 regions not all exercised: {ratio}"
            print(f"  {case}: llama3 scaling keeps {kept}, smooths {len(ratio) - kept - divided}, "
                  f"divides by 8 {divided} of {len(ratio)} inv_freq entries")
        d = os.path.join(out, case)
        model.save_pretrained(os.path.join(d, "hf"), safe_serialization=True)

        g = torch.Generator().manual_seed(2000 + seed)
        t = T_WINDOW if case == "mistral_window" else T
        ids = torch.randint(0, cfg.vocab_size, (B, t), generator=g)
        tgt = torch.randint(0, cfg.vocab_size, (B, t), generator=g)
        model.train()  # dropout is 0 in these configs; train() only enables grads bookkeeping
        logits = model(ids).logits
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), tgt.reshape(-1))
        loss.backward()
        ref = {"logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1)}
        ref.update({f"grad.{n}": p.grad.contiguous() for n, p in model.named_parameters()})
        save_file(ref, os.path.join(d, "reference.safetensors"))
        with open(os.path.join(d, "batch.json"), "w") as f:
            json.dump({"input_ids": ids.tolist(), "targets": tgt.tolist()}, f)
        write_generation(model, cfg, d, seed)
        print(f"{case}: logits [{logits.min().item():.3f}, {logits.max().item():.3f}] std "
              f"{logits.std().item():.3f}  loss {loss.item():.6f} (uniform {torch.log(torch.tensor(cfg.vocab_size * 1.0)).item():.3f})"
              f"  {len(ref) - 2} grads")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(list(CASES), f)


def write_generation(model, cfg, d, seed):
    """Greedy continuations with transformers' generate (its KV cache), EOS disabled."""
    # generate() asks whether the model is FSDP-wrapped by importing torch.distributed.fsdp, which
    # fails on Debian's torch 1.13 under Python 3.11 (a dataclass with a mutable default); these
    # models are not, so answer directly.
    import transformers.generation.utils as gen_utils
    gen_utils.is_fsdp_managed_module = lambda module: False
    g = torch.Generator().manual_seed(3000 + seed)
    model.eval()
    model.generation_config.eos_token_id = None
    prompts, generated, margin = [], [], float("inf")
    with torch.no_grad():
        for n in GEN_LENGTHS:
            ids = torch.randint(0, cfg.vocab_size, (1, n), generator=g)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GEN_NEW,
                                 do_sample=False, pad_token_id=0, output_scores=True,
                                 return_dict_in_generate=True)
            prompts.append(ids[0].tolist())
            generated.append(out.sequences[0, n:].tolist())
            for s in out.scores:
                top = torch.topk(s[0].float(), 2).values
                margin = min(margin, (top[0] - top[1]).item())
    with open(os.path.join(d, "generate.json"), "w") as f:
        json.dump({"prompts": prompts, "generated": generated, "min_margin": margin}, f)


def export_dtypes(path):
    dtypes = set()
    for name in os.listdir(path):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(path, name), "pt") as f:
                dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return dtypes


def check_export(dir_):
    with open(os.path.join(dir_, "cases.json")) as f:
        cases = json.load(f)
    checked = 0
    for case in cases:
        path = os.path.join(dir_, case, "export")
        if not os.path.isdir(path):
            print(f"{case}: no export/, skipped")
            continue
        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                path, torch_dtype=torch.float32, output_loading_info=True, attn_implementation="eager")
        except Exception as e:
            sys.exit(f"FAIL {case}: transformers could not load {path}: {type(e).__name__}: {e}")
        # transformers already drops lm_head.weight from missing_keys when the config says tied.
        if info["missing_keys"] or info["unexpected_keys"]:
            sys.exit(f"FAIL {case}: missing keys {info['missing_keys']} unexpected keys {info['unexpected_keys']}")
        dtypes = export_dtypes(path)
        tol = 1e-4 if dtypes <= {"F32"} else 2e-2
        with open(os.path.join(dir_, case, "batch.json")) as f:
            ids = torch.tensor(json.load(f)["input_ids"])
        ref = load_file(os.path.join(dir_, case, "reference.safetensors"))["logits"]
        with torch.no_grad():
            logits = model.eval()(ids).logits.float()
        if logits.shape != ref.shape:
            sys.exit(f"FAIL {case}: logits shape {tuple(logits.shape)} != reference {tuple(ref.shape)}")
        err = ((logits - ref).norm() / ref.norm()).item()
        line = f"{case}: export dtypes {sorted(dtypes)} logits rel err {err:.3e} (tol {tol:g})"
        if not err <= tol:
            sys.exit(f"FAIL {line}")
        print(f"ok {line}")
        checked += 1
    print(f"{checked}/{len(cases)} exports checked")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make").add_argument("--out", required=True)
    sub.add_parser("check-export").add_argument("--dir", required=True)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    make(a.out) if a.cmd == "make" else check_export(a.dir)


if __name__ == "__main__":
    main()
