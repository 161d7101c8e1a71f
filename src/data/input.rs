//! Where `kiln prep` and `kiln synth` read from: input paths (files, directories, globs) expanded
//! in a deterministic order, and each file opened as a stream of lines through its compression
//! (plain, gzip: `.gz`, zstd: `.zst`) or as parquet (`.parquet`: each row one JSON line, nested
//! groups as objects), chosen by extension or `--format`. Decoding streams (parquet one row group
//! at a time), so memory stays flat whatever the size of the input. Also the `--filter` expressions over JSON
//! records (`meta.pile_set_name == "PubMed Abstracts"`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// How an input file is stored (`--format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// By extension: `.gz` gzip, `.zst` / `.zstd` zstd, anything else plain.
    #[default]
    Auto,
    Plain,
    Gzip,
    Zstd,
    /// Parquet: every row becomes one JSON record (columns by name, nested groups as objects,
    /// lists as arrays).
    Parquet,
}

impl Format {
    /// The format of `path` (`self` unless Auto).
    pub fn of(self, path: &Path) -> Format {
        if self != Format::Auto {
            return self;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => Format::Gzip,
            Some("zst" | "zstd") => Format::Zstd,
            Some("parquet" | "pq") => Format::Parquet,
            _ => Format::Plain,
        }
    }
}

/// The extension of `path` once a compression suffix is removed (`a.jsonl.zst` → `jsonl`).
pub fn content_extension(path: &Path, format: Format) -> Option<String> {
    if format.of(path) == Format::Parquet {
        return Some("jsonl".into());
    }
    let name = path.file_name()?.to_str()?;
    let stem = match format.of(path) {
        Format::Gzip | Format::Zstd => name.rsplit_once('.').map_or(name, |(s, _)| s),
        _ => name,
    };
    stem.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())
}

