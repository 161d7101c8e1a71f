//! Model-level checks: end-to-end finite-difference gradients in f64 (GQA, document masking, loss
//! mask, tied and untied embeddings), and KV-cache generation against full recomputation.

use super::*;
use crate::backend::cpu::CpuBackend;

fn tiny_cfg(tie: bool) -> ModelConfig {
    let mut c: ModelConfig = toml::from_str(
        "vocab_size = 37\ndim = 16\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nffn_dim = 24\nmax_seq_len = 32\ninit_std = 0.3\n",
    )
    .unwrap();
    c.tie_embeddings = tie;
    c.resolve(37).unwrap();
    c
}

struct Case {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    doc_ids: Vec<u32>,
    mask: Vec<u8>,
}

fn case(b: usize, t: usize) -> Case {
    let mut rng = Rng::new(5);
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.below(37) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.below(37) as u32).collect();
    // Row 0: documents of lengths 2, 3, rest; row 1: one document.
    let doc_ids: Vec<u32> = (0..b * t)
        .map(|i| {
            let (r, p) = (i / t, i % t);
            if r == 0 {
                if p < 2 {
                    0
                } else if p < 5 {
                    1
                } else {
                    2
                }
            } else {
                0
            }
        })
        .collect();
    let mask: Vec<u8> = (0..b * t).map(|i| (i % 4 != 1) as u8).collect();
    Case {
        inputs,
        targets,
        doc_ids,
        mask,
    }
}

fn loss_f64(
    model: &Model<CpuBackend<f64>>,
    be: &CpuBackend<f64>,
    ws: &mut Workspace<CpuBackend<f64>>,
    c: &Case,
) -> f64 {
    model.forward(be, ws, &c.inputs, &c.doc_ids);
    model.loss(be, ws, &c.targets, &c.mask, 1.0)
}

#[test]
fn two_layer_model_gradients_match_finite_differences_in_f64() {
    for tie in [false, true] {
        let be = CpuBackend::<f64>::new();
        let cfg = tiny_cfg(tie);
        let mut model = Model::new(&be, &cfg, 3);
        let (b, t) = (2, 7);
        let c = case(b, t);
        let mut ws = model.workspace(&be, b, t);
        model.zero_grads(&be);
        loss_f64(&model, &be, &mut ws, &c);
        model.backward(&be, &mut ws, &c.inputs, &c.doc_ids);
        let analytic: Vec<Vec<f64>> = model.grads.clone();
        let mut rng = Rng::new(9);
        let eps = 1e-4;
        let mut worst = 0.0f64;
        for (pi, grad) in analytic.iter().enumerate() {
            let n = model.params[pi].len();
            for _ in 0..4 {
                let j = rng.index(n);
                let orig = model.params[pi][j];
                // Five-point central difference: truncation error O(eps⁴), so gradients as small
                // as 1e-5 are resolved well below the 1e-5 relative bound.
                let mut at = |x: f64| {
                    model.params[pi][j] = x;
                    loss_f64(&model, &be, &mut ws, &c)
                };
                let (p2, p1, m1, m2) = (
                    at(orig + 2.0 * eps),
                    at(orig + eps),
                    at(orig - eps),
                    at(orig - 2.0 * eps),
                );
                model.params[pi][j] = orig;
                let numeric = (8.0 * (p1 - m1) - (p2 - m2)) / (12.0 * eps);
                let a = grad[j];
                let rel = (numeric - a).abs() / (numeric.abs() + a.abs()).max(1e-7);
                worst = worst.max(rel);
                assert!(
                    rel < 1e-5,
                    "tie={tie} {}[{j}]: analytic {a}, numeric {numeric}",
                    model.info[pi].name
                );
            }
        }
        eprintln!("tie={tie}: worst relative error {worst:.2e}");
    }
}

