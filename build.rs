//! With the `cuda` feature: compile every `kernels/*.cu` into a fatbin (sm_80 and sm_90a SASS,
//! compute_80 PTX) and embed them in the binary through `$OUT_DIR/kernels.rs`.
//!
//! With `cuda-emu` (and not `cuda`): compile the same `kernels/*.cu` as host C++ against the
//! emulator's shim (`kernels/emu/`), with the emulator's runtime, into a static library; each
//! file gets a table of its kernels (`kiln_emu_module_<file>`), found by preprocessing the file
//! with `__global__` defined as a marker. `KILN_EMU_SANITIZE=address` builds it with
//! AddressSanitizer (run the result with the ASan runtime preloaded: scripts/emu-sanitize.sh).
//!
//! Without either: nothing, so the default build needs no CUDA and no C++ at all.
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
    println!("cargo:rerun-if-env-changed=KILN_EMU_SANITIZE");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        if std::env::var_os("CARGO_FEATURE_CUDA_EMU").is_some() {
            build_emulator();
        }
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

#[cfg(feature = "cuda-emu")]
fn build_emulator() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let kernels = std::fs::canonicalize("kernels").expect("kernels/ directory");
    println!("cargo:rerun-if-changed=kernels");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh"))
        .collect();
    sources.sort();
    for p in &sources {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let emu = kernels.join("emu");
    for f in ["cuda_emu.h", "entries.h", "runtime.cpp"] {
        println!("cargo:rerun-if-changed={}", emu.join(f).display());
    }
    let sanitize = std::env::var("KILN_EMU_SANITIZE")
        .ok()
        .filter(|s| !s.is_empty());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(false)
        .warnings(true)
        .flag("-ffp-contract=off")
        .flag("-fno-strict-aliasing")
        .flag("-Wno-unused-parameter")
        .flag("-Wno-unknown-pragmas")
        .define("KILN_EMU", None)
        .include(&kernels)
        .include(&emu)
        .flag("-include")
        .flag(emu.join("cuda_emu.h").to_str().expect("utf-8 path"));
    if let Some(s) = &sanitize {
        build
            .flag(format!("-fsanitize={s}"))
            .flag("-fno-omit-frame-pointer");
        // The sanitizer's runtime (libasan for `address`); scripts/emu-sanitize.sh preloads it.
        let lib = match s.as_str() {
            "address" => "asan",
            "thread" => "tsan",
            "undefined" => "ubsan",
            other => panic!("KILN_EMU_SANITIZE={other}: use address, thread or undefined"),
        };
        println!("cargo:rustc-link-arg=-l{lib}");
    }
    let compiler = build.get_compiler();
    let mut consts = String::from("use crate::backend::cuda::device::KernelFile;\n");
    let mut externs = String::from("unsafe extern \"C\" {\n");
    for src in sources
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
    {
        let stem = src
            .file_stem()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        // Preprocess with `__global__` as a marker to list the file's kernels, including those
        // that macros generate.
        let pre = Command::new(compiler.path())
            .args([
                "-E",
                "-P",
                "-x",
                "c++",
                "-std=c++17",
                "-DKILN_EMU",
                "-D__global__=KILN_GLOBAL_MARK",
            ])
            .arg("-I")
            .arg(&kernels)
            .arg("-include")
            .arg(emu.join("cuda_emu.h"))
            .arg(src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", compiler.path().display()));
        if !pre.status.success() {
            panic!(
                "preprocessing {} for the CUDA emulator failed:\n{}",
                src.display(),
                String::from_utf8_lossy(&pre.stderr)
            );
        }
        let names = kernel_names(&String::from_utf8_lossy(&pre.stdout));
        if names.is_empty() {
            panic!(
                "{}: no extern \"C\" __global__ kernels found",
                src.display()
            );
        }
        let entries: Vec<String> = names
            .iter()
            .map(|n| format!("    KILN_EMU_ENTRY({n}),\n"))
            .collect();
        let wrapper = out_dir.join(format!("emu_{stem}.cpp"));
        std::fs::write(
            &wrapper,
            format!(
                "// Generated by build.rs: kernels/{stem}.cu for the CUDA emulator.\n\
                 #include \"{}\"\n#include \"entries.h\"\n\
                 static const kiln_emu::KernelEntry kiln_entries[] = {{\n{}}};\n\
                 extern \"C\" const kiln_emu::KernelEntry* kiln_emu_module_{stem}(int* n) {{\n\
                 \x20   *n = (int)(sizeof(kiln_entries) / sizeof(kiln_entries[0]));\n\
                 \x20   return kiln_entries;\n}}\n",
                src.display(),
                entries.concat()
            ),
        )
        .expect("write emulator wrapper");
        build.file(&wrapper);
        externs.push_str(&format!(
            "    fn kiln_emu_module_{stem}(n: *mut i32) -> *const std::ffi::c_void;\n"
        ));
        consts.push_str(&format!(
            "/// kernels/{stem}.cu, compiled for the CUDA emulator.\npub const {}: KernelFile = KernelFile {{ name: \"{stem}\", table: kiln_emu_module_{stem} }};\n",
            stem.to_uppercase()
        ));
    }
    externs.push_str("}\n");
    build.file(emu.join("runtime.cpp"));
    build.compile("kiln_cuda_emu");
    std::fs::write(out_dir.join("kernels.rs"), format!("{externs}{consts}"))
        .expect("write kernels.rs");
}

#[cfg(not(feature = "cuda-emu"))]
fn build_emulator() {}

/// Kernel names in preprocessed source: `KILN_GLOBAL_MARK void NAME(`.
#[cfg(feature = "cuda-emu")]
fn kernel_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("KILN_GLOBAL_MARK") {
        rest = &rest[i + "KILN_GLOBAL_MARK".len()..];
        let t = rest.trim_start();
        if let Some(t) = t.strip_prefix("void") {
            let t = t.trim_start();
            let end = t
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(t.len());
            if end > 0 && t[end..].trim_start().starts_with('(') {
                names.push(t[..end].to_string());
            }
        }
    }
    names
}
