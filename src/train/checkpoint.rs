//! Training checkpoints on disk: `root/step_000100/` holds `model.safetensors` (fp32 master
//! weights, Hugging Face tensor names), `optimizer.safetensors` (`{param}.exp_avg`,
//! `{param}.exp_avg_sq`) or, from a ZeRO-1 run, one optimizer shard per rank
//! (`optimizer.rank00000.safetensors`, …, joined into whole tensors on load), `state.json`
//! (`{"step": .., ...the trainer's state...}`) and, written last, an empty `DONE` marker. A checkpoint is assembled in `root/.step_000100.tmp/`, every file
//! fsynced, the directory renamed into place, and only then marked done, so a crash leaves either
//! a complete checkpoint or one that `list`/`latest`/`load` ignore or refuse. This module also owns
//! the F32 safetensors reader/writer (BF16/F16 files are widened to f32 on read). It does not know
//! what the state object means (the trainer does) and does not export to Hugging Face layout (a
//! separate command does).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use safetensors::{Dtype, SafeTensors, View};

use crate::fsutil::{sync_parent, tmp_path, write_atomic};

/// File names inside a checkpoint directory.
const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
const DONE_FILE: &str = "DONE";

/// One named f32 tensor (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>, // (shape.iter().product(),) row-major
}

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
    write_parts(&tmp, ckpt, true)?;
    commit(root, ckpt.step, keep_last)
}

/// The temporary directory `root/.step_{step:06}.tmp/` a checkpoint is assembled in; with
/// [`begin`], [`write_parts`], [`write_optimizer_shard`] and [`commit`] several ranks write one
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

/// Write model.safetensors, state.json and (with `with_optimizer`) optimizer.safetensors into
/// the temporary directory `tmp`.
pub fn write_parts(tmp: &Path, ckpt: &Checkpoint, with_optimizer: bool) -> Result<()> {
    let state = state_json(ckpt)?;
    let format_pt = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&tmp.join(MODEL_FILE), &ckpt.model, Some(format_pt))?;
    if with_optimizer {
        write_safetensors(&tmp.join(OPTIMIZER_FILE), &ckpt.optimizer, None)?;
    }
    write_atomic(&tmp.join(STATE_FILE), &state)
}

/// One rank's share of a sharded optimizer (ZeRO-1): pieces (parameter name, offset within it,
/// exp_avg, exp_avg_sq), written as `optimizer.rank{rank:05}.safetensors` with 1-D tensors
/// `{param}.exp_avg@{offset}` and `{param}.exp_avg_sq@{offset}`. [`load`] joins the shards of all
/// ranks back into whole tensors, so a run can resume with any world size.
pub fn write_optimizer_shard(
    tmp: &Path,
    rank: usize,
    pieces: &[(String, usize, Vec<f32>, Vec<f32>)],
) -> Result<()> {
    let mut tensors = Vec::with_capacity(2 * pieces.len());
    for (name, off, m, v) in pieces {
        for (suffix, data) in [("exp_avg", m), ("exp_avg_sq", v)] {
            tensors.push(NamedTensor {
                name: format!("{name}.{suffix}@{off}"),
                shape: vec![data.len()],
                data: data.clone(),
            });
        }
    }
    write_safetensors(&tmp.join(shard_file_name(rank)), &tensors, None)
}

fn shard_file_name(rank: usize) -> String {
    format!("optimizer.rank{rank:05}.safetensors")
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

/// The optimizer of a checkpoint directory: optimizer.safetensors, or the ZeRO-1 shards of every
/// rank joined into whole `{param}.exp_avg` / `{param}.exp_avg_sq` tensors shaped like `model`'s.
/// Also returns the number of shard files (0 for an unsharded optimizer).
fn read_optimizer(dir: &Path, model: &[NamedTensor]) -> Result<(Vec<NamedTensor>, usize)> {
    let whole = dir.join(OPTIMIZER_FILE);
    if whole.exists() {
        return Ok((read_safetensors(&whole)?, 0));
    }
    let mut shards = Vec::new();
    while dir.join(shard_file_name(shards.len())).exists() {
        shards.push(dir.join(shard_file_name(shards.len())));
    }
    if shards.is_empty() {
        bail!("{}: missing file", whole.display());
    }
    let mut out: Vec<NamedTensor> = Vec::new();
    let mut index: HashMap<String, (usize, Vec<bool>)> = HashMap::new();
    for t in model {
        for suffix in ["exp_avg", "exp_avg_sq"] {
            let name = format!("{}.{suffix}", t.name);
            index.insert(name.clone(), (out.len(), vec![false; t.data.len()]));
            out.push(NamedTensor {
                name,
                shape: t.shape.clone(),
                data: vec![0.0; t.data.len()],
            });
        }
    }
    for path in &shards {
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
                    "{}: tensor {} belongs to no parameter of model.safetensors",
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
                "{}: the {} optimizer shards do not cover all of {}: a shard file is missing",
                dir.display(),
                shards.len(),
                t.name
            );
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, shards.len()))
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
    let model = read_safetensors(&dir.join(MODEL_FILE))?;
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

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => anyhow!("{}: missing file", path.display()),
        _ => anyhow!("{}: cannot read: {e}", path.display()),
    })
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays a quiet NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// A borrowed f32 tensor as safetensors sees it: little-endian bytes, zero-copy on LE hosts, or
/// rounded to bf16 when `bf16` is set.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
    bf16: bool,
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        if self.bf16 {
            Dtype::BF16
        } else {
            Dtype::F32
        }
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.bf16 {
            Cow::Owned(
                self.data
                    .iter()
                    .flat_map(|&x| f32_to_bf16(x).to_le_bytes())
                    .collect(),
            )
        } else if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * if self.bf16 { 2 } else { 4 }
    }
}

