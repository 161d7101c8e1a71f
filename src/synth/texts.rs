//! The synthesizer's input texts: every input file (files, directories, globs: `data::input`)
//! indexed once, so that chain members — texts far apart in the input — are read by position.
//!
//! A plain JSONL file is read in place (byte ranges of its valid lines). A compressed or parquet
//! file cannot be read by position, so its valid texts are decoded once into a spool beside the
//! output (`OUT.input.jsonl`, one JSON string per line), which is rebuilt when a run resumes and
//! removed when it finishes. Memory holds only the index (a few words per text).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::data::input::{self, lookup, Filter, Format};

/// What to read: the inputs, how they are stored, the text field and the record filters.
#[derive(Clone, Debug)]
pub struct TextSource {
    /// Files, directories and globs, expanded by `data::input::expand`.
    pub inputs: Vec<PathBuf>,
    pub format: Format,
    /// Dotted path of the text field (`text`, `meta.abstract`).
    pub field: String,
    /// Records a filter drops are counted, not reported.
    pub filters: Vec<Filter>,
}

impl TextSource {
    /// One plain JSONL file with a `text` field.
    pub fn jsonl(path: &Path) -> TextSource {
        TextSource {
            inputs: vec![path.to_path_buf()],
            format: Format::Auto,
            field: "text".into(),
            filters: Vec::new(),
        }
    }

    /// What a resumed run must share with the run that wrote the progress file. A single plain
    /// input with the default field and no filters gives the settings older runs wrote.
    pub fn settings(&self, files: &[PathBuf]) -> Result<serde_json::Map<String, Value>> {
        let mut s = serde_json::Map::new();
        let input = match self.inputs.as_slice() {
            [one] => Value::from(one.display().to_string()),
            many => Value::from(
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            ),
        };
        s.insert("input".into(), input);
        let mut bytes = 0u64;
        for f in files {
            bytes += std::fs::metadata(f)
                .with_context(|| format!("{}: cannot read", f.display()))?
                .len();
        }
        s.insert("input_bytes".into(), bytes.into());
        if files.len() > 1 {
            s.insert("input_files".into(), files.len().into());
        }
        if self.format != Format::Auto {
            s.insert("format".into(), serde_json::to_value(self.format)?);
        }
        if self.field != "text" {
            s.insert("field".into(), self.field.clone().into());
        }
        if !self.filters.is_empty() {
            let f: Vec<&str> = self.filters.iter().map(|f| f.text.as_str()).collect();
            s.insert("filters".into(), f.into());
        }
        Ok(s)
    }
}

/// Where one valid text is: its origin (for messages) and the bytes that hold it.
struct TextRef {
    /// Index into `Texts::files`.
    file: u32,
    /// Line (record) number in that file, from 1.
    line: u64,
    /// Byte range in the file itself (plain) or in the spool (decoded inputs).
    offset: u64,
    len: u32,
    spooled: bool,
}

/// The indexed texts of a [`TextSource`].
pub struct Texts {
    pub files: Vec<PathBuf>,
    refs: Vec<TextRef>,
    field: Vec<String>,
    /// Open plain input files (None for decoded ones).
    open: Vec<Option<File>>,
    spool: Option<(PathBuf, File)>,
    /// Non-blank records that were not valid (reported one line each).
    pub bad: u64,
    /// Valid records a filter dropped.
    pub filtered: u64,
}

/// The text at `field` of one JSON record, or a one-line description of what is wrong.
pub fn text_in(v: &Value, field: &[String]) -> std::result::Result<String, String> {
    let name = field.join(".");
    match lookup(v, field) {
        Some(Value::String(t)) if !t.trim().is_empty() => Ok(t.clone()),
        Some(Value::String(_)) => Err(format!("empty \"{name}\"")),
        Some(_) => Err(format!("\"{name}\" is not a string")),
        None => Err(format!("no \"{name}\" field")),
    }
}

/// Whether a record line is kept: `Ok(Some(text))`, dropped by a filter: `Ok(None)`, or invalid.
fn judge(
    line: &[u8],
    field: &[String],
    filters: &[Filter],
) -> std::result::Result<Option<String>, String> {
    let s = std::str::from_utf8(line).map_err(|_| "not valid UTF-8".to_string())?;
    let v: Value = serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))?;
    if !filters.iter().all(|f| f.keeps(&v)) {
        return Ok(None);
    }
    text_in(&v, field).map(Some)
}