/// Whether `s` is a glob pattern rather than a path.
fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Every input file `inputs` name, in order: a file as given; a directory's regular files
/// (recursively, hidden ones skipped) sorted by path; a glob's matches sorted by path. An input
/// that names nothing is an error naming it.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let text = input.to_string_lossy();
        if !input.exists() && is_glob(&text) {
            let mut found: Vec<PathBuf> = glob::glob(&text)
                .map_err(|e| anyhow!("{text}: not a valid glob pattern: {e}"))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect();
            if found.is_empty() {
                bail!("{text}: no file matches this pattern");
            }
            found.sort();
            out.extend(found);
            continue;
        }
        let meta = std::fs::metadata(input)
            .with_context(|| format!("{}: cannot read input", input.display()))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            if found.is_empty() {
                bail!("{}: the directory holds no files", input.display());
            }
            found.sort();
            out.extend(found);
        } else if meta.is_file() {
            out.push(input.clone());
        } else {
            bail!("{}: not a regular file or directory", input.display());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// A reader that counts the bytes read through it (the compressed position, for progress).
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A parquet file's rows as JSON lines, read one row group at a time; `consumed` advances by the
/// file's size in proportion to the rows read.
struct ParquetLines {
    rows: parquet::record::reader::RowIter<'static>,
    path: PathBuf,
    line: Vec<u8>,
    at: usize,
    read: u64,
    total: u64,
    size: u64,
    consumed: Arc<AtomicU64>,
}

impl Read for ParquetLines {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.line.len() {
            // The parquet reader trusts its input in places (it may panic on a corrupt file):
            // a panic here is this file's error.
            let rows = &mut self.rows;
            let next = quietly(|| rows.next().map(|r| r.map(|row| row.to_json_value()))).map_err(
                |_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{}: row {}: corrupt parquet data",
                            self.path.display(),
                            self.read + 1
                        ),
                    )
                },
            )?;
            match next {
                None => return Ok(0),
                Some(Err(e)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: row {}: {e}", self.path.display(), self.read + 1),
                    ))
                }
                Some(Ok(value)) => {
                    self.line.clear();
                    serde_json::to_writer(&mut self.line, &value)?;
                    self.line.push(b'\n');
                    self.at = 0;
                    self.read += 1;
                    let done = self.size * self.read / self.total.max(1);
                    self.consumed.store(done, Ordering::Relaxed);
                }
            }
        }
        let n = buf.len().min(self.line.len() - self.at);
        buf[..n].copy_from_slice(&self.line[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Open a parquet file as JSON lines of the top-level `columns` that it has (all when `None`).
fn open_parquet(
    path: &Path,
    file: File,
    consumed: Arc<AtomicU64>,
    columns: Option<&[String]>,
) -> Result<Box<dyn BufRead + Send>> {
    // The parquet reader trusts its metadata in places (it may panic on a corrupt footer): a panic
    // here is this file's error.
    quietly(|| open_parquet_unguarded(path, file, consumed, columns))
        .unwrap_or_else(|_| bail!("{}: not a parquet file (corrupt metadata)", path.display()))
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, catching a panic without the panic hook's report (the caller turns it into the one
/// line that names the file). The hook is wrapped once, process-wide, and stays quiet only on this
/// thread while `f` runs.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info)
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r
}

fn open_parquet_unguarded(
    path: &Path,
    file: File,
    consumed: Arc<AtomicU64>,
    columns: Option<&[String]>,
) -> Result<Box<dyn BufRead + Send>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::schema::types::Type;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{}: not a parquet file: {e}", path.display()))?;
    let total = reader.metadata().file_metadata().num_rows().max(0) as u64;
    // Column chunks must lie in the file (the reader would panic on a negative range).
    for (g, rg) in reader.metadata().row_groups().iter().enumerate() {
        for c in rg.columns() {
            let start = c
                .dictionary_page_offset()
                .unwrap_or(c.data_page_offset())
                .min(c.data_page_offset());
            let len = c.compressed_size();
            if start < 0 || len < 0 || (start as u64).saturating_add(len as u64) > size {
                bail!(
                    "{}: not a parquet file (row group {g}: column {} lies outside the file)",
                    path.display(),
                    c.column_path()
                );
            }
        }
    }
    // Only the columns a record needs are decoded (RefinedWeb's `content` without its URLs).
    let projection = match columns {
        None => None,
        Some(names) => {
            let schema = reader.metadata().file_metadata().schema();
            let fields: Vec<_> = schema
                .get_fields()
                .iter()
                .filter(|f| names.iter().any(|n| n == f.name()))
                .cloned()
                .collect();
            let all = fields.len() == schema.get_fields().len();
            (!all && !fields.is_empty()).then(|| {
                Type::group_type_builder(schema.name())
                    .with_fields(fields)
                    .build()
                    .expect("a subset of a valid schema")
            })
        }
    };
    let rows = parquet::record::reader::RowIter::from_file_into(Box::new(reader))
        .project(projection)
        .map_err(|e| anyhow!("{}: cannot select columns: {e}", path.display()))?;
    Ok(Box::new(BufReader::with_capacity(
        1 << 20,
        ParquetLines {
            rows,
            path: path.to_path_buf(),
            line: Vec::new(),
            at: 0,
            read: 0,
            total,
            size,
            consumed,
        },
    )))
}

/// An opened input: its decoded lines, and how many bytes of the file have been read so far.
pub struct Opened {
    pub reader: Box<dyn BufRead + Send>,
    pub consumed: Arc<AtomicU64>,
}

/// Open `path` for reading decoded bytes, through its compression.
pub fn open(path: &Path, format: Format) -> Result<Opened> {
    open_columns(path, format, None)
}

/// [`open`], decoding only the top-level `columns` of a parquet file (every column when `None`,
/// or when it has none of them). Decoding runs ahead on a thread of its own ([`ReadAhead`]).
pub fn open_columns(path: &Path, format: Format, columns: Option<&[String]>) -> Result<Opened> {
    let d = decoder(path, format, columns)?;
    Ok(Opened {
        reader: Box::new(ReadAhead::spawn(d.reader)),
        consumed: d.consumed,
    })
}

/// [`open_columns`] without the read-ahead thread: decoding happens in the caller's reads.
pub fn decoder(path: &Path, format: Format, columns: Option<&[String]>) -> Result<Opened> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let consumed = Arc::new(AtomicU64::new(0));
    if format.of(path) == Format::Parquet {
        let reader = open_parquet(path, file, consumed.clone(), columns)?;
        return Ok(Opened { reader, consumed });
    }
    let counted = Counted {
        inner: file,
        count: consumed.clone(),
    };
    let reader: Box<dyn BufRead + Send> = match format.of(path) {
        Format::Auto | Format::Plain | Format::Parquet => {
            Box::new(BufReader::with_capacity(1 << 20, counted))
        }
        Format::Gzip => Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(BufReader::new(counted)),
        )),
        Format::Zstd => Box::new(BufReader::with_capacity(
            1 << 20,
            // libzstd's streaming decoder reads frame after frame until the input ends.
            zstd::stream::read::Decoder::with_buffer(zstd_start(path, counted)?)
                .map_err(|e| anyhow!("{}: cannot start a zstd decoder: {e}", path.display()))?,
        )),
    };
    Ok(Opened { reader, consumed })
}

