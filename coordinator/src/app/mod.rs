//! The application around the server: what a person running the trainer
//! sees and uses. The server side (service, pool, training loop,
//! checkpoints) is in the crate's other modules and knows nothing of these.
//!
//! - [`run`]: one training run from flags to summary (what `coordinator
//!   train` does): resume, `--init`, `--local` or a served cluster, then
//!   the model, the run record and the summary line;
//! - [`launch`]: local worker processes for the one-command cluster;
//! - [`ui`], [`report`]: progress bar, epoch lines, metrics CSV, plots;
//! - [`dashboard`], [`trace`]: the live page with `/metrics`, and the
//!   `--trace` timeline, both fed by the pool's observer;
//! - [`record`]: the run record and `verify`; [`record_file`] reads one within a memory bound;
//! - [`data`]: fetching and loading MNIST;
//! - [`model_use`], [`digits`]: `evaluate`, `predict` (with MNIST-style
//!   preprocessing of a user's image) and `export`;
//! - [`health`]: the `health` probe;
//! - [`error`]: [`AppError`], why any of them failed.

pub mod dashboard;
pub mod data;
pub mod digits;
pub mod error;
pub mod health;
pub mod launch;
pub mod model_use;
pub mod record;
pub mod record_file;
pub mod report;
pub mod run;
pub mod trace;
pub mod ui;

pub use error::{AppError, AppResult};
