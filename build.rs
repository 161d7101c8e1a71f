//! With the `cuda` feature: compile every `kernels/*.cu` into a fatbin (sm_80 and sm_90a SASS,
//! compute_80 PTX) and embed them in the binary through `$OUT_DIR/kernels.rs`. Without it:
//! nothing, so the default build needs no CUDA at all.
//!
//! nvcc is found through `NVCC`, then `CUDA_HOME` / `CUDA_PATH` (`bin/nvcc`), then `PATH`. Each
//! file is recompiled only when it or a header in `kernels/` changes.

use std::path::{Path, PathBuf};
use std::process::Command;

const PIP_HINT: &str =
    "pip install nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85, then CUDA_HOME=<site-packages>/nvidia/cu13";

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if p.exists() {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.exists())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_PATH");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let kernels = Path::new("kernels");
    println!("cargo:rerun-if-changed=kernels");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(kernels)
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    let headers: Vec<PathBuf> = std::fs::read_dir(kernels)
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cuh"))
        .collect();
    for p in sources.iter().chain(&headers) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let nvcc = find_nvcc().unwrap_or_else(|| {
        panic!("feature `cuda`: nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH). To install it: {PIP_HINT}")
    });
    // nvcc resolves its own tools relative to its real location: call it by its real path.
    let nvcc = std::fs::canonicalize(&nvcc).unwrap_or(nvcc);
    let newest_header = headers
        .iter()
        .filter_map(|h| std::fs::metadata(h).and_then(|m| m.modified()).ok())
        .max();
    let mut consts = String::new();
    for src in &sources {
        let stem = src
            .file_stem()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let fatbin = out_dir.join(format!("{stem}.fatbin"));
        let stale = match (
            std::fs::metadata(&fatbin).and_then(|m| m.modified()),
            std::fs::metadata(src).and_then(|m| m.modified()),
        ) {
            (Ok(built), Ok(changed)) => changed > built || newest_header.is_some_and(|h| h > built),
            _ => true,
        };
        if stale {
            let status = Command::new(&nvcc)
                .args(["-fatbin", "-O3", "-std=c++17", "--Werror", "all-warnings"])
                .args(["-gencode", "arch=compute_80,code=sm_80"])
                .args(["-gencode", "arch=compute_90a,code=sm_90a"])
                .args(["-gencode", "arch=compute_80,code=compute_80"])
                .arg("-I")
                .arg(kernels)
                .arg("-o")
                .arg(&fatbin)
                .arg(src)
                .status()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {}: {e}. To install nvcc: {PIP_HINT}",
                        nvcc.display()
                    )
                });
            if !status.success() {
                panic!("nvcc failed on {}", src.display());
            }
        }
        consts.push_str(&format!(
            "/// Fatbin of kernels/{stem}.cu.\npub const {}: &[u8] = include_bytes!({:?});\n",
            stem.to_uppercase(),
            fatbin.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("kernels.rs"), consts).expect("write kernels.rs");
}