#[test]
fn a_chunked_head_gives_the_unchunked_loss_and_gradients_holding_one_chunk_of_logits() {
    let be = CpuBackend::<f64>::new();
    let (b, t) = (2, 7);
    let c = case(b, t);
    for tie in [false, true] {
        let cfg = tiny_cfg(tie);
        // Chunks of 0 (whole), 1, 2 (asked 5: 14 rows have no chunk of 3, 4 or 5), 7 and 14.
        let run = |head_chunk: usize| {
            let mut model = Model::new(&be, &cfg, 3);
            let mut ws = model.workspace_with(&be, b, t, Recompute::None, head_chunk);
            // Poison the gradients the backward accumulates into; zero_grads must clear them.
            for g in model.grads.iter_mut() {
                g.fill(f64::NAN);
            }
            model.zero_grads(&be);
            model.forward(&be, &mut ws, &c.inputs, &c.doc_ids);
            let eval = model.loss(&be, &mut ws, &c.targets, &c.mask, 0.0);
            model.forward(&be, &mut ws, &c.inputs, &c.doc_ids);
            model.stage_loss(&be, &mut ws, &c.targets, &c.mask, 0.25);
            model.backward(&be, &mut ws, &c.inputs, &c.doc_ids);
            let loss = ws.take_loss(&be);
            (
                eval,
                loss,
                model.grads.clone(),
                ws.head_rows,
                ws.logits.len(),
            )
        };
        let (e0, l0, g0, rows0, len0) = run(0);
        assert_eq!((rows0, len0), (b * t, b * t * 37));
        assert!(l0 > 0.0 && (e0 - l0).abs() < 1e-12 * l0, "{e0} {l0}");
        for (chunk, rows) in [(1, 1), (5, 2), (7, 7), (13, 7), (14, 14), (40, 14)] {
            let (e1, l1, g1, rows1, len1) = run(chunk);
            assert_eq!((rows1, len1), (rows, rows * 37), "chunk {chunk}: rows held");
            assert!(
                (e1 - l0).abs() < 1e-12 * l0,
                "chunk {chunk}: loss {e1} vs {l0}"
            );
            assert!(
                (l1 - l0).abs() < 1e-12 * l0,
                "chunk {chunk}: staged loss {l1} vs {l0}"
            );
            for (i, (a, g)) in g0.iter().zip(&g1).enumerate() {
                let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                let err = a
                    .iter()
                    .zip(g)
                    .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    scale > 0.0 && err <= 1e-12 * scale,
                    "tie {tie}, chunk {chunk}: gradient of {} off by {err:e} (scale {scale:e})",
                    cfg.params()[i].name
                );
            }
        }
    }
}

#[test]
fn recomputing_norms_or_whole_layers_gives_bitwise_identical_loss_and_gradients() {
    let be = CpuBackend::<f32>::new();
    for (tie, bias) in [(false, false), (true, true)] {
        let mut cfg = tiny_cfg(tie);
        cfg.attention_bias = bias;
        cfg.mlp_bias = bias;
        let (b, t) = (2, 7);
        let mut c = case(b, t);
        c.doc_ids = vec![0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3];
        let run = |recompute: Recompute| {
            let mut model = Model::new(&be, &cfg, 11);
            // Biases start at zero; give them values so their gradients and uses show.
            for (i, info) in model.info.clone().iter().enumerate() {
                if info.name.ends_with(".bias") {
                    let v: Vec<f32> = (0..info.numel())
                        .map(|j| 0.05 * (j % 7) as f32 - 0.1)
                        .collect();
                    model.params[i] = be.upload(&v);
                }
            }
            let mut ws = model.workspace_with(&be, b, t, recompute, 0);
            model.zero_grads(&be);
            model.forward(&be, &mut ws, &c.inputs, &c.doc_ids);
            let loss = model.loss(&be, &mut ws, &c.targets, &c.mask, 0.5);
            model.backward(&be, &mut ws, &c.inputs, &c.doc_ids);
            // What the layers keep: the cheap activations, and everything else but x.
            let cheap: usize = ws
                .layers
                .iter()
                .map(|a| a.xn1.len() + a.xn2.len() + a.act.len())
                .sum();
            let rest: usize = ws
                .layers
                .iter()
                .map(|a| {
                    a.q.len()
                        + a.k.len()
                        + a.v.len()
                        + a.att.len()
                        + a.h.len()
                        + a.gate.len()
                        + a.up.len()
                })
                .sum();
            (loss, model.grads.clone(), cheap, rest)
        };
        let (l0, g0, cheap0, rest0) = run(Recompute::None);
        assert!(cheap0 > 0 && rest0 > 0);
        assert!(g0.iter().flatten().any(|&x| x != 0.0));
        for (mode, keeps_rest) in [(Recompute::Norms, true), (Recompute::Full, false)] {
            let (l1, g1, cheap1, rest1) = run(mode);
            assert_eq!(l0.to_bits(), l1.to_bits(), "{mode:?}: loss");
            assert_eq!(
                (cheap1, rest1 > 0),
                (0, keeps_rest),
                "{mode:?}: what the layers keep"
            );
            for (i, (a, b)) in g0.iter().zip(&g1).enumerate() {
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{mode:?}: gradient of {} differs",
                    cfg.params()[i].name
                );
            }
        }
    }
}

