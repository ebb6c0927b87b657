//! Chapter 6 (`network3.py`): a net as a list of layers (ConvPoolLayer,
//! FullyConnectedLayer, SoftmaxLayer), with sigmoid, ReLU or tanh, dropout
//! and the log-likelihood cost.
//!
//! - [`spec`]: `--net SPEC` parsed and validated against the input's shape;
//! - [`activation`]: the activations and their derivatives;
//! - [`conv`]: patches (im2col), max-pooling and their gradients;
//! - [`dropout`]: masks that are a pure function of the sample's place in the
//!   epoch, never of the shard or worker that computes it;
//! - [`net`]: the forward pass, the summed backprop of a shard, network3's
//!   initialisation.

pub mod activation;
pub mod conv;
pub mod dropout;
pub mod net;
pub mod spec;

pub use activation::Activation;
pub use dropout::DropoutKey;
pub use spec::{Layer, NetSpec, Shape};

#[cfg(test)]
mod tests;
