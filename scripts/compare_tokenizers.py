#!/usr/bin/env python3
"""Tokenization throughput: `kiln prep` vs tiktoken (llm.c style) vs Hugging Face `tokenizers`.

All three encode the `text` field of every line of the same JSONL file with the same GPT-2
tokenizer (make it with scripts/make_gpt2_tokenizer.py):

  tiktoken    llm.c's dev/data/fineweb.py way: a GPT-2 `tiktoken.Encoding` (ranks loaded from
              r50k_base.tiktoken), multiprocessing.Pool(workers).imap(tokenize, docs,
              chunksize=16), where tokenize(doc) = np.array([eot] + enc.encode_ordinary(doc["text"]))
              checked < 2**16 and cast to np.uint16. Timed: pool start to last document received.
  tokenizers  Tokenizer.from_file(tokenizer.json).encode_batch(batch, add_special_tokens=False)
              over batches of 1000 texts (Rust threads: RAYON_NUM_THREADS=workers), then
              np.array(e.ids, dtype=np.uint16) per document. Timed: the encoding loop.
  kiln        `kiln prep -t tokenizer.json -i FILE -o TMP --name bench --threads workers`, timed
              wall-clock end to end: process start, tokenizer load, reading and parsing the JSONL,
              encoding, writing the shards. (Its own internal timer is shown too.)

For tiktoken and tokenizers the texts are read into memory before timing. MB/s is over the UTF-8
bytes of the text fields (not the JSONL file size, which is printed too). Token counts exclude
the one <|endoftext|> per document that tiktoken/llm.c prepends and kiln adds as BOS; they must
agree across all three, and the ids of the first 1000 documents must agree between tiktoken and
tokenizers.

Usage: python compare_tokenizers.py --jsonl FILE --tokenizer DIR/gpt2 --kiln target/release/kiln [--workers 2]
"""
import argparse
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_ID = 50256
CHECK_DOCS = 1000

enc = None  # the tiktoken Encoding; set before the Pool forks, as llm.c's module-level `enc`


def tokenize(doc):
    # As llm.c dev/data/fineweb.py: eot first, then the document's tokens, as uint16.
    tokens = [EOT_ID]
    tokens.extend(enc.encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)


def run_tiktoken(tiktoken_file, texts, workers):
    global enc
    import tiktoken
    import tiktoken.load

    ranks = tiktoken.load.load_tiktoken_bpe(tiktoken_file)
    enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": EOT_ID})
    docs = [{"text": t} for t in texts]
    first, ntok = [], 0
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        for i, tokens in enumerate(pool.imap(tokenize, docs, chunksize=16)):
            ntok += len(tokens) - 1
            if i < CHECK_DOCS:
                first.append(tokens[1:])
    return time.perf_counter() - t0, ntok, first


def run_tokenizers(tokenizer_json, texts, batch=1000):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    first, ntok = [], 0
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch):
        for e in tok.encode_batch(texts[s:s + batch], add_special_tokens=False):
            ids = np.array(e.ids, dtype=np.uint16)
            ntok += len(ids)
            if len(first) < CHECK_DOCS:
                first.append(ids)
    return time.perf_counter() - t0, ntok, first


def run_kiln(kiln, tokenizer_json, jsonl, workers):
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        cmd = [kiln, "prep", "-t", tokenizer_json, "-i", jsonl, "-o", tmp, "--name", "bench",
               "--threads", str(workers)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"kiln failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    m = re.search(r"(\d+) documents, (\d+) tokens, .* in ([\d.]+)s", p.stderr)
    if not m:
        sys.exit(f"no stats line in kiln's stderr:\n{p.stderr}")
    docs, tokens, inner = int(m[1]), int(m[2]), float(m[3])
    return secs, tokens - docs, docs, inner, p.stderr.strip().splitlines()[-1], " ".join(cmd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jsonl", required=True)
    ap.add_argument("--tokenizer", required=True, help="directory with tokenizer.json and r50k_base.tiktoken")
    ap.add_argument("--kiln", required=True, help="path to the kiln binary")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(a.workers)  # read by tokenizers' thread pool when first used
    tok_json = os.path.join(a.tokenizer, "tokenizer.json")
    tik_file = os.path.join(a.tokenizer, "r50k_base.tiktoken")

    with open(a.jsonl, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    file_mb = os.path.getsize(a.jsonl) / 1e6
    print(f"input: {a.jsonl}: {len(texts)} documents, {file_mb:.2f} MB file, {text_mb:.2f} MB of text "
          f"(UTF-8 bytes of the `text` fields; MB/s below is over these); workers={a.workers}, "
          f"cpus={os.cpu_count()}", flush=True)

    # tiktoken first: its Pool forks, and tokenizers' threads must not have started before a fork.
    tk_s, tk_n, tk_first = run_tiktoken(tik_file, texts, a.workers)
    print(f"tiktoken done: {tk_s:.2f}s", flush=True)
    hf_s, hf_n, hf_first = run_tokenizers(tok_json, texts)
    print(f"tokenizers done: {hf_s:.2f}s", flush=True)
    kl_s, kl_n, kl_docs, kl_inner, kl_line, kl_cmd = run_kiln(a.kiln, tok_json, a.jsonl, a.workers)
    print(f"kiln done: {kl_s:.2f}s\n  {kl_cmd}\n  {kl_line}\n", flush=True)

    rows = [
        ("tiktoken (llm.c style, Pool imap)", tk_s, tk_n, "tokenization only, texts in memory"),
        ("HF tokenizers (encode_batch)", hf_s, hf_n, "tokenization only, texts in memory"),
        ("kiln prep (whole command)", kl_s, kl_n, "end to end: start, read+parse JSONL, encode, write shards"),
        ("kiln prep (its internal timer)", kl_inner, kl_n, "as reported by kiln, excludes process start and tokenizer load"),
    ]
    print("| tokenizer | seconds | MB/s (text) | M tokens/s | tokens (no EOT) | what is timed |")
    print("|---|---:|---:|---:|---:|---|")
    for name, s, n, what in rows:
        print(f"| {name} | {s:.2f} | {text_mb / s:.1f} | {n / s / 1e6:.2f} | {n} | {what} |")
    print()
    print(f"kiln (whole command) vs tiktoken:   {tk_s / kl_s:.2f}x the throughput")
    print(f"kiln (whole command) vs tokenizers: {hf_s / kl_s:.2f}x the throughput")

    ok = True
    if not tk_n == hf_n == kl_n:
        ok = False
        print(f"MISMATCH token counts: tiktoken {tk_n}, tokenizers {hf_n}, kiln {kl_n}")
    if kl_docs != len(texts):
        ok = False
        print(f"MISMATCH documents: kiln wrote {kl_docs}, input has {len(texts)}")
    bad = [i for i, (x, y) in enumerate(zip(tk_first, hf_first)) if not np.array_equal(x, y)]
    if bad:
        ok = False
        print(f"MISMATCH ids tiktoken vs tokenizers in {len(bad)} of the first {len(tk_first)} documents (first: {bad[0]})")
    print(f"token counts equal across all three: {tk_n == hf_n == kl_n} ({tk_n}); ids of the first "
          f"{min(len(tk_first), len(hf_first))} documents equal (tiktoken vs tokenizers): {not bad}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
