#!/usr/bin/env python3
"""kiln under a real torchrun, on CPU ranks (CI; docs/DISTRIBUTED.md).

Trains a tiny model three ways and checks that they agree:
  1. one process, micro-batch 4 (the reference);
  2. torchrun's default form: `torchrun --nproc_per_node 2 --master_port P --no_python kiln train`,
     2 ranks of micro-batch 2 (torchrun's agent store holds P; kiln's rank 0 listens on P + 1);
  3. `torchrun --standalone --nproc_per_node 2 --no_python kiln train`.
Both torchrun runs must exit 0, write every step to metrics.jsonl, and log the reference's losses
(to 1e-5 relative: N ranks x b and 1 rank x N.b differ only in f32 summation order).

Usage: python scripts/torchrun_check.py --kiln target/debug/kiln
Run with the Python that has torch (scripts/setup-hf-venv.sh); torchrun is `python -m
torch.distributed.run`, the same program as the `torchrun` script.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

STEPS = 6

CONFIG = """
[world]
dir = "{d}/w"
people = 120
bios_per_person = 2
vocab_size = 500

[data]
tokenizer = "{d}/w/tokenizer.json"
seq_len = 32
batch_size = 4
val_fraction = 0.0

[[data.sources]]
name = "raw"
path = "{d}/w/shards/raw_*.kiln"
weight = 0.8

[[data.sources]]
name = "augmented"
path = "{d}/w/shards/augmented_*.kiln"
weight = 0.2

[model]
dim = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
ffn_dim = 64
max_seq_len = 32
tie_embeddings = false

[train]
steps = {steps}
grad_accum = 2
lr = 1e-2
warmup_steps = 1
log_every = 100
checkpoint_every = 0
keep_last = 1
threads = 1
comm_timeout_s = 60
out_dir = "{d}/single"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def run(what, cmd, cwd):
    t0 = time.time()
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    secs = time.time() - t0
    if p.returncode != 0:
        sys.stdout.write(p.stdout)
        sys.exit(f"FAIL: {what} exited with {p.returncode}: {' '.join(cmd)}")
    print(f"{what}: ok in {secs:.1f}s")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True, help="the kiln binary")
    args = ap.parse_args()
    kiln = os.path.abspath(args.kiln)
    import torch

    print(f"torch {torch.__version__}, Python {sys.version.split()[0]}")
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    # torchrun 1.13 under Python 3.11 needs its output redirected (--redirects/--tee); the
    # underscore spellings work in every version.
    quiet = ["--redirects", "2", "--tee", "2"]
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "c.toml"), "w") as f:
            f.write(CONFIG.format(d=d, steps=STEPS))
        # The reference run also builds the synthetic world both torchrun runs read.
        run("one process, micro-batch 4", [kiln, "train", "--config", "c.toml"], d)
        ref_steps, ref = losses(os.path.join(d, "single"))
        assert ref_steps == list(range(1, STEPS + 1)), ref_steps

        two = ["--set", "data.batch_size=2"]
        port = free_port()
        forms = [
            (
                f"torchrun --nproc_per_node 2 --master_port {port} --no_python kiln train (2 ranks x 2)",
                ["--nproc_per_node", "2", "--master_port", str(port)],
                "default",
            ),
            (
                "torchrun --standalone --nproc_per_node 2 --no_python kiln train (2 ranks x 2)",
                ["--standalone", "--nproc_per_node", "2"],
                "standalone",
            ),
        ]
        for what, opts, name in forms:
            out = os.path.join(d, name)
            log = run(
                what,
                torchrun + opts + quiet + ["--no_python", kiln, "train", "--config", "c.toml"]
                + two + ["--set", f'train.out_dir="{out}"'],
                d,
            )
            if name == "default" and f":{port + 1} " not in log:
                sys.stdout.write(log)
                sys.exit(f"FAIL: {what}: rank 0 did not say it waits at port {port + 1}")
            if "data parallel: 2 ranks" not in log:
                sys.stdout.write(log)
                sys.exit(f"FAIL: {what}: no 'data parallel: 2 ranks' line")
            steps, got = losses(out)
            if steps != ref_steps:
                sys.exit(f"FAIL: {what}: metrics.jsonl has steps {steps}, want {ref_steps}")
            worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
            print(f"  losses {['%.4f' % x for x in got]}; max relative difference to one process {worst:.1e}")
            if worst > 1e-5:
                sys.exit(f"FAIL: {what}: losses {got} differ from one process's {ref}")
    print("torchrun: ok")


if __name__ == "__main__":
    main()
