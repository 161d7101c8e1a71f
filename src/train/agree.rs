//! Ranks agree or stop. At start-up every rank of a data-parallel run describes what it is about
//! to train as `key → value`: the resolved config (less the keys that may differ per rank,
//! [`PER_RANK_KEYS`]), every data file with its size, the tokenizer's fingerprint, the kiln
//! version and the `--resume` choice. Rank 0's description goes to every rank over the
//! communicator; each rank compares it with its own, and one all-reduce of the verdicts stops
//! every rank when any differs, all with the first differing rank's message, which names the keys:
//! `rank 1's config differs from rank 0's: train.lr (rank 1: 0.001, rank 0: 0.01)`.
//!
//! It does not compare what each rank derives from these (the model, the optimizer state): equal
//! inputs and one kiln version give equal runs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::backend::Backend;
use crate::config::Config;
use crate::data::loader::expand_glob;
use crate::dist::{broadcast_bytes, Communicator, PeerStopped};

/// Config keys that may legitimately differ between ranks: each process's own thread count,
/// device memory and peak rate (memory plan, MFU) and how long it waits for the others.
pub const PER_RANK_KEYS: &[&str] = &[
    "train.threads",
    "train.device_memory_gb",
    "train.peak_tflops",
    "train.comm_timeout_s",
];

/// What one rank is about to train, key by key (see the module doc).
pub type Description = BTreeMap<String, String>;

/// This rank's description: `config_text` is the resolved config (TOML), `resume` the `--resume`
/// choice in words.
pub fn describe(
    cfg: &Config,
    config_text: &str,
    tokenizer_fingerprint: u64,
    resume: &str,
) -> Result<Description> {
    let mut d = Description::new();
    let v: toml::Value = toml::from_str(config_text).context("the resolved config")?;
    super::trainer::flatten_toml("", &v, &mut d);
    d.retain(|k, _| !PER_RANK_KEYS.contains(&k.as_str()));
    for s in &cfg.data.sources {
        // The loader opens the same files (relative globs from the working directory).
        let files = expand_glob(&s.path, Path::new(".")).unwrap_or_default();
        d.insert(format!("shards of {}", s.name), files.len().to_string());
        for (i, f) in files.iter().enumerate() {
            let bytes = std::fs::metadata(f).map_or(0, |m| m.len());
            d.insert(
                format!("shard {i} of {}", s.name),
                format!("{} ({bytes} bytes)", f.display()),
            );
        }
    }
    d.insert(
        "tokenizer fingerprint".into(),
        format!("{tokenizer_fingerprint:016x}"),
    );
    d.insert("kiln version".into(), env!("CARGO_PKG_VERSION").into());
    d.insert("--resume".into(), resume.into());
    Ok(d)
}

/// The keys where `mine` differs from `rank0`, with both values (`(unset)` where one lacks it).
pub fn differences(mine: &Description, rank0: &Description) -> Vec<(String, String, String)> {
    let unset = || "(unset)".to_string();
    let keys: std::collections::BTreeSet<&String> = mine.keys().chain(rank0.keys()).collect();
    keys.into_iter()
        .filter(|k| mine.get(*k) != rank0.get(*k))
        .map(|k| {
            let show = |d: &Description| d.get(k).cloned().unwrap_or_else(unset);
            (k.clone(), show(mine), show(rank0))
        })
        .collect()
}

/// What a differing key belongs to, for the message's first words.
fn kind_of(key: &str) -> &'static str {
    if key.starts_with("shard") {
        "data"
    } else if key.starts_with("tokenizer") {
        "tokenizer"
    } else if key.starts_with("kiln") {
        "kiln version"
    } else if key == "--resume" {
        "--resume"
    } else {
        "config"
    }
}

