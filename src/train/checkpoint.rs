//! Training checkpoints on disk: `root/step_000100/` holds `model.safetensors` (fp32 master
//! weights, Hugging Face tensor names) and `optimizer.safetensors` (`{param}.exp_avg`,
//! `{param}.exp_avg_sq`) or, from a sharded run (ZeRO-1, 2), one model shard and one optimizer
//! shard per rank (`model.rank00000.safetensors` with `model.index.json`,
//! `optimizer.rank00000.safetensors`, …, joined into whole tensors on load), `state.json`
//! (`{"step": .., ...the trainer's state...}`) and, written last, an empty `DONE` marker. A checkpoint is assembled in `root/.step_000100.tmp/`, every file
//! fsynced, the directory renamed into place, and only then marked done, so a crash leaves either
//! a complete checkpoint or one that `list`/`latest`/`load` ignore or refuse. The safetensors files
//! themselves are read and written by `crate::safetensors_io`. It does not know
//! what the state object means (the trainer does) and does not export to Hugging Face layout (a
//! separate command does).

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::fsutil::{read_file, sync_parent, write_atomic};
pub use crate::safetensors_io::{
    f32_to_bf16, read_safetensors, write_safetensors, write_safetensors_as, NamedTensor,
};

/// File names inside a checkpoint directory.
const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const MODEL_INDEX_FILE: &str = "model.index.json";
const STATE_FILE: &str = "state.json";
const DONE_FILE: &str = "DONE";

/// Everything needed to resume training at `step`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub step: u64,
    /// fp32 master weights, Hugging Face names.
    pub model: Vec<NamedTensor>,
    /// Adam moments, named `{param}.exp_avg` / `{param}.exp_avg_sq`.
    pub optimizer: Vec<NamedTensor>,
    /// The trainer's state (data cursor, RNG, config and hash, world size): a JSON object, or
    /// `null` for none. A `"step"` key in it is replaced by `step` on save and removed on load.
    pub state: serde_json::Value,
}

/// `step_000100`: the directory name of a checkpoint.
fn step_dir_name(step: u64) -> String {
    format!("step_{step:06}")
}

/// The step of a directory named exactly as `step_dir_name` writes it, else `None`.
fn parse_step_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step_")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step: u64 = digits.parse().ok()?;
    (step_dir_name(step) == name).then_some(step)
}

/// Write `root/step_{step:06}/` with model.safetensors, optimizer.safetensors, state.json, then
/// DONE. Everything is written into a temporary directory `root/.step_{step:06}.tmp/`, every file
/// fsynced, the directory renamed into place, the parent fsynced, and the `DONE` marker written
/// last (inside the final directory, fsynced). Then prunes all but the newest `keep_last` complete
/// checkpoints (keep_last = 0 means keep all; the checkpoint just written is never pruned).
/// Returns the checkpoint directory. Overwrites an existing step dir.
pub fn save(root: &Path, ckpt: &Checkpoint, keep_last: usize) -> Result<PathBuf> {
    let tmp = begin(root, ckpt.step)?;
    write_parts(&tmp, ckpt, true, true)?;
    commit(root, ckpt.step, keep_last)
}

/// The temporary directory `root/.step_{step:06}.tmp/` a checkpoint is assembled in; with
/// [`begin`], [`write_parts`], [`write_model_shard`], [`write_optimizer_shard`] and [`commit`] several ranks write one
/// checkpoint (rank 0 begins and commits; barriers in between are the caller's).
pub fn tmp_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!(".{}.tmp", step_dir_name(step)))
}