/// Write F32 tensors as a safetensors file, atomically (temporary name, fsync, rename, directory
/// fsync). Streams tensor data to disk without building the file in memory. `metadata` becomes
/// the `__metadata__` map (e.g. `{"format": "pt"}`, which transformers expects).
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_safetensors_as(path, tensors, metadata, false)
}

/// As [`write_safetensors`], storing the tensors as bf16 (round to nearest even) when `bf16`.
pub fn write_safetensors_as(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
    bf16: bool,
) -> Result<()> {
    let mut names = HashSet::with_capacity(tensors.len());
    for t in tensors {
        let elems = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if elems != Some(t.data.len()) {
            bail!(
                "{}: tensor {} has shape {:?} but {} values",
                path.display(),
                t.name,
                t.shape,
                t.data.len()
            );
        }
        if !names.insert(t.name.as_str()) {
            bail!("{}: duplicate tensor name {}", path.display(), t.name);
        }
    }
    let views = tensors.iter().map(|t| {
        let view = F32View {
            shape: &t.shape,
            data: &t.data,
            bf16,
        };
        (t.name.as_str(), view)
    });

    let tmp = tmp_path(path);
    let result = (|| -> std::result::Result<(), String> {
        safetensors::serialize_to_file(views, metadata, &tmp).map_err(|e| e.to_string())?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        fs::rename(&tmp, path).map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => {
            sync_parent(path);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            bail!("{}: cannot write: {e}", path.display())
        }
    }
}

/// Read every tensor of a safetensors file as f32, sorted by name. F32 is read bit-exactly; BF16
/// and F16 are widened exactly; any other dtype is an error naming the tensor.
pub fn read_safetensors(path: &Path) -> Result<Vec<NamedTensor>> {
    let bytes = read_file(path)?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let mut tensors = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other}; only F32, BF16 and F16 are supported",
                path.display()
            ),
        };
        tensors.push(NamedTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// bfloat16 is the upper half of an f32: widening is a shift.
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// IEEE binary16 (1 sign, 5 exponent bits with bias 15, 10 mantissa bits) to f32, exactly.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    match exponent {
        // Zero and subnormals: mantissa × 2^-24, exact in f32.
        0 => {
            let magnitude = mantissa as f32 * (1.0 / 16_777_216.0);
            f32::from_bits(sign | magnitude.to_bits())
        }
        // Infinity and NaN (the payload moves to the top of the f32 mantissa).
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mantissa << 13)),
        // Normal: rebias the exponent from 15 to 127.
        _ => f32::from_bits(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn tensor(name: &str, shape: &[usize], seed: u32) -> NamedTensor {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|i| (i as f32 + seed as f32) * 0.25 - 1.0)
            .collect();
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data,
        }
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

    fn error_of<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
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
    fn empty_and_zero_sized_tensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        write_safetensors(&path, &[], None).unwrap();
        assert!(read_safetensors(&path).unwrap().is_empty());
        let t = vec![tensor("empty", &[0, 7], 0), tensor("scalar", &[], 3)];
        write_safetensors(&path, &t, None).unwrap();
        assert_eq!(read_safetensors(&path).unwrap(), t);
    }

    #[test]
    fn write_safetensors_refuses_shape_mismatch_and_duplicate_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut bad = tensor("w", &[2, 3], 0);
        bad.data.pop();
        let e = error_of(write_safetensors(&path, &[bad], None));
        assert!(
            e.contains("x.safetensors: tensor w has shape [2, 3] but 5 values"),
            "{e}"
        );
        let dup = [tensor("w", &[2], 0), tensor("w", &[2], 1)];
        let e = error_of(write_safetensors(&path, &dup, None));
        assert!(e.contains("duplicate tensor name w"), "{e}");
        assert!(!path.exists() && !tmp_path(&path).exists());
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
        write_parts(&tmp, &ck, false).unwrap();
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

    #[test]
    fn random_garbage_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.safetensors");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..200 {
            let len = (round * 37) % 600;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // Half the time, a plausible header length so the JSON parser sees the garbage.
            if round % 2 == 0 && len >= 8 {
                bytes[..8].copy_from_slice(&((len as u64 - 8) / 2).to_le_bytes());
            }
            fs::write(&path, &bytes).unwrap();
            let e = error_of(read_safetensors(&path));
            assert!(
                e.contains("garbage.safetensors: not a valid safetensors file: "),
                "{e}"
            );
        }
        // Valid JSON header, lying offsets.
        let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 8]);
        fs::write(&path, &bytes).unwrap();
        let e = error_of(read_safetensors(&path));
        assert!(e.contains("not a valid safetensors file: "), "{e}");
    }

    #[test]
    fn unsupported_dtype_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ints.safetensors");
        let data = [0u8; 16];
        let view = safetensors::tensor::TensorView::new(Dtype::I64, vec![2], &data).unwrap();
        fs::write(
            &path,
            safetensors::serialize([("ids", view)], None).unwrap(),
        )
        .unwrap();
        let e = error_of(read_safetensors(&path));
        assert!(
            e.contains("ints.safetensors: tensor ids has dtype I64; only F32, BF16 and F16"),
            "{e}"
        );
    }

    #[test]
    fn bf16_conversion_matches_known_values() {
        let cases: [(u16, f32); 8] = [
            (0x0000, 0.0),
            (0x3f80, 1.0),
            (0xc040, -3.0),
            (0x4049, 3.140625),
            (0x7f7f, 3.389_531_4e38), // largest finite bf16
            (0x0080, f32::MIN_POSITIVE),
            (0x7f80, f32::INFINITY),
            (0xff80, f32::NEG_INFINITY),
        ];
        for (bits, want) in cases {
            assert_eq!(bf16_to_f32(bits).to_bits(), want.to_bits(), "{bits:#06x}");
        }
        assert_eq!(bf16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(bf16_to_f32(0x0001).to_bits(), 0x0001_0000); // subnormal 2^-133
        assert!(bf16_to_f32(0x7fc0).is_nan());
        assert!(bf16_to_f32(0xffc1).is_nan());
        // Every bf16 survives f32 and back through truncation.
        for bits in 0..=u16::MAX {
            assert_eq!((bf16_to_f32(bits).to_bits() >> 16) as u16, bits);
        }
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        let cases: [(u16, f32); 12] = [
            (0x0000, 0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),         // largest finite
            (0x0400, 6.103_515_6e-5),  // smallest normal 2^-14
            (0x0001, 5.960_464_5e-8),  // smallest subnormal 2^-24
            (0x03ff, 6.097_555e-5),    // largest subnormal 1023 × 2^-24
            (0x8001, -5.960_464_5e-8), // negative subnormal
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
            (0x4248, 3.140625),
        ];
        for (bits, want) in cases {
            assert_eq!(f16_to_f32(bits).to_bits(), want.to_bits(), "{bits:#06x}");
        }
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert!(f16_to_f32(0xfc01).is_nan());
        // Exhaustive check against the textbook formula, in f64.
        for bits in 0..=u16::MAX {
            let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
            let e = i32::from((bits >> 10) & 0x1f);
            let m = f64::from(bits & 0x3ff);
            let got = f16_to_f32(bits);
            match e {
                0x1f if m == 0.0 => assert_eq!(got, sign as f32 * f32::INFINITY),
                0x1f => assert!(got.is_nan()),
                0 => assert_eq!(f64::from(got), sign * m * 2f64.powi(-24)),
                _ => assert_eq!(
                    f64::from(got),
                    sign * (1.0 + m / 1024.0) * 2f64.powi(e - 15)
                ),
            }
            if got == 0.0 {
                assert_eq!(got.is_sign_negative(), bits >> 15 == 1);
            }
        }
    }

    #[test]
    fn half_precision_files_are_widened_to_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("half.safetensors");
        let bf16: Vec<u8> = [0x3f80u16, 0xc040, 0x0000, 0x8000]
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect();
        let f16: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7c00]
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect();
        let f32s: Vec<u8> = [0.5f32, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        use safetensors::tensor::TensorView;
        let tensors = [
            (
                "a_bf16",
                TensorView::new(Dtype::BF16, vec![2, 2], &bf16).unwrap(),
            ),
            ("b_f16", TensorView::new(Dtype::F16, vec![4], &f16).unwrap()),
            (
                "c_f32",
                TensorView::new(Dtype::F32, vec![2], &f32s).unwrap(),
            ),
        ];
        fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
        let got = read_safetensors(&path).unwrap();
        let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a_bf16", "b_f16", "c_f32"]);
        assert_eq!(got[0].shape, [2, 2]);
        assert_eq!(got[0].data, [1.0, -3.0, 0.0, -0.0]);
        assert!(got[0].data[3].is_sign_negative());
        assert_eq!(got[1].data, [1.0, -2.0, 5.960_464_5e-8, f32::INFINITY]);
        assert_eq!(got[2].data, [0.5, -0.25]);
    }
}