/// The one line naming what `rank` has that rank 0 does not.
pub fn mismatch_message(rank: usize, diffs: &[(String, String, String)]) -> String {
    const SHOWN: usize = 6;
    let mut kinds: Vec<&str> = Vec::new();
    for (k, _, _) in diffs {
        if !kinds.contains(&kind_of(k)) {
            kinds.push(kind_of(k));
        }
    }
    let cut = |v: &str| {
        if v.chars().count() > 80 {
            format!("{}…", v.chars().take(79).collect::<String>())
        } else {
            v.to_string()
        }
    };
    let mut keys: Vec<String> = diffs
        .iter()
        .take(SHOWN)
        .map(|(k, mine, r0)| format!("{k} (rank {rank}: {}, rank 0: {})", cut(mine), cut(r0)))
        .collect();
    if diffs.len() > SHOWN {
        keys.push(format!("and {} more", diffs.len() - SHOWN));
    }
    format!(
        "rank {rank}'s {} {} from rank 0's: {}. Start every rank with the same config, data, tokenizer and kiln build",
        kinds.join(" and "),
        if kinds.len() == 1 { "differs" } else { "differ" },
        keys.join(", ")
    )
}

/// Compare this rank's description with rank 0's; every rank returns the same verdict. Every rank
/// of `comm` must call it at the same point.
pub fn check<B: Backend>(comm: &dyn Communicator<B>, mine: &Description) -> Result<()> {
    let (rank, world) = (comm.rank(), comm.world());
    let bytes = serde_json::to_vec(mine).context("describing this rank")?;
    let rank0 = broadcast_bytes(comm, &bytes, 0)?;
    let rank0: Description =
        serde_json::from_slice(&rank0).context("reading rank 0's description")?;
    let diffs = differences(mine, &rank0);
    let mut verdicts = vec![0.0; world];
    verdicts[rank] = f64::from(u8::from(!diffs.is_empty()));
    comm.all_reduce_host(&mut verdicts)?;
    let differing: Vec<usize> = (0..world).filter(|&r| verdicts[r] > 0.0).collect();
    let Some(&first) = differing.first() else {
        return Ok(());
    };
    // Every rank stops with the first differing rank's message.
    let mine_msg = if rank == first {
        mismatch_message(rank, &diffs)
    } else {
        String::new()
    };
    let msg = broadcast_bytes(comm, mine_msg.as_bytes(), first)?;
    let mut msg = String::from_utf8_lossy(&msg).into_owned();
    if differing.len() > 1 {
        msg.push_str(&format!(" (ranks {differing:?} all differ from rank 0)"));
    }
    if rank == first {
        bail!(msg);
    }
    Err(PeerStopped::new(rank, msg).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(pairs: &[(&str, &str)]) -> Description {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn differing_keys_are_named_with_both_values_and_their_kind() {
        let r0 = desc(&[("train.lr", "0.01"), ("kiln version", "0.1.0"), ("x", "1")]);
        let r1 = desc(&[("train.lr", "0.001"), ("kiln version", "0.2.0"), ("y", "1")]);
        let d = differences(&r1, &r0);
        let keys: Vec<&str> = d.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["kiln version", "train.lr", "x", "y"]);
        let m = mismatch_message(1, &d);
        assert!(
            m.starts_with("rank 1's kiln version and config differ from rank 0's: kiln version (rank 1: 0.2.0, rank 0: 0.1.0), train.lr (rank 1: 0.001, rank 0: 0.01), x (rank 1: (unset), rank 0: 1)"),
            "{m}"
        );
        assert!(differences(&r0, &r0).is_empty());
    }

    #[test]
    fn per_rank_keys_do_not_count() {
        let cfg = Config::load(None, &[]).unwrap();
        let text = toml::to_string(&cfg).unwrap();
        let mut other = cfg.clone();
        other.train.threads = 7;
        other.train.comm_timeout_s = 5.0;
        let a = describe(&cfg, &text, 1, "no").unwrap();
        let b = describe(&other, &toml::to_string(&other).unwrap(), 1, "no").unwrap();
        assert!(differences(&a, &b).is_empty());
        other.train.lr *= 2.0;
        let c = describe(&other, &toml::to_string(&other).unwrap(), 1, "no").unwrap();
        let d = differences(&c, &a);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, "train.lr");
    }
}
