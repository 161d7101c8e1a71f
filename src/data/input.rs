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

/// zstd frames one after another until the input ends (a file may hold several).
struct ZstdFrames<R: Read> {
    decoder:
        Option<ruzstd::decoding::StreamingDecoder<BufReader<R>, ruzstd::decoding::FrameDecoder>>,
}

impl<R: Read> ZstdFrames<R> {
    fn new(inner: R) -> std::io::Result<Self> {
        let decoder = ruzstd::decoding::StreamingDecoder::new(BufReader::new(inner))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(ZstdFrames {
            decoder: Some(decoder),
        })
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(d) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let n = d.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // This frame is done: another may follow.
            let mut inner = self.decoder.take().expect("present").into_inner();
            if inner.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.decoder = Some(ruzstd::decoding::StreamingDecoder::new(inner).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
            })?);
        }
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
            match self.rows.next() {
                None => return Ok(0),
                Some(Err(e)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: row {}: {e}", self.path.display(), self.read + 1),
                    ))
                }
                Some(Ok(row)) => {
                    self.line.clear();
                    serde_json::to_writer(&mut self.line, &row.to_json_value())?;
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

/// Open a parquet file as JSON lines.
fn open_parquet(
    path: &Path,
    file: File,
    consumed: Arc<AtomicU64>,
) -> Result<Box<dyn BufRead + Send>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{}: not a parquet file: {e}", path.display()))?;
    let total = reader.metadata().file_metadata().num_rows().max(0) as u64;
    let rows = parquet::record::reader::RowIter::from_file_into(Box::new(reader));
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
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let consumed = Arc::new(AtomicU64::new(0));
    if format.of(path) == Format::Parquet {
        let reader = open_parquet(path, file, consumed.clone())?;
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
            ZstdFrames::new(counted)
                .map_err(|e| anyhow!("{}: not a zstd file: {e}", path.display()))?,
        )),
    };
    Ok(Opened { reader, consumed })
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
        let mut z = ruzstd::encoding::compress_to_vec(
            &text.as_bytes()[..half],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        z.extend(ruzstd::encoding::compress_to_vec(
            &text.as_bytes()[half..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
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
