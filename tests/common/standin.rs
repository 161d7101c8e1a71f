//! A stand-in instruction synthesizer for the CLI tests: a one-layer Llama whose layers are
//! identities and whose output head maps each token to a fixed successor, so that greedy decoding
//! after any prompt writes `OUTPUT` then EOS.

use std::path::{Path, PathBuf};

use kiln::data::synth_format::context_block;
use kiln::data::tokenizer::{train_byte_level_bpe, Tokenizer};
use kiln::model::ModelConfig;
use kiln::rng::Rng;
use kiln::train::checkpoint::NamedTensor;

/// What the stand-in writes (no spaces around the markers, so that no token repeats).
pub const OUTPUT: &str = "<QUE>Who is it?<ANS>Ada.</END>";

pub fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Ada number {i} was born in {}. {}",
                1800 + i,
                "She wrote notes. ".repeat(i % 7)
            )
        })
        .collect()
}

/// Tokenizer + stand-in synthesizer in `dir/model`.
pub fn make_model(dir: &Path) -> PathBuf {
    make_model_at(&dir.join("model"))
}

/// Tokenizer + stand-in synthesizer as a Hugging Face directory at `model`.
pub fn make_model_at(model: &Path) -> PathBuf {
    let model = model.to_path_buf();
    std::fs::create_dir_all(&model).unwrap();
    let corpus: Vec<String> = texts(50)
        .into_iter()
        .map(|t| format!("<s>{}{OUTPUT}</s>", context_block(&t)))
        .collect();
    let tok_path = model.join("tokenizer.json");
    train_byte_level_bpe(corpus.iter().map(String::as_str), 420, &tok_path).unwrap();
    // The synthesizer's markers as added tokens, one id each.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    let next = json["model"]["vocab"].as_object().unwrap().len();
    for (i, m) in ["<CON>", "</CON>", "<QUE>", "<ANS>", "</END>"]
        .iter()
        .enumerate()
    {
        json["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "id": next + i, "content": m, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": false
            }));
    }
    std::fs::write(&tok_path, json.to_string()).unwrap();
    let tok = Tokenizer::from_file(&tok_path, None, None).unwrap();
    let (bos, eos) = (tok.bos().unwrap(), tok.eos().unwrap());
    // The chain of successors: prompt's last token → the output's tokens → EOS.
    let mut prompt = vec![bos];
    tok.encode_into(&context_block("Anything at all."), &mut prompt)
        .unwrap();
    let mut chain = vec![*prompt.last().unwrap()];
    chain.extend(tok.encode(OUTPUT).unwrap());
    chain.push(eos);
    let mut seen = chain.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        chain.len(),
        "successor chain needs distinct tokens: {chain:?}"
    );

    let mut cfg: ModelConfig = toml::from_str(
        "dim = 64\nn_layers = 1\nn_heads = 4\nn_kv_heads = 2\nffn_dim = 96\nmax_seq_len = 1024\n",
    )
    .unwrap();
    cfg.resolve(tok.vocab_size() as usize).unwrap();
    let (v, d) = (cfg.vocab_size, cfg.dim);
    let mut rng = Rng::new(1);
    let mut normal = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u1, u2) = (rng.f64().max(1e-300), rng.f64());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect()
    };
    let embed = normal(v * d);
    let mut head = vec![0f32; v * d];
    for w in chain.windows(2) {
        let (from, to) = (w[0] as usize, w[1] as usize);
        for j in 0..d {
            head[to * d + j] = 10.0 * embed[from * d + j];
        }
    }
    let tensors: Vec<NamedTensor> = cfg
        .params()
        .into_iter()
        .map(|p| {
            let n = p.numel();
            let data = match p.name.as_str() {
                "model.embed_tokens.weight" => embed.clone(),
                "lm_head.weight" => head.clone(),
                // Layers add nothing to the residual stream: the last token alone decides.
                s if s.ends_with("o_proj.weight") || s.ends_with("down_proj.weight") => {
                    vec![0.0; n]
                }
                _ if p.shape.len() == 1 => vec![1.0; n],
                _ => normal(n).iter().map(|x| 0.1 * x).collect(),
            };
            NamedTensor {
                name: p.name,
                shape: p.shape,
                data,
            }
        })
        .collect();
    let opts = kiln::hf::ExportOptions {
        bf16: false,
        shard_bytes: 1 << 30,
        tokenizer: Some(model.join("tokenizer.json")),
        bos_token_id: Some(bos),
        eos_token_id: Some(eos),
        source: None,
    };
    kiln::hf::export(&model, &cfg, &tensors, &opts).unwrap();
    model
}
