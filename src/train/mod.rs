//! Training: the conditional objective, AdamW with schedules and clipping, the step, and the run
//! (data order, evaluation, metrics, checkpoints, outputs).
pub mod agree;
pub mod checkpoint;
pub mod grad_sums;
pub mod guard;
pub mod interrupt;
pub mod memory;
pub mod objective;
pub mod on_device;
pub mod optim;
pub mod output_dir;
pub mod parity;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod trainer;