#[test]
fn gradients_do_not_cross_documents_or_masked_targets() {
    // Changing a token of document 0 must not change the loss of tokens in document 1 when only
    // document 1's targets are in the loss.
    let be = CpuBackend::<f64>::new();
    let cfg = tiny_cfg(false);
    let model = Model::new(&be, &cfg, 4);
    let (b, t) = (1, 7);
    let mut c = case(b, t);
    c.doc_ids = vec![0, 0, 0, 1, 1, 1, 1];
    c.mask = vec![0, 0, 0, 1, 1, 1, 1];
    let mut ws = model.workspace(&be, b, t);
    let base = loss_f64(&model, &be, &mut ws, &c);
    c.inputs[1] = (c.inputs[1] + 1) % 37;
    c.targets[0] = (c.targets[0] + 5) % 37;
    assert_eq!(loss_f64(&model, &be, &mut ws, &c), base);
}

#[test]
fn kv_cache_generation_matches_full_recomputation() {
    let be = CpuBackend::<f32>::new();
    let cfg = tiny_cfg(false);
    let model = Model::new(&be, &cfg, 8);
    let prompt = vec![3u32, 14, 15, 9, 2];
    let generated = model.generate(&be, &prompt, 8, &[], generate::Sampling::default());
    assert_eq!(generated.len(), 8);
    // Greedy by full forward passes over the growing sequence.
    let mut seq = prompt.clone();
    for &g in &generated {
        let t = seq.len();
        let mut ws = model.workspace(&be, 1, t);
        model.forward(&be, &mut ws, &seq, &vec![0; t]);
        let logits = be.download(&ws.logits);
        let last = &logits[(t - 1) * 37..t * 37];
        let argmax = last
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |m, (i, &x)| if x > m.1 { (i, x) } else { m })
            .0;
        assert_eq!(argmax as u32, g);
        seq.push(g);
    }
}

#[test]
fn overfits_one_batch() {
    let be = CpuBackend::<f32>::new();
    let cfg = tiny_cfg(true);
    let mut model = Model::new(&be, &cfg, 1);
    let (b, t) = (2, 12);
    let c = case(b, t);
    let mask = vec![1u8; b * t];
    let mut ws = model.workspace(&be, b, t);
    let mut m: Vec<Vec<f32>> = model.info.iter().map(|p| vec![0.0; p.numel()]).collect();
    let mut v = m.clone();
    let mut losses = Vec::new();
    for step in 1..=200u64 {
        model.zero_grads(&be);
        model.forward(&be, &mut ws, &c.inputs, &c.doc_ids);
        let loss =
            model.loss(&be, &mut ws, &c.targets, &mask, 1.0 / (b * t) as f32) / (b * t) as f64;
        model.backward(&be, &mut ws, &c.inputs, &c.doc_ids);
        losses.push(loss);
        let hp = crate::backend::AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            step,
            grad_scale: 1.0,
        };
        model.adamw_step(&be, &mut m, &mut v, hp);
    }
    // Targets are random, so only memorisation brings the loss down; document masking limits
    // what each position sees, but every (input prefix, position) here is distinct.
    assert!(losses[0] > 3.0, "{}", losses[0]);
    assert!(
        *losses.last().unwrap() < 0.05,
        "did not overfit: {:?}",
        &losses[losses.len() - 5..]
    );
}
