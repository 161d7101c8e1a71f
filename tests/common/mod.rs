//! Helpers shared by the CLI integration tests: run the `kiln` binary, read its stderr, and
//! assert the one-line error contract.
#![allow(dead_code)]

pub mod standin;

use std::path::Path;
use std::process::{Command, Output};

/// Run the `kiln` binary with `args` in `cwd`.
pub fn kiln(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run kiln")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a failure with one `error:` line containing every needle, and no panic.
pub fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "want exactly one error line: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
}

/// Relative error ‖got − want‖ / ‖want‖ (DESIGN.md §4).
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// A parquet file of string columns (`schema` a parquet message type of required UTF8 byte arrays,
/// possibly in groups; `columns` the leaf columns' values in schema order), written in row groups of
/// `per_group` rows, snappy-compressed, as the public datasets ship.
pub fn write_parquet(path: &Path, schema: &str, columns: &[Vec<String>], per_group: usize) {
    write_parquet_with(
        path,
        schema,
        columns,
        per_group,
        parquet::basic::Compression::SNAPPY,
    )
}

/// [`write_parquet`] with another codec for the column chunks.
pub fn write_parquet_with(
    path: &Path,
    schema: &str,
    columns: &[Vec<String>],
    per_group: usize,
    codec: parquet::basic::Compression,
) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = std::sync::Arc::new(WriterProperties::builder().set_compression(codec).build());
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let rows = columns[0].len();
    for start in (0..rows).step_by(per_group) {
        let end = (start + per_group).min(rows);
        let mut g = w.next_row_group().unwrap();
        for col in columns {
            let mut c = g.next_column().unwrap().unwrap();
            let values: Vec<ByteArray> = col[start..end]
                .iter()
                .map(|v| ByteArray::from(v.as_str()))
                .collect();
            c.typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            c.close().unwrap();
        }
        g.close().unwrap();
    }
    w.close().unwrap();
}

/// A parquet file of conversations as the Hugging Face Hub's parquet conversion writes them
/// (WizardLM evol-instruct V2): `idx` and `conversations`, a LIST of `{from, value}` structs, all
/// optional, snappy-compressed, one row group.
pub fn write_parquet_conversations(path: &Path, rows: &[(String, Vec<(String, String)>)]) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = "message schema {
        OPTIONAL BYTE_ARRAY idx (UTF8);
        OPTIONAL GROUP conversations (LIST) {
            REPEATED GROUP list {
                OPTIONAL GROUP element {
                    OPTIONAL BYTE_ARRAY from (UTF8);
                    OPTIONAL BYTE_ARRAY value (UTF8);
                }
            }
        }
    }";
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = std::sync::Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut g = w.next_row_group().unwrap();
    // idx: definition level 1 when present.
    let idx: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.0.as_str())).collect();
    let mut c = g.next_column().unwrap().unwrap();
    c.typed::<ByteArrayType>()
        .write_batch(&idx, Some(&vec![1; rows.len()]), None)
        .unwrap();
    c.close().unwrap();
    // conversations.list.element.{from,value}: every level present (definition 4); repetition 0
    // starts a row, 1 continues its list.
    for leaf in 0..2 {
        let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
        for (_, turns) in rows {
            for (k, (from, value)) in turns.iter().enumerate() {
                values.push(ByteArray::from(if leaf == 0 {
                    from.as_str()
                } else {
                    value.as_str()
                }));
                def.push(4i16);
                rep.push(if k == 0 { 0i16 } else { 1 });
            }
        }
        let mut c = g.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(&values, Some(&def), Some(&rep))
            .unwrap();
        c.close().unwrap();
    }
    g.close().unwrap();
    w.close().unwrap();
}

/// Every document of the shards `dir/NAME_*.kiln`, as token lists, in order.
pub fn shard_documents(dir: &Path, name: &str, vocab: u64) -> Vec<Vec<u32>> {
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy().to_string();
            f.starts_with(&format!("{name}_")) && f.ends_with(".kiln")
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let s = kiln::data::shard::Shard::open(&p, vocab, None).unwrap();
        for i in 0..s.num_documents() {
            let mut t = Vec::new();
            s.extend_tokens(s.document(i), &mut t);
            out.push(t);
        }
    }
    out
}