/// Create the (empty) temporary directory of step `step`'s checkpoint.
pub fn begin(root: &Path, step: u64) -> Result<PathBuf> {
    fs::create_dir_all(root)
        .map_err(|e| anyhow!("{}: cannot create checkpoint root: {e}", root.display()))?;
    let tmp = tmp_dir(root, step);
    // A crashed earlier save of this step may have left a partial temporary directory.
    remove_dir_if_exists(&tmp)?;
    fs::create_dir(&tmp).map_err(|e| anyhow!("{}: cannot create: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Write state.json and (with `with_model`, `with_optimizer`) model.safetensors and
/// optimizer.safetensors into the temporary directory `tmp`.
pub fn write_parts(
    tmp: &Path,
    ckpt: &Checkpoint,
    with_model: bool,
    with_optimizer: bool,
) -> Result<()> {
    let state = state_json(ckpt)?;
    if with_model {
        let format_pt = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&tmp.join(MODEL_FILE), &ckpt.model, Some(format_pt))?;
    }
    if with_optimizer {
        write_safetensors(&tmp.join(OPTIMIZER_FILE), &ckpt.optimizer, None)?;
    }
    write_atomic(&tmp.join(STATE_FILE), &state)
}

/// One rank's share of a sharded optimizer (ZeRO-1 and 2): pieces (parameter name, offset
/// within it, exp_avg, exp_avg_sq), written as `optimizer.rank{rank:05}.safetensors` with 1-D
/// tensors `{param}.exp_avg@{offset}` and `{param}.exp_avg_sq@{offset}`. [`load`] joins the
/// shards of all ranks back into whole tensors, so a run can resume with any world size.
pub fn write_optimizer_shard(
    tmp: &Path,
    rank: usize,
    pieces: &[(String, usize, Vec<f32>, Vec<f32>)],
) -> Result<()> {
    let mut tensors = Vec::with_capacity(2 * pieces.len());
    for (name, off, m, v) in pieces {
        for (suffix, data) in [("exp_avg", m), ("exp_avg_sq", v)] {
            tensors.push(piece(&format!("{name}.{suffix}"), *off, data));
        }
    }
    write_safetensors(
        &tmp.join(shard_file_name("optimizer", rank)),
        &tensors,
        None,
    )
}

/// One rank's share of sharded master weights: pieces (parameter name, offset, fp32 values) as
/// `model.rank{rank:05}.safetensors` with 1-D tensors `{param}@{offset}`. Rank 0 also writes
/// [`write_model_index`]; [`load`] joins the shards into whole tensors.
pub fn write_model_shard(
    tmp: &Path,
    rank: usize,
    pieces: &[(String, usize, Vec<f32>)],
) -> Result<()> {
    let tensors: Vec<NamedTensor> = pieces
        .iter()
        .map(|(name, off, data)| piece(name, *off, data))
        .collect();
    let format_pt = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(
        &tmp.join(shard_file_name("model", rank)),
        &tensors,
        Some(format_pt),
    )
}

/// `model.index.json` of sharded master weights: how many shard files there are and the shape of
/// every tensor they piece together.
pub fn write_model_index(tmp: &Path, shards: usize, shapes: &[(String, Vec<usize>)]) -> Result<()> {
    let index = ModelIndex {
        shards,
        tensors: shapes.iter().cloned().collect(),
    };
    let text = serde_json::to_vec_pretty(&index)?;
    write_atomic(&tmp.join(MODEL_INDEX_FILE), &text)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ModelIndex {
    shards: usize,
    tensors: std::collections::BTreeMap<String, Vec<usize>>,
}

fn piece(name: &str, off: usize, data: &[f32]) -> NamedTensor {
    NamedTensor {
        name: format!("{name}@{off}"),
        shape: vec![data.len()],
        data: data.to_vec(),
    }
}

/// The file a checkpoint's master weights come from, for naming it in errors: model.safetensors,
/// or the index of a sharded one.
pub fn model_source(dir: &Path) -> PathBuf {
    let index = dir.join(MODEL_INDEX_FILE);
    if dir.join(MODEL_FILE).exists() || !index.exists() {
        dir.join(MODEL_FILE)
    } else {
        index
    }
}

/// As [`model_source`] for the Adam moments: optimizer.safetensors, or the ranks' shards.
pub fn optimizer_source(dir: &Path) -> PathBuf {
    if dir.join(OPTIMIZER_FILE).exists() {
        dir.join(OPTIMIZER_FILE)
    } else {
        dir.join("optimizer.rank*.safetensors")
    }
}

fn shard_file_name(what: &str, rank: usize) -> String {
    format!("{what}.rank{rank:05}.safetensors")
}

/// Rename the temporary directory of step `step` into place, mark it DONE, prune old ones.
pub fn commit(root: &Path, step: u64, keep_last: usize) -> Result<PathBuf> {
    let dir = root.join(step_dir_name(step));
    let tmp = tmp_dir(root, step);
    // Overwrite: un-mark the old checkpoint first so a crash while deleting it never leaves a
    // half-deleted directory that still claims to be complete.
    if dir.exists() {
        remove_checkpoint_dir(&dir)?;
    }
    fs::rename(&tmp, &dir)
        .map_err(|e| anyhow!("{}: cannot rename to {}: {e}", tmp.display(), dir.display()))?;
    sync_parent(&dir);
    write_atomic(&dir.join(DONE_FILE), b"")?;

    if keep_last > 0 {
        let complete = list(root)?;
        let excess = complete.len().saturating_sub(keep_last);
        for (s, old) in complete.into_iter().take(excess) {
            if s != step {
                remove_checkpoint_dir(&old)?;
            }
        }
    }
    Ok(dir)
}

/// The master weights of a checkpoint directory: model.safetensors, or the shards of every rank
/// joined into whole tensors as `model.index.json` describes them.
fn read_model(dir: &Path) -> Result<Vec<NamedTensor>> {
    let whole = dir.join(MODEL_FILE);
    let index_path = dir.join(MODEL_INDEX_FILE);
    if whole.exists() || !index_path.exists() {
        return read_safetensors(&whole);
    }
    let bytes = read_file(&index_path)?;
    let index: ModelIndex = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("{}: not a model index: {e}", index_path.display()))?;
    let files: Vec<PathBuf> = (0..index.shards)
        .map(|r| dir.join(shard_file_name("model", r)))
        .collect();
    for f in &files {
        if !f.exists() {
            bail!(
                "{}: missing file (model.index.json lists {} model shards)",
                f.display(),
                index.shards
            );
        }
    }
    join_pieces(dir, &files, index.tensors.into_iter().collect(), "model")
}

/// The optimizer of a checkpoint directory: optimizer.safetensors, or the shards of every rank
/// joined into whole `{param}.exp_avg` / `{param}.exp_avg_sq` tensors shaped like `model`'s.
/// Also returns the number of shard files (0 for an unsharded optimizer).
fn read_optimizer(dir: &Path, model: &[NamedTensor]) -> Result<(Vec<NamedTensor>, usize)> {
    let whole = dir.join(OPTIMIZER_FILE);
    if whole.exists() {
        return Ok((read_safetensors(&whole)?, 0));
    }
    let mut shards = Vec::new();
    while dir
        .join(shard_file_name("optimizer", shards.len()))
        .exists()
    {
        shards.push(dir.join(shard_file_name("optimizer", shards.len())));
    }
    if shards.is_empty() {
        bail!("{}: missing file", whole.display());
    }
    let targets = model
        .iter()
        .flat_map(|t| {
            ["exp_avg", "exp_avg_sq"].map(|s| (format!("{}.{s}", t.name), t.shape.clone()))
        })
        .collect();
    Ok((
        join_pieces(dir, &shards, targets, "optimizer")?,
        shards.len(),
    ))
}

/// Whole tensors `targets` (name, shape) from 1-D pieces `NAME@OFFSET` in `files`, every
/// element covered.
fn join_pieces(
    dir: &Path,
    files: &[PathBuf],
    targets: Vec<(String, Vec<usize>)>,
    what: &str,
) -> Result<Vec<NamedTensor>> {
    let mut out: Vec<NamedTensor> = Vec::with_capacity(targets.len());
    let mut index: HashMap<String, (usize, Vec<bool>)> = HashMap::new();
    for (name, shape) in targets {
        let n = shape.iter().product();
        index.insert(name.clone(), (out.len(), vec![false; n]));
        out.push(NamedTensor {
            name,
            shape,
            data: vec![0.0; n],
        });
    }
    for path in files {
        for t in read_safetensors(path)? {
            let parsed = t
                .name
                .rsplit_once('@')
                .and_then(|(n, o)| o.parse::<usize>().ok().map(|o| (n.to_string(), o)));
            let Some((name, off)) = parsed else {
                bail!("{}: tensor {} is not NAME@OFFSET", path.display(), t.name);
            };
            let Some((i, seen)) = index.get_mut(&name) else {
                bail!(
                    "{}: tensor {} belongs to no parameter of the model",
                    path.display(),
                    t.name
                );
            };
            let dst = &mut out[*i].data;
            if off + t.data.len() > dst.len() {
                bail!(
                    "{}: tensor {} runs past the end of {name}",
                    path.display(),
                    t.name
                );
            }
            dst[off..off + t.data.len()].copy_from_slice(&t.data);
            seen[off..off + t.data.len()]
                .iter_mut()
                .for_each(|x| *x = true);
        }
    }
    for t in &out {
        if !index[&t.name].1.iter().all(|&x| x) {
            bail!(
                "{}: the {} {what} shards do not cover all of {}: a shard file is missing",
                dir.display(),
                files.len(),
                t.name
            );
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `state.json` bytes: the caller's state object with `"step"` set.
fn state_json(ckpt: &Checkpoint) -> Result<Vec<u8>> {
    let mut object = match &ckpt.state {
        serde_json::Value::Object(map) => map.clone(),
        serde_json::Value::Null => serde_json::Map::new(),
        other => bail!(
            "checkpoint state for step {} must be a JSON object, got {}",
            ckpt.step,
            json_kind(other)
        ),
    };
    object.insert("step".into(), ckpt.step.into());
    let mut bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(object))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Remove the DONE marker (durably), then the whole directory.
fn remove_checkpoint_dir(dir: &Path) -> Result<()> {
    let done = dir.join(DONE_FILE);
    match fs::remove_file(&done) {
        Ok(()) => sync_parent(&done),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => bail!("{}: cannot remove: {e}", done.display()),
    }
    remove_dir_if_exists(dir)
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("{}: cannot remove: {e}", dir.display()),
    }
}

/// Complete checkpoints (those with DONE) under root, sorted by step. A missing root has none.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("{}: cannot list checkpoints: {e}", root.display()),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| anyhow!("{}: cannot list checkpoints: {e}", root.display()))?;
        let Some(step) = entry.file_name().to_str().and_then(parse_step_dir_name) else {
            continue;
        };
        let dir = entry.path();
        if dir.is_dir() && dir.join(DONE_FILE).is_file() {
            found.push((step, dir));
        }
    }
    found.sort_by_key(|(step, _)| *step);
    Ok(found)
}

/// The newest complete checkpoint, if any.
pub fn latest(root: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(list(root)?.pop())
}

/// Load a checkpoint directory (root/step_000100 or any dir with the three files + DONE).
/// Tensors come back sorted by name; `step` comes from state.json.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!("{}: not a checkpoint directory", dir.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("{}: no such checkpoint directory", dir.display())
        }
        Err(e) => bail!("{}: cannot open checkpoint: {e}", dir.display()),
    }
    if !dir.join(DONE_FILE).is_file() {
        bail!("{}: incomplete checkpoint (no DONE marker)", dir.display());
    }
    let model = read_model(dir)?;
    let (optimizer, _shards) = read_optimizer(dir, &model)?;

    let path = dir.join(STATE_FILE);
    let bytes = read_file(&path)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let serde_json::Value::Object(mut object) = value else {
        bail!(
            "{}: expected a JSON object, got {}",
            path.display(),
            json_kind(&value)
        );
    };
    let step = object
        .remove("step")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| {
            anyhow!(
                "{}: missing or invalid \"step\" (expected a non-negative integer)",
                path.display()
            )
        })?;
    Ok(Checkpoint {
        step,
        model,
        optimizer,
        state: serde_json::Value::Object(object),
    })
}

