#!/usr/bin/env python3
"""Write the real GPT-2 tokenizer as a Hugging Face `tokenizer.json`, for benchmarks.

Source: the GPT-2 files shipped in the `tiktoken-rs` crate source (a dev-dependency of kiln, so
it is in ~/.cargo/registry/src/*/tiktoken-rs-*/assets/): `encoder.json` (vocab), `vocab.bpe`
(merges) and `r50k_base.tiktoken` (the same tokenizer in tiktoken's format, copied as is).

Usage: python3 scripts/make_gpt2_tokenizer.py OUT_DIR
writes OUT_DIR/gpt2/tokenizer.json and OUT_DIR/gpt2/r50k_base.tiktoken. Uses only the standard
library; if Python `tokenizers` is importable it checks that "Hello world" -> [15496, 995].
"""
import glob
import json
import os
import shutil
import sys

EOT = "<|endoftext|>"


def find_assets():
    pattern = os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-*/assets")
    for d in sorted(glob.glob(pattern), reverse=True):
        if all(os.path.exists(os.path.join(d, f)) for f in ("encoder.json", "vocab.bpe", "r50k_base.tiktoken")):
            return d
    sys.exit(f"no tiktoken-rs assets found at {pattern} (run `cargo fetch` in kiln first)")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    assets = find_assets()
    out = os.path.join(sys.argv[1], "gpt2")
    os.makedirs(out, exist_ok=True)

    with open(os.path.join(assets, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(assets, "vocab.bpe"), encoding="utf-8") as f:
        merges = [l for l in f.read().split("\n") if l and not l.startswith("#version")]
    assert vocab[EOT] == 50256 and len(vocab) == 50257 and len(merges) == 50000, (len(vocab), len(merges))

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": 50256, "content": EOT, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        # As in the gpt2 tokenizer.json on the Hugging Face hub (adds nothing to the ids).
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    path = os.path.join(out, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    shutil.copyfile(os.path.join(assets, "r50k_base.tiktoken"), os.path.join(out, "r50k_base.tiktoken"))
    print(f"wrote {path} and {out}/r50k_base.tiktoken (from {assets})")

    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("(python `tokenizers` not installed: check skipped)")
        return
    ids = Tokenizer.from_file(path).encode("Hello world", add_special_tokens=False).ids
    assert ids == [15496, 995], ids
    print(f'check: "Hello world" -> {ids} OK')


if __name__ == "__main__":
    main()