/// Blocks of decoded bytes read ahead by a thread of its own, so that reading and decompressing
/// overlap the consumer's work (tokenizing, in `kiln prep`). At most [`ReadAhead::DEPTH`] blocks
/// wait, so memory stays bounded; the thread ends at the end of the input, on an error (passed
/// on), or when the reader is dropped.
pub struct ReadAhead {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    /// Joined when the channel closes, so that a decoder that panicked is an error, not an end.
    thread: Option<std::thread::JoinHandle<()>>,
    block: Vec<u8>,
    at: usize,
    done: bool,
}

impl ReadAhead {
    const BLOCK: usize = 1 << 20;
    const DEPTH: usize = 4;

    pub fn spawn(mut inner: Box<dyn BufRead + Send>) -> ReadAhead {
        let (tx, rx) = std::sync::mpsc::sync_channel(Self::DEPTH);
        let thread = std::thread::spawn(move || loop {
            let mut block = vec![0u8; Self::BLOCK];
            let mut n = 0;
            let result = loop {
                match inner.read(&mut block[n..]) {
                    Ok(0) => break Ok(()),
                    Ok(k) => {
                        n += k;
                        if n == block.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            block.truncate(n);
            let end = n < Self::BLOCK;
            match result {
                Err(e) => {
                    // The bytes before the error first, then the error.
                    if n > 0 && tx.send(Ok(block)).is_err() {
                        return;
                    }
                    let _ = tx.send(Err(e));
                    return;
                }
                Ok(()) => {
                    if (n > 0 && tx.send(Ok(block)).is_err()) || end {
                        return;
                    }
                }
            }
        });
        ReadAhead {
            rx,
            thread: Some(thread),
            block: Vec::new(),
            at: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ReadAhead {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.at == self.block.len() && !self.done {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.block = block;
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread ended: the input is done, unless it panicked.
                Err(_) => {
                    self.done = true;
                    if let Some(Err(p)) = self.thread.take().map(|t| t.join()) {
                        let msg = p
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| p.downcast_ref::<&str>().copied())
                            .unwrap_or("a panic");
                        return Err(std::io::Error::other(format!("the decoder failed: {msg}")));
                    }
                }
            }
        }
        Ok(&self.block[self.at..])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.block.len());
    }
}

/// `r` buffered, once its first bytes are checked to start a zstd frame (or a skippable one), so
/// that a file that is not zstd is named at once rather than at the first read error.
fn zstd_start<R: Read>(path: &Path, r: R) -> Result<BufReader<R>> {
    let mut r = BufReader::new(r);
    let head = r
        .fill_buf()
        .with_context(|| format!("{}: read error", path.display()))?;
    if head.len() >= 4 {
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if magic != 0xFD2F_B528 && magic & 0xFFFF_FFF0 != 0x184D_2A50 {
            bail!(
                "{}: not a zstd file (it does not start with a zstd frame)",
                path.display()
            );
        }
    } else if !head.is_empty() {
        bail!("{}: not a zstd file (too short)", path.display());
    }
    Ok(r)
}

/// One `--filter`: a dotted path into a JSON record compared with a JSON value.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub path: Vec<String>,
    pub equal: bool,
    pub value: serde_json::Value,
    pub text: String,
}

impl Filter {
    /// `PATH == VALUE` or `PATH != VALUE`, VALUE a JSON literal (`"PubMed Abstracts"`, `3`,
    /// `true`, `null`); PATH dotted (`meta.pile_set_name`; a number indexes an array).
    pub fn parse(text: &str) -> Result<Filter> {
        let (lhs, rhs, equal) = if let Some((l, r)) = text.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, r, false)
        } else {
            bail!("--filter {text:?}: expected PATH == VALUE or PATH != VALUE, e.g. 'meta.pile_set_name == \"PubMed Abstracts\"'");
        };
        let path: Vec<String> = lhs.trim().split('.').map(|s| s.to_string()).collect();
        if path.iter().any(|p| p.is_empty()) {
            bail!(
                "--filter {text:?}: {:?} is not a dotted field path",
                lhs.trim()
            );
        }
        let value = serde_json::from_str(rhs.trim()).map_err(|e| {
            anyhow!(
                "--filter {text:?}: {:?} is not a JSON value (quote strings: \"...\"): {e}",
                rhs.trim()
            )
        })?;
        Ok(Filter {
            path,
            equal,
            value,
            text: text.trim().to_string(),
        })
    }

    /// Whether `record` passes (a missing field is not equal to anything).
    pub fn keeps(&self, record: &serde_json::Value) -> bool {
        let found = lookup(record, &self.path);
        (found == Some(&self.value)) == self.equal
    }
}

