//! Numerical parity with Hugging Face transformers, a reference nobody here wrote.
//!
//! `scripts/hf_parity.py make --out DIR` builds small random Llama-3-style and Mistral models with
//! transformers and dumps logits, loss and every parameter gradient for a fixed batch. This test
//! loads each with kiln's importer and matches on the CPU backend in f32 (relative error ≤ 1e-4
//! for logits and loss, ≤ 1e-3 for gradients), then exports each model back (fp32) to
//! `DIR/<case>/export` for `scripts/hf_parity.py check-export`, which reloads it in transformers.
//! `.ci/run` runs all three steps. Without `KILN_HF_PARITY_DIR` the test says it is skipped.
//!
//! Generation: for each case, kiln's greedy tokens after prompts of different lengths must equal
//! transformers' `generate` token for token, from the batched engine run unbatched (one slot),
//! batched with continuous batching, and in static batches, and from `Model::generate`.

use std::io::Write;
use std::path::Path;

mod common;

use common::rel_err;
use kiln::backend::cpu::CpuBackend;
use kiln::backend::Backend;
use kiln::model::Model;
use kiln::train::checkpoint::{read_safetensors, NamedTensor};

fn check_case(dir: &Path) -> Vec<String> {
    let case = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut report = Vec::new();
    let (cfg, host) =
        kiln::hf::load(&dir.join("hf"), None).unwrap_or_else(|e| panic!("{case}: {e:#}"));
    let batch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let rows = |k: &str| -> Vec<Vec<u32>> {
        batch[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect()
    };
    let (inputs, targets) = (rows("input_ids"), rows("targets"));
    let (b, t) = (inputs.len(), inputs[0].len());
    let flat = |r: &[Vec<u32>]| r.iter().flatten().copied().collect::<Vec<u32>>();
    let (inputs, targets) = (flat(&inputs), flat(&targets));
    let reference: std::collections::HashMap<String, NamedTensor> =
        read_safetensors(&dir.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();

    let be = CpuBackend::<f32>::new();
    let mut model = Model::from_host(&be, &cfg, &host);
    let mut ws = model.workspace(&be, b, t);
    model.zero_grads(&be);
    let docs = vec![0u32; b * t];
    model.forward(&be, &mut ws, &inputs, &docs);
    let logits = be.download(&ws.logits);
    let e = rel_err(&logits, &reference["logits"].data);
    report.push(format!("{case}: logits {e:.2e}"));
    assert!(e <= 1e-4, "{case}: logits relative error {e:.3e} > 1e-4");
    let mask = vec![1u8; b * t];
    let loss = model.loss(&be, &mut ws, &targets, &mask, 1.0 / (b * t) as f32) / (b * t) as f64;
    let want = reference["loss"].data[0] as f64;
    let e = ((loss - want) / want).abs();
    report.push(format!("{case}: loss {loss:.6} vs {want:.6} ({e:.2e})"));
    assert!(e <= 1e-4, "{case}: loss {loss} vs transformers {want}");
    model.backward(&be, &mut ws, &inputs, &docs);
    let mut worst = (0.0f64, String::new());
    let mut groups: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for (i, p) in model.info.iter().enumerate() {
        let key = format!("grad.{}", p.name);
        let Some(r) = reference.get(&key) else {
            panic!("{case}: transformers has no gradient {key}");
        };
        let e = rel_err(&be.download(&model.grads[i]), &r.data);
        assert!(e <= 1e-3, "{case}: {key} relative error {e:.3e} > 1e-3");
        if e > worst.0 {
            worst = (e, p.name.clone());
        }
        // Group by tensor kind: the name without its layer index.
        let group = p
            .name
            .split('.')
            .filter(|part| part.parse::<usize>().is_err())
            .collect::<Vec<_>>()
            .join(".");
        let g = groups.entry(group).or_insert(0.0);
        *g = g.max(e);
    }
    report.push(format!(
        "{case}: worst gradient {:.2e} ({})",
        worst.0, worst.1
    ));
    for (group, e) in groups {
        report.push(format!("{case}:   grad {group}: {e:.2e}"));
    }

    // Export (fp32) for the transformers reload check.
    let tensors: Vec<NamedTensor> = model
        .info
        .iter()
        .zip(&model.params)
        .map(|(p, buf)| NamedTensor {
            name: p.name.clone(),
            shape: p.shape.clone(),
            data: be.download(buf),
        })
        .collect();
    let opts = kiln::hf::ExportOptions {
        bf16: false,
        shard_bytes: 1 << 20,
        tokenizer: None,
        bos_token_id: None,
        eos_token_id: None,
        source: None,
    };
    kiln::hf::export(&dir.join("export"), &cfg, &tensors, &opts)
        .unwrap_or_else(|e| panic!("{case}: export: {e:#}"));
    // The export loads back into kiln with identical parameters.
    let (cfg2, host2) = kiln::hf::load(&dir.join("export"), None).unwrap();
    assert_eq!(cfg2.params(), cfg.params());
    assert!(
        host2 == host,
        "{case}: export does not round-trip bit-exactly"
    );
    report
}

#[test]
fn kiln_matches_transformers_logits_loss_and_gradients() {
    let Ok(root) = std::env::var("KILN_HF_PARITY_DIR") else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED hf parity: set KILN_HF_PARITY_DIR (made by scripts/hf_parity.py make)"
        );
        return;
    };
    let root = Path::new(&root);
    let cases: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(root.join("cases.json")).unwrap()).unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        for line in check_case(&root.join(&case)) {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}