impl Texts {
    /// Index `src`, decoding compressed and parquet inputs into `spool`; `report` gets one line
    /// per invalid record.
    pub fn index(src: &TextSource, spool: &Path, report: &mut dyn FnMut(String)) -> Result<Texts> {
        let files = input::expand(&src.inputs)?;
        let field: Vec<String> = src.field.split('.').map(str::to_string).collect();
        if field.iter().any(|f| f.is_empty()) {
            bail!("--field {:?}: not a dotted field path", src.field);
        }
        let mut t = Texts {
            files: files.clone(),
            refs: Vec::new(),
            field,
            open: Vec::new(),
            spool: None,
            bad: 0,
            filtered: 0,
        };
        let mut spool_w: Option<BufWriter<File>> = None;
        let mut spool_at = 0u64;
        for (fi, path) in files.iter().enumerate() {
            let plain = matches!(src.format.of(path), Format::Plain | Format::Auto);
            let mut reader: Box<dyn BufRead> = if plain {
                let f =
                    File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
                t.open.push(Some(f.try_clone()?));
                Box::new(BufReader::with_capacity(1 << 20, f))
            } else {
                t.open.push(None);
                let mut cols = vec![t.field[0].clone()];
                cols.extend(src.filters.iter().map(|f| f.path[0].clone()));
                input::open_columns(path, src.format, Some(&cols))?.reader
            };
            let (mut buf, mut offset, mut line) = (Vec::new(), 0u64, 0u64);
            loop {
                buf.clear();
                let n = reader
                    .read_until(b'\n', &mut buf)
                    .with_context(|| format!("{}: read error", path.display()))?;
                if n == 0 {
                    break;
                }
                line += 1;
                let start = offset;
                offset += n as u64;
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match judge(&buf, &t.field, &src.filters) {
                    Ok(None) => t.filtered += 1,
                    Err(p) => {
                        t.bad += 1;
                        report(format!("{}:{line}: {p}; skipped", path.display()));
                    }
                    Ok(Some(_)) if plain => t.refs.push(TextRef {
                        file: fi as u32,
                        line,
                        offset: start,
                        len: u32::try_from(n).map_err(|_| {
                            anyhow!("{}:{line}: a record over 4 GB", path.display())
                        })?,
                        spooled: false,
                    }),
                    Ok(Some(text)) => {
                        if spool_w.is_none() {
                            if spool.exists() {
                                // Only a run with a progress file (ours, resuming) gets here with
                                // a spool present: the caller checks.
                                std::fs::remove_file(spool).with_context(|| {
                                    format!("{}: cannot replace", spool.display())
                                })?;
                            }
                            let f = File::create(spool).with_context(|| {
                                format!("{}: cannot create the input spool", spool.display())
                            })?;
                            spool_w = Some(BufWriter::with_capacity(1 << 20, f));
                        }
                        let mut enc = serde_json::to_vec(&text)?;
                        enc.push(b'\n');
                        spool_w
                            .as_mut()
                            .expect("created")
                            .write_all(&enc)
                            .with_context(|| format!("{}: write error", spool.display()))?;
                        t.refs.push(TextRef {
                            file: fi as u32,
                            line,
                            offset: spool_at,
                            len: u32::try_from(enc.len()).map_err(|_| {
                                anyhow!("{}:{line}: a record over 4 GB", path.display())
                            })?,
                            spooled: true,
                        });
                        spool_at += enc.len() as u64;
                    }
                }
            }
        }
        if let Some(w) = spool_w {
            let f = w
                .into_inner()
                .map_err(|e| anyhow!("{}: write error: {}", spool.display(), e.error()))?;
            f.sync_all()
                .with_context(|| format!("{}: cannot sync", spool.display()))?;
            drop(f);
            let f =
                File::open(spool).with_context(|| format!("{}: cannot open", spool.display()))?;
            t.spool = Some((spool.to_path_buf(), f));
        }
        Ok(t)
    }

    /// Valid texts.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// `file:line` of text `i`, for messages.
    pub fn origin(&self, i: usize) -> String {
        let r = &self.refs[i];
        format!("{}:{}", self.files[r.file as usize].display(), r.line)
    }

    /// Text `i`.
    pub fn get(&self, i: usize) -> Result<String> {
        let r = &self.refs[i];
        let (file, what) = if r.spooled {
            let (p, f) = self.spool.as_ref().expect("spooled texts have a spool");
            (f, p.display().to_string())
        } else {
            let f = self.open[r.file as usize]
                .as_ref()
                .expect("plain input is open");
            (f, self.origin(i))
        };
        let mut buf = vec![0u8; r.len as usize];
        file.read_exact_at(&mut buf, r.offset)
            .with_context(|| format!("{what}: read error"))?;
        let changed = |e: String| anyhow!("{}: {e} (changed while reading)", self.origin(i));
        if r.spooled {
            serde_json::from_slice::<String>(&buf).map_err(|e| changed(e.to_string()))
        } else {
            let v: Value = serde_json::from_slice(&buf).map_err(|e| changed(e.to_string()))?;
            text_in(&v, &self.field).map_err(changed)
        }
    }

    /// Remove the spool (the run is complete).
    pub fn finish(self) -> Result<()> {
        if let Some((p, f)) = self.spool {
            drop(f);
            std::fs::remove_file(&p).with_context(|| format!("{}: cannot remove", p.display()))?;
        }
        Ok(())
    }
}

/// The spool of decoded inputs beside `out`.
pub fn spool_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".input.jsonl");
    PathBuf::from(s)
}
