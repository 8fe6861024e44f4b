//! Training: the conditional objective, AdamW with schedules and clipping, and the step loop.
pub mod objective;
pub mod optim;
pub mod schedule;
pub mod trainer;
