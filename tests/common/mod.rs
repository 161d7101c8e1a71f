//! Helpers shared by the CLI integration tests: run the `kiln` binary, read its stderr, and
//! assert the one-line error contract.
#![allow(dead_code)]

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
