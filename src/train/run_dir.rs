//! A run directory belongs to one run: the OS lock a live run holds on `out_dir/.lock` (it dies
//! with the process, so a killed run never leaves a stale lock), the files a previous run left
//! there (checkpoints, metrics.jsonl, config.toml), and removing exactly those for `--overwrite`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The lock file's name inside the run directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive OS lock on a run directory, held while this value lives.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Take the exclusive lock on `dir` (created if missing), or fail at once naming the directory
/// and the holder's pid when another live process holds it.
pub fn lock(dir: &Path) -> Result<RunLock> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create run directory", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open the run directory's lock", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim();
            let by = if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            };
            bail!(
                "{}: another run{by} is training in this directory; wait for it, stop it, or choose another train.out_dir",
                dir.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("{}: cannot lock", path.display()));
        }
    }
    // Best effort: the pid is only for the message above; the OS lock is what counts.
    let _ = file
        .set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| write!(file, "{}", std::process::id()))
        .and_then(|_| file.flush());
    Ok(RunLock { _file: file })
}

/// A previous run's files in `dir`: checkpoint directories (`step_*`, `.step_*.tmp`),
/// metrics.jsonl and config.toml, sorted. Nothing else the user put there counts.
pub fn previous_run_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
    };
    let mut found = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let checkpoint = is_dir
            && (name.starts_with("step_")
                || (name.starts_with(".step_") && name.ends_with(".tmp")));
        if checkpoint || (!is_dir && (name == "metrics.jsonl" || name == "config.toml")) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// What [`previous_run_files`] found, in a few words: "3 checkpoint(s), metrics.jsonl".
pub fn describe(files: &[PathBuf]) -> String {
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let checkpoints = files.iter().filter(|p| name(p).contains("step_")).count();
    let mut parts = Vec::new();
    if checkpoints > 0 {
        parts.push(format!("{checkpoints} checkpoint(s)"));
    }
    for f in ["metrics.jsonl", "config.toml"] {
        if files.iter().any(|p| name(p) == f) {
            parts.push(f.to_string());
        }
    }
    parts.join(", ")
}

/// Remove a previous run's files (as [`previous_run_files`] lists them) from `dir`.
pub fn remove_previous_run(dir: &Path) -> Result<usize> {
    let files = previous_run_files(dir)?;
    for p in &files {
        let r = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
        r.with_context(|| format!("{}: cannot remove", p.display()))?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_directory_and_the_first_is_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let first = lock(d.path()).unwrap();
        let err = format!("{:#}", lock(d.path()).unwrap_err());
        assert!(err.contains(&d.path().display().to_string()), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        lock(d.path()).unwrap();
    }

    #[test]
    fn previous_run_files_are_only_the_runs_own_and_removal_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in ["step_000010", ".step_000020.tmp", "notes"] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        for f in ["metrics.jsonl", "config.toml", "README.md", ".lock"] {
            std::fs::write(p.join(f), "x").unwrap();
        }
        let found = previous_run_files(p).unwrap();
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(
            describe(&found),
            "2 checkpoint(s), metrics.jsonl, config.toml"
        );
        assert_eq!(remove_previous_run(p).unwrap(), 4);
        assert!(previous_run_files(p).unwrap().is_empty());
        for kept in ["notes", "README.md", ".lock"] {
            assert!(p.join(kept).exists(), "{kept} removed");
        }
    }
}
