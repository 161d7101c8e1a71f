//! Training: the loop (`trainer`), learning-rate schedules, checkpoints.

pub mod checkpoint;
pub mod memory;
pub mod schedule;
pub mod trainer;
