//! Token shards on disk: kiln's own format (writer and memory-mapped reader) and llm.c /
//! modded-nanogpt `.bin` shards (reader only).
//!
//! kiln shard layout (all integers little-endian; docs/FORMATS.md is the reference):
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"KILNSHRD"
//!      8     4  version (1)
//!     12     4  token width in bytes (2 or 4)
//!     16     4  flags (bit 0: loss-mask bits present)
//!     20     4  reserved (0)
//!     24     8  token count N
//!     32     8  document count D
//!     40     8  vocabulary size V
//!     48     8  tokenizer fingerprint
//!     56     8  total file size in bytes
//!     64    64  reserved (0)
//!    128        tokens: N × width bytes, padded with zeros to a multiple of 8
//!               document index: (D + 1) × u64 token offsets, first 0, last N, non-decreasing
//!               loss mask (flag bit 0): ceil(N / 8) bytes, bit i%8 of byte i/8 = token i in the loss
//! ```
//!
//! Readers validate everything on open (magic, version, sizes, index, every token id < V) and
//! name the file and the problem in the error. This module does not know about tokenizers or
//! mixtures: it stores and serves token ids, document boundaries and mask bits.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::fsutil::{sync_parent, tmp_path};

pub const MAGIC: &[u8; 8] = b"KILNSHRD";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 128;
const FLAG_LOSS_MASK: u32 = 1;

/// llm.c header: 256 × i32; magic 20240520 means u16 tokens, 20240801 u32 tokens.
pub const LLMC_MAGIC_U16: i32 = 20240520;
pub const LLMC_MAGIC_U32: i32 = 20240801;
const LLMC_HEADER_BYTES: usize = 256 * 4;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

fn invalid(path: &Path, problem: impl Into<String>) -> ShardError {
    ShardError::Invalid {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> ShardError {
    ShardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Token width on disk: u16 when every id fits, u32 otherwise.
pub fn token_width_for_vocab(vocab_size: u64) -> u32 {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// Streams documents into one kiln shard. Tokens go straight to disk through a buffer; the
/// document index and mask bits are kept in memory (16 bytes per document, 1 bit per token) and
/// appended on `finish`. The file is written under a temporary name, fsynced and renamed.
pub struct ShardWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    out: BufWriter<File>,
    width: u32,
    vocab_size: u64,
    fingerprint: u64,
    offsets: Vec<u64>,
    mask: Option<Vec<u8>>,
    tokens: u64,
}

impl ShardWriter {
    /// `with_loss_mask`: store per-token loss-mask bits (tokens pushed without a mask count as 1).
    pub fn create(
        path: &Path,
        vocab_size: u64,
        fingerprint: u64,
        with_loss_mask: bool,
    ) -> Result<Self, ShardError> {
        let tmp_path = tmp_path(path);
        let file = File::create(&tmp_path).map_err(|e| io_err(&tmp_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_BYTES])
            .map_err(|e| io_err(&tmp_path, e))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            tmp_path,
            out,
            width: token_width_for_vocab(vocab_size),
            vocab_size,
            fingerprint,
            offsets: vec![0],
            mask: with_loss_mask.then(Vec::new),
            tokens: 0,
        })
    }

    pub fn tokens_written(&self) -> u64 {
        self.tokens
    }

    pub fn documents_written(&self) -> u64 {
        self.offsets.len() as u64 - 1
    }

    /// Bytes the shard will take if finished now (for rolling to a new shard at a size).
    pub fn bytes_so_far(&self) -> u64 {
        HEADER_BYTES as u64
            + pad8(self.tokens * self.width as u64)
            + 8 * self.offsets.len() as u64
            + self.mask.as_ref().map_or(0, |m| m.len() as u64)
    }

    /// Append one document. `loss_mask`, when given, has one entry per token (true = in the loss).
    pub fn push_document(
        &mut self,
        tokens: &[u32],
        loss_mask: Option<&[bool]>,
    ) -> Result<(), ShardError> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as u64 >= self.vocab_size) {
            return Err(invalid(
                &self.path,
                format!(
                    "token id {bad} is not below the vocabulary size {}",
                    self.vocab_size
                ),
            ));
        }
        if let Some(m) = loss_mask {
            assert_eq!(m.len(), tokens.len(), "loss mask length != token count");
        }
        let mut buf = Vec::with_capacity(tokens.len() * self.width as usize);
        if self.width == 2 {
            for &t in tokens {
                buf.extend_from_slice(&(t as u16).to_le_bytes());
            }
        } else {
            for &t in tokens {
                buf.extend_from_slice(&t.to_le_bytes());
            }
        }
        self.out
            .write_all(&buf)
            .map_err(|e| io_err(&self.tmp_path, e))?;
        if let Some(bits) = self.mask.as_mut() {
            for (i, _) in tokens.iter().enumerate() {
                let pos = self.tokens + i as u64;
                let byte = (pos / 8) as usize;
                if byte >= bits.len() {
                    bits.push(0);
                }
                if loss_mask.is_none_or(|m| m[i]) {
                    bits[byte] |= 1 << (pos % 8);
                }
            }
        }
        self.tokens += tokens.len() as u64;
        self.offsets.push(self.tokens);
        Ok(())
    }

    /// Give up on this shard: close and remove its temporary file.
    pub fn abandon(self) {
        let tmp = self.tmp_path.clone();
        drop(self);
        let _ = std::fs::remove_file(tmp);
    }

    /// Write the index, mask and header; fsync; rename into place. Returns (tokens, documents).
    pub fn finish(mut self) -> Result<(u64, u64), ShardError> {
        let e = |err| io_err(&self.tmp_path, err);
        let token_bytes = self.tokens * self.width as u64;
        let pad = (pad8(token_bytes) - token_bytes) as usize;
        self.out.write_all(&vec![0u8; pad]).map_err(e)?;
        for off in &self.offsets {
            self.out.write_all(&off.to_le_bytes()).map_err(e)?;
        }
        if let Some(bits) = &self.mask {
            self.out.write_all(bits).map_err(e)?;
        }
        let total = self.bytes_so_far();
        let docs = self.documents_written();
        let header = encode_header(&Header {
            width: self.width,
            flags: if self.mask.is_some() {
                FLAG_LOSS_MASK
            } else {
                0
            },
            tokens: self.tokens,
            docs,
            vocab_size: self.vocab_size,
            fingerprint: self.fingerprint,
            file_size: total,
        });
        let mut file = self
            .out
            .into_inner()
            .map_err(|err| io_err(&self.tmp_path, err.into_error()))?;
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header))
            .and_then(|_| file.sync_all())
            .map_err(|err| io_err(&self.tmp_path, err))?;
        drop(file);
        std::fs::rename(&self.tmp_path, &self.path).map_err(|err| io_err(&self.path, err))?;
        sync_parent(&self.path);
        Ok((self.tokens, docs))
    }
}

