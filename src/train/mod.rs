//! Training: what a run resolves before it starts (`setup`), the loop and its step (`trainer`),
//! the optimizer over one process or many ranks (`optimizer`), every rank as a thread (`ranks`),
//! learning-rate schedules, checkpoints, metrics.jsonl, the memory plan, who owns a run
//! directory (`run_dir`: its lock, a previous run's files), and the start-up check that every rank
//! trains the same thing (`agree`).

pub mod agree;
pub mod checkpoint;
pub mod memory;
pub mod metrics;
pub mod optimizer;
pub mod ranks;
pub mod run_dir;
pub mod schedule;
pub mod setup;
pub mod trainer;
