#!/usr/bin/env python3
"""Training-step throughput on the CPU: kiln's reference backend vs PyTorch CPU eager.

Both train the configs/tiny.toml model on the same thread count:

  Llama family, pre-norm RMSNorm (eps 1e-5), rotate-half RoPE (theta 10000), GQA, SwiGLU MLP,
  tied embeddings, no biases; vocab 2048, dim 128, 4 layers, 4 heads, 2 KV heads (head dim 32),
  ffn 352; batch 16 x sequence 256 = 4096 tokens per step; f32.

One step = forward, cross-entropy over every target, backward, global-norm clip 1.0, AdamW
(betas 0.9/0.95, eps 1e-8, weight decay 0.1 on 2-D weights only), zero_grad.

  torch  This file's own small Llama module, eager mode, torch.set_num_threads(N), attention by
         F.scaled_dot_product_attention(is_causal=True) (GQA through enable_gqa where this torch
         has it, else repeat_interleave of the k/v heads), torch.optim.AdamW with its defaults for
         CPU tensors. One fixed random (16, 256) token batch. W warm-up steps, then K steps each
         timed with perf_counter (no data loading in the timed region).
  kiln   `kiln train` with the embedded tiny config for W+K steps on N rayon threads; per-step
         times are read back from <out_dir>/metrics.jsonl (tokens_per_s = 4096 / step seconds,
         a step's time there includes fetching its batch from the loader but not validation or
         checkpointing) and the median is over the last K steps. kiln's attention is causal AND
         document-masked (its batches mark document boundaries); torch here is only causal. The
         masking is a per-score select, not extra matmul FLOPs, so the work compared is the same.

The synthetic-world data kiln trains on (data/world) is built first with `kiln world` (a no-op
when it exists) so that its construction is not timed. The two run one after the other, not
interleaved. The table gives median ms/step and tokens/s, plus the fastest step, because on a
busy machine the median moves a lot (torch's OpenMP threads suffer most from other load).

Usage (from the repository root):
  python scripts/compare_torch_cpu.py [--threads 2] [--warmup 3] [--steps 10] [--kiln target/release/kiln]
  python scripts/compare_torch_cpu.py --torch-only
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, DIM, LAYERS, HEADS, KV_HEADS, FFN = 2048, 128, 4, 4, 2, 352
BATCH, SEQ = 16, 256
HEAD_DIM = DIM // HEADS
TOKENS_PER_STEP = BATCH * SEQ
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq, head_dim, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.outer(torch.arange(seq, dtype=torch.float64), inv)  # (T, D/2)
    ang = torch.cat([ang, ang], dim=-1)  # rotate-half layout: (T, D)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x, cos, sin):  # x: (B, H, T, D)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


HAS_ENABLE_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_norm = RMSNorm(DIM)
        self.wq = nn.Linear(DIM, HEADS * HEAD_DIM, bias=False)
        self.wk = nn.Linear(DIM, KV_HEADS * HEAD_DIM, bias=False)
        self.wv = nn.Linear(DIM, KV_HEADS * HEAD_DIM, bias=False)
        self.wo = nn.Linear(HEADS * HEAD_DIM, DIM, bias=False)
        self.ffn_norm = RMSNorm(DIM)
        self.w_gate = nn.Linear(DIM, FFN, bias=False)
        self.w_up = nn.Linear(DIM, FFN, bias=False)
        self.w_down = nn.Linear(FFN, DIM, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.wq(h).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.wk(h).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.wv(h).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if HAS_ENABLE_GQA:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            rep = HEADS // KV_HEADS
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, DIM))
        h = self.ffn_norm(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = RMSNorm(DIM)
        cos, sin = rope_tables(SEQ, HEAD_DIM)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        x = self.embed(idx)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin)
        return self.norm(x) @ self.embed.weight.t()  # tied lm_head


def run_torch(warmup, steps):
    torch.manual_seed(0)
    model = Llama()
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3, betas=(0.9, 0.95), eps=1e-8,
    )
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1))
    inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        logits = model(inputs)
        loss = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step()
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch: {n_params:,} parameters, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
          f"step times (ms): {', '.join(f'{t * 1e3:.0f}' for t in times)}", flush=True)
    return times


def run_kiln(kiln, threads, warmup, steps):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    subprocess.run([kiln, "world"], cwd=REPO, env=env, check=True)  # build data/world if missing
    with tempfile.TemporaryDirectory(prefix="kiln_cmp_") as out:
        cmd = [kiln, "train",
               "--set", f"train.steps={warmup + steps}",
               "--set", f'train.out_dir="{out}"',
               "--set", "train.eval_every=0",
               "--set", "train.checkpoint_every=0",
               "--set", "train.log_every=1000",
               "--set", f"train.threads={threads}"]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    timed = [TOKENS_PER_STEP / r["tokens_per_s"] for r in recs[-steps:]]
    print(f"kiln: loss {recs[0]['loss']:.4f} -> {recs[-1]['loss']:.4f}, "
          f"step times (ms): {', '.join(f'{t * 1e3:.0f}' for t in timed)}", flush=True)
    return timed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (W)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (K)")
    ap.add_argument("--kiln", default=os.path.join(REPO, "target/release/kiln"))
    ap.add_argument("--torch-only", action="store_true")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"enable_gqa: {HAS_ENABLE_GQA}; os.cpu_count() = {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}; {a.warmup} warm-up + {a.steps} timed steps")
    rows = [("PyTorch CPU eager", run_torch(a.warmup, a.steps))]
    if not a.torch_only:
        rows.append(("kiln CPU backend (f32, rayon)", run_kiln(a.kiln, a.threads, a.warmup, a.steps)))
        print(f"load average after: {os.getloadavg()[0]:.2f}")

    # Median is the headline; the fastest step is shown too because a busy machine inflates the median.
    print("\n| implementation | threads | median ms/step | tokens/s | fastest ms/step |")
    print("|---|---:|---:|---:|---:|")
    for name, times in rows:
        med = statistics.median(times)
        print(f"| {name} | {a.threads} | {med * 1e3:.1f} | {TOKENS_PER_STEP / med:,.0f} | {min(times) * 1e3:.1f} |")
    if len(rows) == 2:
        (_, t_torch), (_, t_kiln) = rows
        print(f"\nkiln/torch (tokens/s): {statistics.median(t_torch) / statistics.median(t_kiln):.2f}x median, "
              f"{min(t_torch) / min(t_kiln):.2f}x fastest step")
        print("(kiln's attention is causal + document-masked; torch's is causal only: same FLOPs.)")


if __name__ == "__main__":
    main()
