//! Throughput of every CPU backend operation at tiny-model shapes: 16 sequences × 256 tokens,
//! d = 256, SwiGLU hidden 688, 8 query heads and 4 kv heads of dimension 32, vocabulary 2048.
//! Compute-bound ops (GEMMs, attention) report FLOP/s (criterion's "elements" are FLOPs);
//! bandwidth-bound ops report bytes read + written once. Sample sizes are small so the whole
//! file runs in about a minute: `cargo bench --bench cpu_ops`.

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use kiln::backend::cpu::CpuBackend;
use kiln::backend::{AdamW, AttnShape, Backend, GenerationBackend};
use std::hint::black_box;
use std::time::Duration;

const B: usize = 16;
const T: usize = 256;
const N: usize = B * T;
const D: usize = 256;
const FFN: usize = 688;
const HEADS: usize = 8;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 32;
const VOCAB: usize = 2048;
const F: usize = std::mem::size_of::<f32>();

/// Deterministic, non-zero inputs in [-1, 1).
fn input(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + 1e-7
        })
        .collect()
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g
}

fn bench_linear(c: &mut Criterion) {
    let be = CpuBackend::<f32>::new();
    let mut g = group(c, "linear");
    // x [N, D] · w [FFN, D]ᵀ: the gate/up projection
    let (x, w, dy) = (
        be.upload(&input(N * D, 1)),
        be.upload(&input(FFN * D, 2)),
        be.upload(&input(N * FFN, 3)),
    );
    let flops = (2 * N * D * FFN) as u64;
    g.throughput(Throughput::Elements(flops));
    let mut y = be.zeros(N * FFN);
    g.bench_function("matmul_4096x256x688", |bch| {
        bch.iter(|| be.matmul(&mut y, &x, &w, N, D, FFN))
    });
    let mut dx = be.zeros(N * D);
    g.bench_function("matmul_dx_4096x256x688", |bch| {
        bch.iter(|| be.matmul_dx(&mut dx, &dy, &w, N, D, FFN, false))
    });
    let mut dw = be.zeros(FFN * D);
    g.bench_function("matmul_dw_4096x256x688", |bch| {
        bch.iter(|| be.matmul_dw(&mut dw, &dy, &x, N, D, FFN))
    });
    // the LM head: [N, D] · [VOCAB, D]ᵀ
    let wh = be.upload(&input(VOCAB * D, 4));
    let mut logits = be.zeros(N * VOCAB);
    g.throughput(Throughput::Elements((2 * N * D * VOCAB) as u64));
    g.bench_function("matmul_lm_head_4096x256x2048", |bch| {
        bch.iter(|| be.matmul(&mut logits, &x, &wh, N, D, VOCAB))
    });
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let be = CpuBackend::<f32>::new();
    let mut g = group(c, "attention");
    let s = AttnShape {
        batch: B,
        seq: T,
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        causal: true,
    };
    let q = be.upload(&input(N * HEADS * HEAD_DIM, 5));
    let k = be.upload(&input(N * KV_HEADS * HEAD_DIM, 6));
    let v = be.upload(&input(N * KV_HEADS * HEAD_DIM, 7));
    // one document per row, so the causal FLOP count below is the work actually done
    let docs: Vec<u32> = (0..N as u32).map(|i| i / T as u32).collect();
    let (mut out, mut lse) = (be.zeros(q.len()), be.zeros(B * HEADS * T));
    // causal FLOPs: QKᵀ and PV over half the square (backward: 2.5× that)
    let fwd_flops = (4 * B * HEADS * T * T * HEAD_DIM / 2) as u64;
    g.throughput(Throughput::Elements(fwd_flops));
    g.bench_function("attention_fwd", |bch| {
        bch.iter(|| be.attention(&mut out, &mut lse, &q, &k, &v, &docs, s))
    });
    let dout = be.upload(&input(q.len(), 8));
    let (mut dq, mut dk, mut dv) = (be.zeros(q.len()), be.zeros(k.len()), be.zeros(v.len()));
    g.throughput(Throughput::Elements(fwd_flops * 5 / 2));
    g.bench_function("attention_bwd", |bch| {
        bch.iter(|| {
            be.attention_bwd(
                &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, &docs, s,
            )
        })
    });
    // one decode step against a cache holding 255 positions, batch 16
    let max_len = T;
    let (kc, vc) = (
        be.upload(&input(B * max_len * KV_HEADS * HEAD_DIM, 9)),
        be.upload(&input(B * max_len * KV_HEADS * HEAD_DIM, 10)),
    );
    let sd = AttnShape { seq: 1, ..s };
    let qd = be.upload(&input(B * HEADS * HEAD_DIM, 11));
    let mut od = be.zeros(qd.len());
    g.throughput(Throughput::Elements((4 * B * HEADS * T * HEAD_DIM) as u64));
    g.bench_function("attention_cached_decode", |bch| {
        bch.iter(|| be.attention_cached(&mut od, &qd, &kc, &vc, max_len, T - 1, None, sd))
    });
    g.finish();
}