fn pad8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

struct Header {
    width: u32,
    flags: u32,
    tokens: u64,
    docs: u64,
    vocab_size: u64,
    fingerprint: u64,
    file_size: u64,
}

fn encode_header(h: &Header) -> [u8; HEADER_BYTES] {
    let mut b = [0u8; HEADER_BYTES];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&h.width.to_le_bytes());
    b[16..20].copy_from_slice(&h.flags.to_le_bytes());
    b[24..32].copy_from_slice(&h.tokens.to_le_bytes());
    b[32..40].copy_from_slice(&h.docs.to_le_bytes());
    b[40..48].copy_from_slice(&h.vocab_size.to_le_bytes());
    b[48..56].copy_from_slice(&h.fingerprint.to_le_bytes());
    b[56..64].copy_from_slice(&h.file_size.to_le_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Which on-disk format a shard is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardFormat {
    Kiln,
    LlmC,
}

/// A memory-mapped, validated token shard of either format. Tokens are read in place; document
/// boundaries come from the kiln index, or for llm.c shards from the delimiter token (each
/// occurrence starts a new document, as llm.c's scripts put `<|endoftext|>` before every document).
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    format: ShardFormat,
    width: u32,
    tokens_at: usize,
    n_tokens: u64,
    /// Token offsets of document starts plus the final end (len = documents + 1).
    doc_offsets: DocOffsets,
    mask_at: Option<usize>,
    vocab_size: u64,
    fingerprint: Option<u64>,
}

enum DocOffsets {
    /// Index stored in the kiln file at this byte offset.
    InFile(usize, usize),
    /// Built at open for llm.c shards.
    Owned(Vec<u64>),
}

