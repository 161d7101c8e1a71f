#!/usr/bin/env python3
"""kiln's kernels vs PyTorch on the same device and shapes, measured in one call.

Runs `kiln bench --device D --preset P --json tmp` (kiln times every backend operation), then
times the PyTorch equivalents on the same shapes and dtypes (bf16 activations on CUDA, f32 on the
CPU): copy bandwidth (the ceiling of bandwidth-bound kernels), torch.matmul at the model's GEMM
shapes (the ceiling of GEMMs), RMSNorm forward and backward, SwiGLU forward and backward,
cross-entropy forward + backward, AdamW (fused on CUDA), and causal SDPA attention. Prints one
markdown table: kiln ms, torch ms, torch/kiln (> 1 means kiln is faster), and kiln's achieved
GB/s or TFLOP/s with its fraction of the torch-measured ceiling.

  python scripts/compare_torch.py --kiln target/release/kiln --device cuda [--preset llama3-8b]
  python scripts/compare_torch.py --kiln target/release/kiln --device cpu --preset tiny
  python scripts/compare_torch.py --kiln target/release/kiln --device cuda --attention [--seqs 512,4096]
The last form runs `kiln bench attention` and torch's SDPA (flash backend on CUDA) on the same
shapes (B×T = 16384 tokens, heads·D = 2048, causal and not) and prints both TFLOP/s and the
ratio; rows with document masks have no SDPA equivalent and show kiln only.
On the GPU machine run it through scripts/cuda-env.sh so kiln finds the CUDA libraries.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

PRESETS = {
    "tiny": dict(tokens=4096, seq=256, dim=128, ffn=352, vocab=2048, heads=4, kv_heads=2, head_dim=32),
    "llama3-8b": dict(tokens=16384, seq=1024, dim=4096, ffn=14336, vocab=128256, heads=32, kv_heads=8, head_dim=128),
}


def timed(fn, device, iters):
    """Median milliseconds of fn() over iters runs after one warm-up."""
    fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def rmsnorm(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def torch_times(s, device, iters):
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    n, d, f, v = s["tokens"], s["dim"], s["ffn"], s["vocab"]
    h, hkv, hd, t = s["heads"], s["kv_heads"], s["head_dim"], s["seq"]
    out = {}
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *shape, dtype=dt: torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)
    big = rnd(max(64 << 20, n * d))
    out["copy"] = timed(lambda: big.clone(), device, iters)
    copy_gb_s = 2 * big.numel() * big.element_size() / out["copy"] / 1e6
    del big
    x = rnd(n, d)
    w_ffn = rnd(f, d) * 0.02
    out["matmul (up/gate)"] = timed(lambda: x @ w_ffn.T, device, iters)
    y = x @ w_ffn.T
    out["matmul_dx (up/gate)"] = timed(lambda: y @ w_ffn, device, iters)
    dw = torch.zeros(f, d, device=device, dtype=torch.float32)
    out["matmul_dw (up/gate)"] = timed(lambda: dw.add_((y.T @ x).float()), device, iters)
    w_q = rnd(h * hd, d) * 0.02
    out["matmul (q_proj)"] = timed(lambda: x @ w_q.T, device, iters)
    w_lm = rnd(v, d) * 0.02
    out["matmul (lm_head)"] = timed(lambda: x @ w_lm.T, device, iters)
    flops = {
        "matmul (up/gate)": 2 * n * d * f,
        "matmul_dx (up/gate)": 2 * n * d * f,
        "matmul_dw (up/gate)": 2 * n * d * f,
        "matmul (q_proj)": 2 * n * d * h * hd,
        "matmul (lm_head)": 2 * n * d * v,
    }
    gemm_tflop_s = max(flops[k] / out[k] / 1e9 for k in flops)

    w = rnd(d)
    out["rmsnorm"] = timed(lambda: rmsnorm(x, w), device, iters)
    xr = x.clone().requires_grad_(True)
    wr = w.clone().float().requires_grad_(True)
    dout = rnd(n, d)
    # Backward alone: the graph is built once and kept, each timed call runs only the backward.
    o = rmsnorm(xr, wr)
    out["rmsnorm_bwd"] = timed(lambda: o.backward(dout, retain_graph=True), device, iters)
    gate, up = rnd(n, f), rnd(n, f)
    out["swiglu"] = timed(lambda: F.silu(gate) * up, device, iters)
    gr, ur = gate.clone().requires_grad_(True), up.clone().requires_grad_(True)
    dh = rnd(n, f)
    o = F.silu(gr) * ur
    out["swiglu_bwd"] = timed(lambda: o.backward(dh, retain_graph=True), device, iters)
    del gate, up, gr, ur, dh, y, o
    logits = rnd(n, v).requires_grad_(True)
    targets = torch.randint(0, v, (n,), device=device)

    def ce():
        F.cross_entropy(logits.float(), targets).backward()

    out["cross_entropy (fwd+bwd)"] = timed(ce, device, iters)
    del logits
    p = torch.nn.Parameter(torch.randn(f, d, device=device))
    p.grad = torch.randn(f, d, device=device)
    opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **({"fused": True} if device == "cuda" else {}))
    out["adamw"] = timed(opt.step, device, iters)
    out["sum_squares (grad norm)"] = timed(lambda: p.grad.pow(2).sum(), device, iters)
    del p, opt
    b = n // t
    q = rnd(b, h, t, hd)
    k = rnd(b, hkv, t, hd).repeat_interleave(h // hkv, dim=1)
    vv = rnd(b, hkv, t, hd).repeat_interleave(h // hkv, dim=1)
    out["attention"] = timed(lambda: F.scaled_dot_product_attention(q, k, vv, is_causal=True), device, iters)
    qr, kr, vr = (z.clone().requires_grad_(True) for z in (q, k, vv))
    da = rnd(b, h, t, hd)
    o = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True)
    out["attention_bwd"] = timed(lambda: o.backward(da, retain_graph=True), device, iters)
    return out, copy_gb_s, gemm_tflop_s


def sdpa_times(row, device, iters):
    """Forward and backward milliseconds of SDPA on a kiln attention-bench row (MHA)."""
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    b, t, h, d = row["batch"], row["seq"], row["heads"], row["head_dim"]
    g = torch.Generator(device=device).manual_seed(0)
    # kiln's [B, T, H, D] layout, viewed as SDPA's [B, H, T, D]
    mk = lambda: torch.randn(b, t, h, d, generator=g, device=device, dtype=torch.float32).to(dt).transpose(1, 2)
    q, k, v, do = mk(), mk(), mk(), mk()
    ctx = contextlib.nullcontext()
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    with ctx:
        fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=row["causal"]), device, iters)
        qr, kr, vr = (z.detach().requires_grad_(True) for z in (q, k, v))

        def both():
            F.scaled_dot_product_attention(qr, kr, vr, is_causal=row["causal"]).backward(do)

        total = timed(both, device, iters)
    return fwd, total - fwd


def attention_main(a):
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "attn.json")
        cmd = [a.kiln, "bench", "attention", "--device", a.device, "--iters", str(a.iters), "--json", path]
        if a.seqs:
            cmd += ["--seqs", a.seqs]
        if a.tokens:
            cmd += ["--tokens", str(a.tokens)]
        print("$", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        kiln = json.load(open(path))
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev}; torch {torch.__version__}; kiln: {kiln['backend']}")
    print("TFLOP/s count allowed query-key pairs only (causal: half); backward = 2.5 × forward FLOPs.\n")
    print("| B×T | H×D | mask | kiln fwd | torch fwd | fwd ratio | kiln bwd | torch bwd | bwd ratio | kiln fwd+bwd | torch fwd+bwd | fwd+bwd ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in kiln["rows"]:
        mask = "none" if not r["causal"] else ("causal" if not r["docs"] else f"causal, {len(r['docs'])} docs/row")
        head = f"| {r['batch']}×{r['seq']} | {r['heads']}×{r['head_dim']} | {mask} "
        kf, kb, kt = r["fwd_tflop_s"], r["bwd_tflop_s"], r["total_tflop_s"]
        if r["docs"]:
            print(head + f"| {kf:.1f} | - | - | {kb:.1f} | - | - | {kt:.1f} | - | - |")
            continue
        tf_ms, tb_ms = sdpa_times(r, a.device, a.iters)
        flops = r["fwd_tflop_s"] * r["fwd_ms"] * 1e9  # forward FLOPs
        tf, tb, tt = flops / tf_ms / 1e9, 2.5 * flops / tb_ms / 1e9, 3.5 * flops / (tf_ms + tb_ms) / 1e9
        print(head + f"| {kf:.1f} | {tf:.1f} | {kf / tf:.2f} | {kb:.1f} | {tb:.1f} | {kb / tb:.2f} | {kt:.1f} | {tt:.1f} | {kt / tt:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--preset", choices=list(PRESETS), default=None)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all)")
    ap.add_argument("--attention", action="store_true", help="attention sweep vs SDPA instead of the per-op table")
    ap.add_argument("--seqs", default=None, help="--attention: sequence lengths, comma-separated")
    ap.add_argument("--tokens", type=int, default=None, help="--attention: B×T (default 16384)")
    a = ap.parse_args()
    if a.attention:
        if a.threads:
            torch.set_num_threads(a.threads)
        return attention_main(a)
    preset = a.preset or ("llama3-8b" if a.device == "cuda" else "tiny")
    s = PRESETS[preset]
    env = dict(os.environ)
    if a.threads:
        torch.set_num_threads(a.threads)
        env["RAYON_NUM_THREADS"] = str(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        cmd = [a.kiln, "bench", "--device", a.device, "--preset", preset, "--iters", str(a.iters), "--json", path]
        print("$", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        kiln = json.load(open(path))
    t, copy_gb_s, gemm_tflop_s = torch_times(s, a.device, a.iters)
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev}; torch {torch.__version__}; kiln: {kiln['backend']}; preset {preset}: {s}")
    print(f"ceilings measured by torch: copy {copy_gb_s:.1f} GB/s, best torch.matmul {gemm_tflop_s:.2f} TFLOP/s")
    print(f"ceilings measured by kiln:  copy {kiln['copy_gb_s']:.1f} GB/s, best GEMM {kiln['gemm_tflop_s']:.2f} TFLOP/s\n")
    print("| op | shape | kiln ms | torch ms | torch/kiln | kiln achieved | of torch ceiling |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in kiln["rows"]:
        tm = t.get(r["op"])
        ceiling = copy_gb_s if r["unit"] == "GB/s" else gemm_tflop_s
        ratio = f"{tm / r['ms']:.2f}" if tm else "-"
        tms = f"{tm:.3f}" if tm else "-"
        print(f"| {r['op']} | {r['shape']} | {r['ms']:.3f} | {tms} | {ratio} | {r['achieved']:.2f} {r['unit']} | {100 * r['achieved'] / ceiling:.0f}% |")


if __name__ == "__main__":
    main()
