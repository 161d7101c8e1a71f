//! Streaming the text of JSONL or plain-text files line by line, for consumers that take an
//! iterator of strings (the tokenizer trainer).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Lines of text files, or a field of JSONL lines, as an iterator for the tokenizer trainer.
/// The texts of a list of files, one per line: a `.jsonl`/`.json` file's `field` of each
/// non-empty line, any other file's lines as they are. The first bad file or line (unreadable,
/// not UTF-8, invalid JSON, no such field) ends the iteration and is left in `error`, naming the
/// file and line: a consumer that only takes an iterator (the BPE trainer) cannot return it.
pub struct TextLines {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, bool, BufReader<File>, u64)>,
    field: String,
    error: Arc<Mutex<Option<anyhow::Error>>>,
}

impl TextLines {
    pub fn new(
        files: Vec<PathBuf>,
        field: String,
        error: Arc<Mutex<Option<anyhow::Error>>>,
    ) -> Self {
        TextLines {
            files: files.into_iter(),
            current: None,
            field,
            error,
        }
    }

    fn fail(&mut self, e: anyhow::Error) -> Option<String> {
        *self.error.lock().expect("poisoned") = Some(e);
        self.current = None;
        self.files = Vec::new().into_iter();
        None
    }
}

impl Iterator for TextLines {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        loop {
            if self.current.is_none() {
                let p = self.files.next()?;
                let jsonl = matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("jsonl" | "json")
                );
                match File::open(&p) {
                    Ok(f) => self.current = Some((p, jsonl, BufReader::new(f), 0)),
                    Err(e) => {
                        return self.fail(anyhow::anyhow!("{}: cannot open: {e}", p.display()))
                    }
                }
            }
            let (path, jsonl, reader, n) = self.current.as_mut().expect("just set");
            let mut buf = Vec::new();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => *n += 1,
                Err(e) => {
                    let msg = anyhow::anyhow!("{}: read error: {e}", path.display());
                    return self.fail(msg);
                }
            }
            let (path, jsonl, n) = (path.clone(), *jsonl, *n);
            let Ok(line) = String::from_utf8(buf) else {
                return self.fail(anyhow::anyhow!("{}:{n}: not valid UTF-8", path.display()));
            };
            if !jsonl {
                return Some(line);
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    return self.fail(anyhow::anyhow!("{}:{n}: invalid JSON: {e}", path.display()))
                }
            };
            match v.get(&self.field).and_then(|t| t.as_str()) {
                Some(t) => return Some(t.to_string()),
                None => {
                    let msg = anyhow::anyhow!("{}:{n}: no {:?} field", path.display(), self.field);
                    return self.fail(msg);
                }
            }
        }
    }
}