fn check_generation(dir: &Path) -> String {
    use kiln::model::batched::{Engine, GenLimits, Request};
    use kiln::model::generate::Sampling;
    let case = dir.file_name().unwrap().to_string_lossy().into_owned();
    let (cfg, host) = kiln::hf::load(&dir.join("hf"), None).unwrap();
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let prompts: Vec<Vec<u32>> = g["prompts"].as_array().unwrap().iter().map(ids).collect();
    let want: Vec<Vec<u32>> = g["generated"].as_array().unwrap().iter().map(ids).collect();
    let be = CpuBackend::<f32>::new();
    let model = Model::for_inference(&be, &cfg, &host);
    // The whole context, past a sliding window: the KV cache applies it.
    let context = cfg.max_seq_len;
    for (slots, continuous) in [(1, true), (3, true), (3, false), (8, true)] {
        let limits = GenLimits {
            slots,
            context,
            prefill_tokens: 16,
            continuous,
        };
        let mut e = Engine::new(&be, &model, limits, vec![]).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            e.submit(Request {
                id: i as u64,
                prompt: p.clone(),
                max_new: want[i].len(),
                sampling: Sampling::default(),
            })
            .unwrap();
        }
        let mut got = e.run_all();
        got.sort_by_key(|f| f.id);
        for (f, w) in got.iter().zip(&want) {
            assert_eq!(
                &f.tokens, w,
                "{case}: prompt {} ({slots} slots, continuous {continuous}) differs from transformers",
                f.id
            );
        }
    }
    let reference = Model::from_host(&be, &cfg, &host);
    for (p, w) in prompts.iter().zip(&want) {
        let got = reference.generate(&be, p, w.len(), &[], Sampling::default());
        assert_eq!(&got, w, "{case}: Model::generate differs from transformers");
    }
    // Where the window is shorter than prompt + generation, ignoring it changes the output: the
    // comparison above could fail.
    if let Some(window) = cfg.sliding_window {
        let past = prompts
            .iter()
            .zip(&want)
            .any(|(p, w)| p.len() + w.len() > window);
        if past {
            let full = kiln::model::ModelConfig {
                sliding_window: None,
                ..cfg.clone()
            };
            let unwindowed = Model::from_host(&be, &full, &host);
            let differs = prompts
                .iter()
                .zip(&want)
                .any(|(p, w)| &unwindowed.generate(&be, p, w.len(), &[], Sampling::default()) != w);
            assert!(
                differs,
                "{case}: generation without the sliding window of {window} gives the same tokens; the case does not test it"
            );
        }
    }
    format!(
        "{case}: greedy generation equals transformers generate: {} prompts (lengths {:?}) x {} tokens, batched/unbatched/static; smallest top-2 logit gap {:.1e}",
        prompts.len(),
        prompts.iter().map(Vec::len).collect::<Vec<_>>(),
        want[0].len(),
        g["min_margin"].as_f64().unwrap_or(f64::NAN)
    )
}

#[test]
fn greedy_generation_matches_transformers_generate_batched_and_unbatched() {
    let Ok(root) = std::env::var("KILN_HF_PARITY_DIR") else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED hf generation parity: set KILN_HF_PARITY_DIR (made by scripts/hf_parity.py make)"
        );
        return;
    };
    let root = Path::new(&root);
    let cases: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(root.join("cases.json")).unwrap()).unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let line = check_generation(&root.join(&case));
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}