impl Shard {
    /// Open and validate a shard of either format (told apart by magic). `vocab_size` bounds the
    /// token ids of llm.c shards (which do not record it) and must be at least a kiln shard's own;
    /// `delimiter` is the document-start token of llm.c shards.
    pub fn open(path: &Path, vocab_size: u64, delimiter: Option<u32>) -> Result<Self, ShardError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        // SAFETY: the mapping is read-only; kiln never writes shards in place (writers use a temporary
        // name and rename), so the bytes do not change under the map while it lives.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        if map.len() >= 8 && &map[0..8] == MAGIC {
            Self::open_kiln(path, map, vocab_size)
        } else if map.len() >= 4
            && matches!(
                i32::from_le_bytes(map[0..4].try_into().expect("4 bytes")),
                LLMC_MAGIC_U16 | LLMC_MAGIC_U32
            )
        {
            Self::open_llmc(path, map, vocab_size, delimiter)
        } else if map.len() < 8 {
            Err(invalid(
                path,
                format!("file is {} bytes, too short to be a token shard", map.len()),
            ))
        } else {
            Err(invalid(
                path,
                "not a token shard: unknown magic (expected a kiln shard or an llm.c .bin shard)",
            ))
        }
    }

    fn open_kiln(path: &Path, map: Mmap, max_vocab: u64) -> Result<Self, ShardError> {
        if map.len() < HEADER_BYTES {
            return Err(invalid(
                path,
                format!(
                    "truncated header: file is {} bytes, the header alone is {HEADER_BYTES}",
                    map.len()
                ),
            ));
        }
        let version = u32_at(&map, 8);
        if version != VERSION {
            return Err(invalid(
                path,
                format!(
                    "shard version {version} is not supported (this kiln reads version {VERSION})"
                ),
            ));
        }
        let width = u32_at(&map, 12);
        if width != 2 && width != 4 {
            return Err(invalid(
                path,
                format!("token width {width} bytes is invalid (2 or 4)"),
            ));
        }
        let flags = u32_at(&map, 16);
        let n_tokens = u64_at(&map, 24);
        let docs = u64_at(&map, 32);
        let vocab_size = u64_at(&map, 40);
        let fingerprint = u64_at(&map, 48);
        let file_size = u64_at(&map, 56);
        let has_mask = flags & FLAG_LOSS_MASK != 0;
        // Where the index and the mask start and how long the file must be, by the header; None
        // when the counts are past any file (checked before anything is read at those offsets).
        let layout = || -> Option<(u64, u64, u64)> {
            let token_bytes = n_tokens.checked_mul(width as u64)?;
            let index_at =
                (HEADER_BYTES as u64).checked_add(token_bytes.checked_next_multiple_of(8)?)?;
            let mask_at = index_at.checked_add(docs.checked_add(1)?.checked_mul(8)?)?;
            let expected = mask_at.checked_add(if has_mask { n_tokens.div_ceil(8) } else { 0 })?;
            Some((index_at, mask_at, expected))
        };
        let Some((index_at, mask_at, expected)) = layout() else {
            return Err(invalid(
                path,
                format!(
                    "size mismatch: header says {n_tokens} tokens and {docs} documents, more than any file holds; file is {} bytes (corrupt)",
                    map.len()
                ),
            ));
        };
        if file_size != expected || map.len() as u64 != expected {
            return Err(invalid(
                path,
                format!(
                    "size mismatch: header says {n_tokens} tokens and {docs} documents ({expected} bytes), file is {} bytes (truncated or corrupt)",
                    map.len()
                ),
            ));
        }
        if vocab_size > max_vocab {
            return Err(invalid(path, format!("shard vocabulary size {vocab_size} exceeds the configured vocabulary size {max_vocab}")));
        }
        let shard = Shard {
            path: path.to_path_buf(),
            format: ShardFormat::Kiln,
            width,
            tokens_at: HEADER_BYTES,
            n_tokens,
            doc_offsets: DocOffsets::InFile(index_at as usize, docs as usize + 1),
            mask_at: has_mask.then_some(mask_at as usize),
            vocab_size,
            fingerprint: Some(fingerprint),
            map,
        };
        // Index: starts at 0, ends at N, non-decreasing.
        let n = shard.num_documents() + 1;
        let mut prev = 0u64;
        for i in 0..n {
            let off = shard.doc_offset(i);
            if (i == 0 && off != 0)
                || off < prev
                || off > n_tokens
                || (i == n - 1 && off != n_tokens)
            {
                return Err(invalid(
                    path,
                    format!(
                        "corrupt document index at entry {i} (offset {off}, {n_tokens} tokens)"
                    ),
                ));
            }
            prev = off;
        }
        shard.check_token_ids(vocab_size)?;
        Ok(shard)
    }

    fn open_llmc(
        path: &Path,
        map: Mmap,
        vocab_size: u64,
        delimiter: Option<u32>,
    ) -> Result<Self, ShardError> {
        if map.len() < LLMC_HEADER_BYTES {
            return Err(invalid(
                path,
                format!(
                    "truncated llm.c header: file is {} bytes, the header is {LLMC_HEADER_BYTES}",
                    map.len()
                ),
            ));
        }
        let magic = i32::from_le_bytes(map[0..4].try_into().expect("4 bytes"));
        let width = if magic == LLMC_MAGIC_U16 { 2 } else { 4 };
        let count = i32::from_le_bytes(map[8..12].try_into().expect("4 bytes"));
        if count < 0 {
            return Err(invalid(
                path,
                format!("llm.c header token count {count} is negative"),
            ));
        }
        let n_tokens = count as u64;
        let expected = LLMC_HEADER_BYTES as u64 + n_tokens * width as u64;
        if map.len() as u64 != expected {
            return Err(invalid(path, format!("size mismatch: llm.c header says {n_tokens} tokens ({expected} bytes), file is {} bytes (truncated or corrupt)", map.len())));
        }
        let mut shard = Shard {
            path: path.to_path_buf(),
            format: ShardFormat::LlmC,
            width,
            tokens_at: LLMC_HEADER_BYTES,
            n_tokens,
            doc_offsets: DocOffsets::Owned(Vec::new()),
            mask_at: None,
            vocab_size,
            fingerprint: None,
            map,
        };
        shard.check_token_ids(vocab_size)?;
        let mut offsets = vec![0u64];
        if let Some(delim) = delimiter {
            for i in 1..n_tokens {
                if shard.token(i) == delim {
                    offsets.push(i);
                }
            }
        }
        if n_tokens > 0 {
            offsets.push(n_tokens);
        }
        shard.doc_offsets = DocOffsets::Owned(offsets);
        Ok(shard)
    }

    fn check_token_ids(&self, vocab_size: u64) -> Result<(), ShardError> {
        let max_and_pos = |iter: &mut dyn Iterator<Item = u32>| {
            iter.enumerate().find(|&(_, t)| t as u64 >= vocab_size)
        };
        let bytes = &self.map
            [self.tokens_at..self.tokens_at + (self.n_tokens * self.width as u64) as usize];
        let bad = if self.width == 2 {
            max_and_pos(
                &mut bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
            )
        } else {
            max_and_pos(
                &mut bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            )
        };
        if let Some((pos, tok)) = bad {
            return Err(invalid(
                &self.path,
                format!(
                    "token id {tok} at token {pos} (byte offset {}) is not below the vocabulary size {vocab_size}",
                    self.tokens_at + pos * self.width as usize
                ),
            ));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn format(&self) -> ShardFormat {
        self.format
    }
    pub fn num_tokens(&self) -> u64 {
        self.n_tokens
    }
    pub fn num_documents(&self) -> usize {
        match &self.doc_offsets {
            DocOffsets::InFile(_, n) => n - 1,
            DocOffsets::Owned(v) => v.len().saturating_sub(1),
        }
    }
    pub fn vocab_size(&self) -> u64 {
        self.vocab_size
    }
    /// The tokenizer fingerprint recorded by `kiln prep`; llm.c shards record none.
    pub fn fingerprint(&self) -> Option<u64> {
        self.fingerprint
    }
    pub fn has_loss_mask(&self) -> bool {
        self.mask_at.is_some()
    }

    fn doc_offset(&self, i: usize) -> u64 {
        match &self.doc_offsets {
            DocOffsets::InFile(at, _) => u64_at(&self.map, at + 8 * i),
            DocOffsets::Owned(v) => v[i],
        }
    }

    /// Token range of document `i`.
    pub fn document(&self, i: usize) -> Range<u64> {
        self.doc_offset(i)..self.doc_offset(i + 1)
    }

    /// Token `i` (bounds-checked by the slice).
    #[inline]
    pub fn token(&self, i: u64) -> u32 {
        let at = self.tokens_at + (i * self.width as u64) as usize;
        if self.width == 2 {
            u16::from_le_bytes([self.map[at], self.map[at + 1]]) as u32
        } else {
            u32::from_le_bytes([
                self.map[at],
                self.map[at + 1],
                self.map[at + 2],
                self.map[at + 3],
            ])
        }
    }

    /// Append tokens `range` to `out`, widening to u32.
    pub fn extend_tokens(&self, range: Range<u64>, out: &mut Vec<u32>) {
        let w = self.width as usize;
        let start = self.tokens_at + range.start as usize * w;
        let end = self.tokens_at + range.end as usize * w;
        let bytes = &self.map[start..end];
        if w == 2 {
            out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
            );
        } else {
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
    }

    /// Append loss-mask bits of tokens `range` to `out` (all true when the shard has no mask).
    pub fn extend_loss_mask(&self, range: Range<u64>, out: &mut Vec<bool>) {
        match self.mask_at {
            None => out.extend(std::iter::repeat_n(
                true,
                (range.end - range.start) as usize,
            )),
            Some(at) => {
                out.extend(range.map(|i| self.map[at + (i / 8) as usize] >> (i % 8) & 1 == 1))
            }
        }
    }
}

/// Write an llm.c-format shard (used by tests and `kiln prep --format llmc`).
pub fn write_llmc_shard(path: &Path, tokens: &[u32], width: u32) -> Result<(), ShardError> {
    let mut header = [0i32; 256];
    header[0] = if width == 2 {
        LLMC_MAGIC_U16
    } else {
        LLMC_MAGIC_U32
    };
    header[1] = if width == 2 { 1 } else { 2 };
    header[2] = i32::try_from(tokens.len())
        .map_err(|_| invalid(path, "too many tokens for an llm.c shard"))?;
    let mut bytes: Vec<u8> = header.iter().flat_map(|h| h.to_le_bytes()).collect();
    for &t in tokens {
        if width == 2 {
            let t = u16::try_from(t)
                .map_err(|_| invalid(path, format!("token id {t} does not fit in u16")))?;
            bytes.extend_from_slice(&t.to_le_bytes());
        } else {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
    }
    let tmp = tmp_path(path);
    std::fs::write(&tmp, &bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<Vec<u32>> {
        vec![vec![1, 2, 3], vec![], vec![4, 5, 6, 7, 8], vec![9]]
    }

    #[test]
    fn kiln_shard_round_trips_tokens_documents_and_mask() {
        let dir = tempfile::tempdir().unwrap();
        for vocab in [100u64, 70_000] {
            let path = dir.path().join(format!("s{vocab}.kiln"));
            let mut w = ShardWriter::create(&path, vocab, 42, true).unwrap();
            for (i, d) in docs().iter().enumerate() {
                let mask: Vec<bool> = d.iter().map(|t| (t + i as u32).is_multiple_of(2)).collect();
                w.push_document(d, Some(&mask)).unwrap();
            }
            assert_eq!(w.finish().unwrap(), (9, 4));
            let s = Shard::open(&path, vocab, None).unwrap();
            assert_eq!(s.num_documents(), 4);
            assert_eq!(s.fingerprint(), Some(42));
            for (i, d) in docs().iter().enumerate() {
                let mut out = Vec::new();
                s.extend_tokens(s.document(i), &mut out);
                assert_eq!(&out, d);
                let mut m = Vec::new();
                s.extend_loss_mask(s.document(i), &mut m);
                let want: Vec<bool> = d.iter().map(|t| (t + i as u32).is_multiple_of(2)).collect();
                assert_eq!(m, want);
            }
        }
    }

    #[test]
    fn truncated_and_corrupt_shards_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.kiln");
        let mut w = ShardWriter::create(&path, 100, 0, false).unwrap();
        w.push_document(&[1, 2, 3], None).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();

        let cut = dir.path().join("cut.kiln");
        std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
        let e = Shard::open(&cut, 100, None).err().unwrap().to_string();
        assert!(e.contains("cut.kiln") && e.contains("size mismatch"), "{e}");

        let mut bad = bytes.clone();
        bad[8] = 9;
        std::fs::write(&cut, &bad).unwrap();
        let e = Shard::open(&cut, 100, None).err().unwrap().to_string();
        assert!(e.contains("version 9"), "{e}");

        let mut bad = bytes.clone();
        bad[0] = b'X';
        std::fs::write(&cut, &bad).unwrap();
        let e = Shard::open(&cut, 100, None).err().unwrap().to_string();
        assert!(e.contains("unknown magic"), "{e}");

        let mut bad = bytes.clone();
        bad[HEADER_BYTES] = 200; // token 0 := 200 >= vocab 100
        std::fs::write(&cut, &bad).unwrap();
        let e = Shard::open(&cut, 100, None).err().unwrap().to_string();
        assert!(e.contains("token id 200 at token 0"), "{e}");
    }

    #[test]
    fn llmc_shards_read_with_delimiter_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let eot = 50256;
        let toks = vec![eot, 10, 11, eot, 12, eot, 13, 14, 15];
        for width in [2, 4] {
            let path = dir.path().join(format!("t{width}.bin"));
            write_llmc_shard(&path, &toks, width).unwrap();
            let s = Shard::open(&path, 50257, Some(eot)).unwrap();
            assert_eq!(s.format(), ShardFormat::LlmC);
            assert_eq!(s.num_documents(), 3);
            let mut out = Vec::new();
            s.extend_tokens(s.document(1), &mut out);
            assert_eq!(out, vec![eot, 12]);
            let e = Shard::open(&path, 50000, Some(eot))
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains("50256") && e.contains("vocabulary size 50000"),
                "{e}"
            );
        }
    }
}