/// The value at a dotted path (`a.b.0.c`), if any.
pub fn lookup<'v, S: AsRef<str>>(
    v: &'v serde_json::Value,
    path: &[S],
) -> Option<&'v serde_json::Value> {
    path.iter().try_fold(v, |v, key| {
        let key = key.as_ref();
        match v {
            serde_json::Value::Object(m) => m.get(key),
            serde_json::Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    #[test]
    fn compression_is_read_by_extension_and_by_flag() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"text\": \"one\"}\n{\"text\": \"two\"}\n".repeat(1000);
        let plain = dir.path().join("a.jsonl");
        std::fs::write(&plain, &text).unwrap();
        let gz = dir.path().join("a.jsonl.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        std::fs::write(&gz, e.finish().unwrap()).unwrap();
        // Two zstd frames one after the other, under a name without the extension.
        let zst = dir.path().join("a.jsonl.data");
        let half = text.len() / 2;
        let mut z = zstd::encode_all(&text.as_bytes()[..half], 3).unwrap();
        z.extend(zstd::encode_all(&text.as_bytes()[half..], 3).unwrap());
        std::fs::write(&zst, z).unwrap();
        for (path, format) in [
            (&plain, Format::Auto),
            (&gz, Format::Auto),
            (&zst, Format::Zstd),
        ] {
            let mut o = open(path, format).unwrap();
            let mut got = String::new();
            o.reader.read_to_string(&mut got).unwrap();
            assert_eq!(got, text, "{}", path.display());
            let size = std::fs::metadata(path).unwrap().len();
            assert_eq!(o.consumed.load(Ordering::Relaxed), size);
        }
        assert_eq!(
            content_extension(&gz, Format::Auto).as_deref(),
            Some("jsonl")
        );
        assert_eq!(
            content_extension(&plain, Format::Auto).as_deref(),
            Some("jsonl")
        );
        let e = open(&plain, Format::Zstd).err().unwrap().to_string();
        assert!(e.contains("not a zstd file"), "{e}");
    }

    #[test]
    fn directories_and_globs_expand_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        for f in ["b.jsonl", "a.jsonl", "sub/c.jsonl", ".hidden", "x.txt"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let got = expand(&[d.to_path_buf()]).unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["a.jsonl", "b.jsonl", "sub/c.jsonl", "x.txt"]);
        let got = expand(&[d.join("*.jsonl")]).unwrap();
        assert_eq!(got, [d.join("a.jsonl"), d.join("b.jsonl")]);
        let e = expand(&[d.join("*.parquet")]).unwrap_err().to_string();
        assert!(e.contains("no file matches"), "{e}");
        let e = expand(&[d.join("missing.jsonl")]).unwrap_err().to_string();
        assert!(e.contains("missing.jsonl: cannot read input"), "{e}");
    }

    #[test]
    fn filters_compare_dotted_paths_with_json_values() {
        let r = json!({"text": "t", "meta": {"pile_set_name": "PubMed Abstracts", "n": 3}, "tags": ["a", "b"]});
        let f = Filter::parse(r#"meta.pile_set_name == "PubMed Abstracts""#).unwrap();
        assert!(f.keeps(&r));
        assert!(
            !Filter::parse(r#"meta.pile_set_name != "PubMed Abstracts""#)
                .unwrap()
                .keeps(&r)
        );
        assert!(Filter::parse("meta.n == 3").unwrap().keeps(&r));
        assert!(Filter::parse(r#"tags.1 == "b""#).unwrap().keeps(&r));
        assert!(!Filter::parse(r#"meta.missing == "x""#).unwrap().keeps(&r));
        assert!(Filter::parse(r#"meta.missing != "x""#).unwrap().keeps(&r));
        for bad in ["meta.pile_set_name = 1", "meta..x == 1", "meta.x == PubMed"] {
            let e = Filter::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("--filter"), "{e}");
        }
    }
}
