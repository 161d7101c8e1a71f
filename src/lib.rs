//! kiln: Rust-native LLM pre-training for instruction pre-training (Cheng et al. 2024).
//!
//! The library holds everything; `main.rs` only parses the command line and dispatches. Modules
//! are layered (docs/ARCHITECTURE.md; checked by tests/layers.rs), lowest first: `rng`, `fsutil`,
//! `safetensors_io`; `backend`; `model` and `data`; `config`; `dist`, `hf`, `eval`, `synth`;
//! `train`; `plot`; `bench` and `world`; `cli`; `commands`.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod dist;
pub mod eval;
pub mod fsutil;
pub mod hf;
pub mod model;
pub mod plot;
pub mod rng;
pub mod safetensors_io;
pub mod synth;
pub mod train;
pub mod world;
