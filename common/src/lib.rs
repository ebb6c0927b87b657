//! Everything the coordinator and the workers share: the math, the data, the
//! schedule, model files and the wire contract. Purpose: train Nielsen's MNIST
//! network (`network.py`) with synchronous data-parallel SGD, exactly.
//!
//! # Layout
//! The major components are:
//! - [`network`]: sizes, N(0,1) and N(0,1)/√n_in init, feedforward, batched
//!   backprop, evaluate, update; plain `ndarray`, reads like `network.py`;
//! - [`layers`]: chapter 6's nets (`network3.py`): conv+pool, fc and softmax
//!   layers, ReLU and tanh, dropout masks that follow each sample, `--net`;
//! - [`cost`]: chapter 3's quadratic and cross-entropy costs (`network2.py`);
//! - [`optimizer`]: the update: L2 weight decay and momentum's velocity;
//! - [`stopping`]: early stopping and the η schedule, judged on validation accuracy;
//! - [`kernels`]: the products and the sigmoid in a run's kernel set
//!   (`avx2`: register-blocked AVX2/AVX-512 loops; `portable`: plain loops);
//! - [`gradients`]: summed gradients and their reduction in shard order;
//! - [`allocator`]: freed memory kept for the next step (glibc's thresholds);
//! - [`schedule`]: seeded epoch shuffles, mini-batches, logical shards;
//! - [`workspace`]: the same backprop into buffers reused every step (the fast path);
//! - [`plan`]: what a run trains (the flags that decide the weights) and its
//!   state besides the weights, which checkpoints carry;
//! - [`epochs`]: the one epoch loop (η, shuffle, steps, hash chain, timings,
//!   progress, evaluation, early stopping), for `--local` and the cluster alike;
//! - [`step`]: a step's shards, their reduction in shard order and the
//!   update, and the in-process step without allocation;
//! - [`shard`]: a shard's gradient as a worker computes it (whole, or with
//!   the first layer's error);
//! - [`evaluation`]: accuracy, costs and the epoch's report;
//! - [`progress`]: the reports a run gives its watchers, and the [`progress::Progress`] trait;
//! - [`local`]: training in this process (`--local`), on the [`epochs`] loop;
//! - [`network2_json`]: a model as the JSON `network2.py`'s `load` reads;
//! - [`dataset`]: IDX parsing, Nielsen's split, fetching MNIST;
//! - [`metrics`]: step timings and their per-epoch percentiles;
//! - [`model_file`]: safetensors save/load;
//! - [`regular_file`]: opening a path that must be a regular file (never a FIFO);
//! - [`chain`]: the hash chain of a run's weights, for its verifiable record;
//! - [`logging`]: `RUST_LOG` filtering, text or JSON lines;
//! - [`wire`]: the only conversion between [`pb`] messages and math types,
//!   with all validation;
//! - [`auth`]: the shared token workers present;
//! - [`pb`]: types generated from `proto/trainer.proto` (`ddp.v1`).
//!
//! # Determinism
//! For a seed and a shard count `S`, the result is a pure function of the
//! code and the run's kernel set ([`kernels::KernelSet`]): shard gradients
//! are computed by the same function wherever they run and added in shard
//! order. The `avx2` set gives the same bits on every x86-64 CPU with AVX2
//! and FMA (its AVX-512 loops reproduce them), `portable` on any CPU.

pub mod allocator;
pub mod auth;
pub mod chain;
pub mod cost;
pub mod dataset;
pub mod epochs;
pub mod evaluation;
pub mod gradients;
pub mod kernels;
pub mod layers;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod model_file;
pub mod network;
pub mod network2_json;
pub mod optimizer;
pub mod plan;
pub mod progress;
pub mod regular_file;
pub mod schedule;
pub mod shard;
pub mod step;
pub mod stopping;
pub mod wire;
pub mod workspace;

#[cfg(test)]
mod decoder_fuzz;

/// Types generated from `proto/trainer.proto`, package `ddp.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("ddp.v1");

    /// The encoded `FileDescriptorSet` of `ddp.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ddp_descriptor");
}

pub use gradients::Gradients;
pub use network::Network;
