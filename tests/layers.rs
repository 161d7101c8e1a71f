//! The layer rule of docs/ARCHITECTURE.md, checked on the source: no module imports one of its own
//! layer or a higher one (outside `#[cfg(test)]` code). A new top-level module must be given a
//! layer here.

use std::path::Path;

/// Top-level modules, lowest layer first; modules on one line share a layer and must not import
/// each other.
const LAYERS: &[&[&str]] = &[
    &["rng", "fsutil"],
    &["safetensors_io"],
    &["backend"],
    &["model", "data"],
    &["config"],
    &["dist", "hf", "eval", "synth"],
    &["train"],
    &["plot"],
    &["bench", "world"],
    &["cli"],
    &["commands"],
    &["lib", "main"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (modules without a layer, imports against the layers) of the crate source under `src`.
fn check(src: &Path) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut unranked = Vec::new();
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let Some(mine) = layer_of(&module) else {
            unranked.push(module);
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                match layer_of(&name) {
                    Some(theirs) if name != module && theirs >= mine => violations.push(format!(
                        "{}:{}: {module} imports {name}",
                        rel.display(),
                        n + 1
                    )),
                    _ => {}
                }
            }
        }
    }
    unranked.sort();
    unranked.dedup();
    (unranked, violations)
}

#[test]
fn no_module_imports_its_own_layer_or_a_higher_one() {
    let (unranked, violations) = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        unranked.is_empty(),
        "modules without a layer in tests/layers.rs: {unranked:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layers:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_finds_upward_and_sideways_imports_but_not_test_code() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("backend")).unwrap();
    std::fs::write(
        src.join("backend/mod.rs"),
        "use crate::rng::Rng;\nuse crate::train::trainer;\n#[cfg(test)]\nmod tests { use crate::commands; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("hf.rs"),
        "// crate::train in a comment\nuse crate::eval::x;\n",
    )
    .unwrap();
    std::fs::write(src.join("newthing.rs"), "").unwrap();
    let (unranked, violations) = check(src);
    assert_eq!(unranked, ["newthing"]);
    assert_eq!(
        violations,
        [
            "backend/mod.rs:2: backend imports train",
            "hf.rs:2: hf imports eval"
        ]
    );
}
