//! Every integration test in one binary, one module per concern: tonic,
//! rustls and the rest are linked once instead of once per file.
//!
//! - `matches_reference`: the determinism contract (cluster = reference, bit for bit)
//! - `chapter6`: chapter 6's nets (conv, ReLU, dropout, expanded data) under the same contract
//! - `book`: chapter 3's options under the same contract; presets, export to network2.py
//! - `faults`: workers that die or go silent cost only time
//! - `flood`: a dashboard connection flood under a low file limit
//! - `protocol`: malformed and hostile messages from a raw gRPC client
//! - `hostile`: generated scripts of hostile peers against a real cluster
//! - `auth`, `tls`: who may join
//! - `trust`: one kernel set per run; audits catch workers with wrong results
//! - `records`: crafted run records and paths against `verify`
//! - `operations`: health and reflection
//! - `dashboard`: the live page in headless Chromium, `/metrics` through promtool, `--trace`, the page's access rule
//! - `processes`, `model_use`, `netns`: the real binaries as processes
//! - `sockets`: workers over a Unix domain socket (`--listen unix:PATH`, `--spawn-workers`)
//! - `stragglers`: a worker process paused with SIGSTOP is backed up, not waited for

mod auth;
mod book;
mod chapter6;
mod dashboard;
mod faults;
mod flood;
mod hostile;
mod matches_reference;
mod model_use;
mod netns;
mod operations;
mod processes;
mod protocol;
mod records;
mod sockets;
mod stragglers;
mod tls;
mod trust;