fn bench_pointwise(c: &mut Criterion) {
    let be = CpuBackend::<f32>::new();
    let mut g = group(c, "bandwidth");
    let ids: Vec<u32> = (0..N as u32).map(|i| (i * 7919) % VOCAB as u32).collect();
    let table = be.upload(&input(VOCAB * D, 12));
    let mut out = be.zeros(N * D);
    g.throughput(Throughput::Bytes((2 * N * D * F) as u64));
    g.bench_function("embedding", |bch| {
        bch.iter(|| be.embedding(&mut out, &table, &ids, D))
    });
    let mut dtable = be.zeros(VOCAB * D);
    let dout = be.upload(&input(N * D, 13));
    g.throughput(Throughput::Bytes((3 * N * D * F) as u64));
    g.bench_function("embedding_dw", |bch| {
        bch.iter(|| be.embedding_dw(&mut dtable, &dout, &ids, D))
    });

    let (x, w) = (be.upload(&input(N * D, 14)), be.upload(&input(D, 15)));
    let mut rstd = be.zeros(N);
    g.throughput(Throughput::Bytes((2 * N * D * F) as u64));
    g.bench_function("rmsnorm", |bch| {
        bch.iter(|| be.rmsnorm(&mut out, &mut rstd, &x, &w, D, 1e-5))
    });
    let (mut dx, mut dw) = (be.zeros(N * D), be.zeros(D));
    g.throughput(Throughput::Bytes((4 * N * D * F) as u64));
    g.bench_function("rmsnorm_bwd", |bch| {
        bch.iter(|| be.rmsnorm_bwd(&mut dx, &mut dw, &dout, &x, &w, &rstd, D))
    });

    let (cos, sin) = (
        be.upload(&input(T * HEAD_DIM / 2, 16)),
        be.upload(&input(T * HEAD_DIM / 2, 17)),
    );
    let pos: Vec<u32> = (0..N as u32).map(|i| i % T as u32).collect();
    let mut qr = be.upload(&input(N * HEADS * HEAD_DIM, 18));
    g.throughput(Throughput::Bytes((2 * N * HEADS * HEAD_DIM * F) as u64));
    g.bench_function("rope", |bch| {
        bch.iter(|| be.rope(&mut qr, &pos, HEADS, HEAD_DIM, &cos, &sin))
    });
    g.bench_function("rope_bwd", |bch| {
        bch.iter(|| be.rope_bwd(&mut qr, &pos, HEADS, HEAD_DIM, &cos, &sin))
    });

    let (gate, up) = (
        be.upload(&input(N * FFN, 19)),
        be.upload(&input(N * FFN, 20)),
    );
    let mut h = be.zeros(N * FFN);
    g.throughput(Throughput::Bytes((3 * N * FFN * F) as u64));
    g.bench_function("swiglu", |bch| bch.iter(|| be.swiglu(&mut h, &gate, &up)));
    let (mut dg, mut du) = (be.zeros(N * FFN), be.zeros(N * FFN));
    let dh = be.upload(&input(N * FFN, 21));
    g.throughput(Throughput::Bytes((5 * N * FFN * F) as u64));
    g.bench_function("swiglu_bwd", |bch| {
        bch.iter(|| be.swiglu_bwd(&mut dg, &mut du, &dh, &gate, &up))
    });

    let logits0 = be.upload(&input(N * VOCAB, 22));
    let mut logits = be.zeros(N * VOCAB);
    let targets: Vec<u32> = (0..N as u32).map(|i| (i * 31) % VOCAB as u32).collect();
    let mask = vec![1u8; N];
    g.throughput(Throughput::Bytes((2 * N * VOCAB * F) as u64));
    // the copy that restores the logits is timed too (another read + write)
    g.bench_function("cross_entropy_plus_copy", |bch| {
        bch.iter(|| {
            be.copy(&mut logits, &logits0);
            black_box(be.cross_entropy(&mut logits, &targets, &mask, VOCAB, 1.0 / N as f32))
        })
    });

    // elementwise passes and the optimizer over a 4M-element buffer (~16 MB)
    let len = 1 << 22;
    let (a, mut bbuf) = (be.upload(&input(len, 23)), be.upload(&input(len, 24)));
    g.throughput(Throughput::Bytes((3 * len * F) as u64));
    g.bench_function("add_assign", |bch| {
        bch.iter(|| be.add_assign(&mut bbuf, &a))
    });
    g.throughput(Throughput::Bytes((len * F) as u64));
    g.bench_function("sum_squares", |bch| {
        bch.iter(|| black_box(be.sum_squares(&a)))
    });
    let (mut p, mut m, mut v) = (be.upload(&input(len, 25)), be.zeros(len), be.zeros(len));
    let hp = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 10,
        grad_scale: 0.5,
    };
    g.throughput(Throughput::Bytes((7 * len * F) as u64));
    g.bench_function("adamw", |bch| {
        bch.iter(|| be.adamw(&mut p, &a, &mut m, &mut v, hp))
    });
    g.finish();
}

criterion_group!(benches, bench_linear, bench_attention, bench_pointwise);
criterion_main!(benches);