/// Pick tensors `{name}{suffix}` in parameter order, checking every shape.
pub fn tensors_in_order(
    file: &Path,
    info: &[crate::model::ParamInfo],
    tensors: Vec<NamedTensor>,
    suffix: &str,
) -> Result<Vec<Vec<f32>>> {
    let mut by_name: std::collections::HashMap<String, NamedTensor> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    info.iter()
        .map(|p| {
            let name = format!("{}{suffix}", p.name);
            let Some(t) = by_name.remove(&name) else {
                bail!("{}: no tensor {name}: the checkpoint is from another model shape", file.display());
            };
            if t.shape != p.shape {
                bail!(
                    "{}: tensor {name} has shape {:?}, the config's model needs {:?}: the checkpoint is from another model shape",
                    file.display(),
                    t.shape,
                    p.shape
                );
            }
            Ok(t.data)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors_io::tests::{error_of, tensor};
    use safetensors::SafeTensors;
    use serde_json::json;

    /// Values that a lossy path would mangle: NaN with a payload, signed zero, subnormals, inf.
    fn awkward_values() -> Vec<f32> {
        vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            f32::from_bits(1),           // smallest subnormal
            f32::from_bits(0x807f_ffff), // largest negative subnormal
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7fc1_2345), // quiet NaN with payload
            f32::from_bits(0xff80_0001), // negative signalling NaN
            std::f32::consts::PI,
            1e-30,
        ]
    }

    fn checkpoint(step: u64) -> Checkpoint {
        let q = "model.layers.0.self_attn.q_proj.weight";
        let mut weird = tensor("model.norm.weight", &[4, 4], 0);
        weird.data = awkward_values();
        Checkpoint {
            step,
            model: vec![tensor(q, &[3, 5], step as u32), weird],
            optimizer: vec![
                tensor(&format!("{q}.exp_avg"), &[3, 5], 1),
                tensor(&format!("{q}.exp_avg_sq"), &[3, 5], 2),
            ],
            state: json!({"data_cursor": {"shard": 3, "offset": 12345}, "rng": [1, 2, 3]}),
        }
    }

    fn sorted(mut tensors: Vec<NamedTensor>) -> Vec<NamedTensor> {
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        tensors
    }

    fn assert_bit_exact(a: &[NamedTensor], b: &[NamedTensor]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.name, y.name);
            assert_eq!(x.shape, y.shape);
            let xb: Vec<u32> = x.data.iter().map(|v| v.to_bits()).collect();
            let yb: Vec<u32> = y.data.iter().map(|v| v.to_bits()).collect();
            assert_eq!(xb, yb, "tensor {}", x.name);
        }
    }

    #[test]
    fn round_trip_is_bit_exact_and_keeps_state() {
        let root = tempfile::tempdir().unwrap();
        let ckpt = checkpoint(100);
        let dir = save(root.path(), &ckpt, 0).unwrap();
        assert_eq!(dir, root.path().join("step_000100"));
        let back = load(&dir).unwrap();
        assert_eq!(back.step, 100);
        assert_bit_exact(&back.model, &sorted(ckpt.model.clone()));
        assert_bit_exact(&back.optimizer, &sorted(ckpt.optimizer.clone()));
        assert_eq!(back.state, ckpt.state);
        let raw: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(raw["step"], 100);
        assert_eq!(raw["data_cursor"]["offset"], 12345);
        assert!(!root.path().join(".step_000100.tmp").exists());
    }

    #[test]
    fn safetensors_file_has_pt_format_and_is_readable_by_the_crate() {
        let root = tempfile::tempdir().unwrap();
        let dir = save(root.path(), &checkpoint(1), 0).unwrap();
        let bytes = fs::read(dir.join(MODEL_FILE)).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        let file = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.tensor("model.norm.weight").unwrap().shape(), &[4, 4]);
    }

    #[test]
    fn done_is_written_last_and_dirs_without_it_are_ignored_and_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = save(root.path(), &checkpoint(100), 0).unwrap();
        let mtime = |f: &str| fs::metadata(dir.join(f)).unwrap().modified().unwrap();
        for f in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
            assert!(mtime(f) <= mtime(DONE_FILE), "{f} newer than DONE");
        }
        // Only the four files remain: no temporary leftovers inside the directory.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [DONE_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE]);

        // A checkpoint that crashed before DONE: all files present, marker absent.
        let later = save(root.path(), &checkpoint(200), 0).unwrap();
        fs::remove_file(later.join(DONE_FILE)).unwrap();
        assert_eq!(list(root.path()).unwrap(), vec![(100, dir.clone())]);
        assert_eq!(latest(root.path()).unwrap(), Some((100, dir)));
        let e = error_of(load(&later));
        assert!(
            e.ends_with("step_000200: incomplete checkpoint (no DONE marker)"),
            "{e}"
        );
    }

    #[test]
    fn missing_root_and_directory_and_files_are_named() {
        let root = tempfile::tempdir().unwrap();
        let nowhere = root.path().join("nowhere");
        assert!(list(&nowhere).unwrap().is_empty());
        assert_eq!(latest(&nowhere).unwrap(), None);
        let e = error_of(load(&nowhere.join("step_000100")));
        assert!(
            e.ends_with("nowhere/step_000100: no such checkpoint directory"),
            "{e}"
        );

        let dir = save(root.path(), &checkpoint(100), 0).unwrap();
        fs::remove_file(dir.join(OPTIMIZER_FILE)).unwrap();
        let e = error_of(load(&dir));
        assert!(
            e.ends_with("step_000100/optimizer.safetensors: missing file"),
            "{e}"
        );
    }

    #[test]
    fn optimizer_shards_of_several_ranks_load_as_whole_tensors() {
        let root = tempfile::tempdir().unwrap();
        let ck = checkpoint(7);
        let tmp = begin(root.path(), 7).unwrap();
        write_parts(&tmp, &ck, true, false).unwrap();
        // Every model tensor split in two pieces over two ranks, values = index (+ 0.5 for v).
        for (rank, half) in [(0usize, 0usize), (1, 1)] {
            let pieces: Vec<_> = ck
                .model
                .iter()
                .map(|t| {
                    let n = t.data.len();
                    let (lo, hi) = if half == 0 { (0, n / 2) } else { (n / 2, n) };
                    let m: Vec<f32> = (lo..hi).map(|i| i as f32).collect();
                    let v: Vec<f32> = (lo..hi).map(|i| i as f32 + 0.5).collect();
                    (t.name.clone(), lo, m, v)
                })
                .collect();
            write_optimizer_shard(&tmp, rank, &pieces).unwrap();
        }
        let dir = commit(root.path(), 7, 0).unwrap();
        let back = load(&dir).unwrap();
        assert_eq!(back.optimizer.len(), 2 * ck.model.len());
        for t in &back.optimizer {
            let half = if t.name.ends_with("exp_avg_sq") {
                0.5
            } else {
                0.0
            };
            let want: Vec<f32> = (0..t.data.len()).map(|i| i as f32 + half).collect();
            assert_eq!(t.data, want, "{}", t.name);
        }
        // A missing shard is named.
        fs::remove_file(dir.join("optimizer.rank00001.safetensors")).unwrap();
        let e = error_of(load(&dir));
        assert!(e.contains("do not cover all of"), "{e}");
    }

    #[test]
    fn keep_last_prunes_oldest_only() {
        let root = tempfile::tempdir().unwrap();
        for step in [100, 200, 300, 400] {
            save(root.path(), &checkpoint(step), 0).unwrap();
        }
        save(root.path(), &checkpoint(500), 2).unwrap();
        let steps: Vec<u64> = list(root.path()).unwrap().iter().map(|c| c.0).collect();
        assert_eq!(steps, [400, 500]);
        for step in [100, 200, 300] {
            assert!(!root.path().join(step_dir_name(step)).exists());
        }
        // keep_last = 0 keeps everything.
        save(root.path(), &checkpoint(600), 0).unwrap();
        assert_eq!(list(root.path()).unwrap().len(), 3);
        // Saving an older step never prunes the checkpoint just written.
        save(root.path(), &checkpoint(50), 1).unwrap();
        let steps: Vec<u64> = list(root.path()).unwrap().iter().map(|c| c.0).collect();
        assert_eq!(steps, [50, 600]);
    }

    #[test]
    fn crashed_temp_dir_is_ignored_by_list_and_cleaned_by_next_save() {
        let root = tempfile::tempdir().unwrap();
        save(root.path(), &checkpoint(100), 0).unwrap();
        let tmp = root.path().join(".step_000200.tmp");
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join(MODEL_FILE), b"half a file").unwrap();
        fs::write(tmp.join("stray"), b"junk").unwrap();
        fs::write(tmp.join(DONE_FILE), b"").unwrap();
        // Other names that must not be mistaken for checkpoints.
        fs::create_dir(root.path().join("step_100")).unwrap();
        fs::create_dir(root.path().join("step_abcdef")).unwrap();
        fs::write(root.path().join("step_000300"), b"a file, not a dir").unwrap();
        let steps: Vec<u64> = list(root.path()).unwrap().iter().map(|c| c.0).collect();
        assert_eq!(steps, [100]);

        let dir = save(root.path(), &checkpoint(200), 0).unwrap();
        assert!(!tmp.exists());
        assert!(!dir.join("stray").exists());
        assert_eq!(load(&dir).unwrap().step, 200);
        assert_eq!(latest(root.path()).unwrap().unwrap().0, 200);
    }

    #[test]
    fn overwriting_an_existing_step_replaces_it() {
        let root = tempfile::tempdir().unwrap();
        let first = checkpoint(100);
        let dir = save(root.path(), &first, 0).unwrap();
        fs::write(dir.join("stale"), b"from the old run").unwrap();
        let mut second = checkpoint(100);
        second.model[0].data.iter_mut().for_each(|v| *v += 1.0);
        second.state = json!({"run": "second"});
        assert_eq!(save(root.path(), &second, 0).unwrap(), dir);
        let back = load(&dir).unwrap();
        assert_bit_exact(&back.model, &sorted(second.model));
        assert_eq!(back.state, json!({"run": "second"}));
        assert!(!dir.join("stale").exists());
        assert_eq!(list(root.path()).unwrap().len(), 1);
    }

    #[test]
    fn state_must_be_an_object_and_null_means_empty() {
        let root = tempfile::tempdir().unwrap();
        let mut ckpt = checkpoint(7);
        ckpt.state = json!([1, 2]);
        let e = error_of(save(root.path(), &ckpt, 0));
        assert!(e.contains("must be a JSON object, got an array"), "{e}");
        ckpt.state = serde_json::Value::Null;
        let dir = save(root.path(), &ckpt, 0).unwrap();
        assert_eq!(load(&dir).unwrap().state, json!({}));
        // A caller "step" key is overridden by ckpt.step.
        ckpt.state = json!({"step": 999, "x": 1});
        let back = load(&save(root.path(), &ckpt, 0).unwrap()).unwrap();
        assert_eq!((back.step, back.state), (7, json!({"x": 1})));
    }

    #[test]
    fn bad_state_json_is_a_named_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = save(root.path(), &checkpoint(100), 0).unwrap();
        let path = dir.join(STATE_FILE);
        let cases: [(&[u8], &str); 4] = [
            (b"{\"step\": 1", "state.json: not valid JSON"),
            (
                b"[1, 2]",
                "state.json: expected a JSON object, got an array",
            ),
            (b"{\"x\": 1}", "state.json: missing or invalid \"step\""),
            (b"{\"step\": -3}", "state.json: missing or invalid \"step\""),
        ];
        for (bytes, want) in cases {
            fs::write(&path, bytes).unwrap();
            let e = error_of(load(&dir));
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn truncated_model_safetensors_is_a_named_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = save(root.path(), &checkpoint(100), 0).unwrap();
        let path = dir.join(MODEL_FILE);
        let bytes = fs::read(&path).unwrap();
        for len in [0, 5, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            fs::write(&path, &bytes[..len]).unwrap();
            let e = error_of(load(&dir));
            assert!(
                e.contains("step_000100/model.safetensors: not a valid safetensors file: "),
                "len {len}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
