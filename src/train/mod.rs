//! Training: the loop (`trainer`), learning-rate schedules, checkpoints.

pub mod checkpoint;
pub mod memory;
pub mod metrics;
pub mod optimizer;
pub mod ranks;
pub mod schedule;
pub mod setup;
pub mod trainer;
