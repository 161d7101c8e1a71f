//! One CPU training step (forward + loss + backward + AdamW) of the embedded default's model
//! shape (configs/tiny.toml: d 128, 4 layers, 4 heads / 2 KV heads, ffn 352, vocab 2048,
//! B 16 × T 256), on random tokens with three documents per row.
//!
//!     cargo bench --bench train_step

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::backend::cpu::CpuBackend;
use kiln::config::Config;
use kiln::model::Model;
use kiln::rng::Rng;

fn bench_step(c: &mut Criterion) {
    let cfg = Config::load(None, &[]).unwrap();
    let mut mcfg = cfg.model.clone().unwrap();
    mcfg.resolve(2048).unwrap();
    let (b, t) = (cfg.data.batch_size, cfg.data.seq_len);
    let be = CpuBackend::<f32>::new();
    let mut model = Model::new(&be, &mcfg, 0);
    let mut ws = model.workspace(&be, b, t);
    let mut rng = Rng::new(1);
    let n = b * t;
    let inputs: Vec<u32> = (0..n).map(|_| rng.below(2048) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.below(2048) as u32).collect();
    let doc_ids: Vec<u32> = (0..n).map(|i| ((i % t) * 3 / t) as u32).collect();
    let mask = vec![1u8; n];
    let mut m: Vec<_> = model.info.iter().map(|p| be.zeros(p.numel())).collect();
    let mut v: Vec<_> = model.info.iter().map(|p| be.zeros(p.numel())).collect();
    let mut step = 0u64;
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("tiny_B16_T256", |bench| {
        bench.iter(|| {
            step += 1;
            model.zero_grads(&be);
            model.forward(&be, &mut ws, &inputs, &doc_ids);
            let loss = model.loss(&be, &mut ws, &targets, &mask, 1.0 / n as f32);
            model.backward(&be, &mut ws, &inputs, &doc_ids);
            model.adamw_step(&be, &mut m, &mut v, kiln::bench::timing_adamw(step));
            loss
        })
    });
    g.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
