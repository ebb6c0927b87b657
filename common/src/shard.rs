//! A shard's gradient, as a worker computes it (and as the coordinator
//! recomputes it for an audit): the summed gradient of a few samples at the
//! step's weights, whole ([`summed_gradient`]) or without the first weight
//! matrix plus the first layer's error ([`gradient_and_first_error`]), from
//! which the coordinator completes it ([`complete_first_weights`], which
//! [`crate::wire`] calls); for a chapter-6 net, [`net_gradient`] with the
//! shard's dropout key. [`answer`] picks the one a `Shard` asked for.

use std::cell::RefCell;

use crate::cost::Cost;
use crate::dataset::Samples;
use crate::gradients::Gradients;
use crate::kernels::KernelSet;
use crate::layers::DropoutKey;
use crate::network::Network;
use crate::workspace::Workspace;

/// What a shard's answer holds: the gradient whole, or the gradient without
/// its first weight matrix plus the first layer's error δ¹ (see
/// `Shard.ask_first_error` in the proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerForm {
    /// Every weight and bias gradient.
    #[default]
    Whole,
    /// The first weight matrix left empty, and δ¹ to compute it from.
    FirstError,
}

impl AnswerForm {
    /// [`AnswerForm::FirstError`] if `asked` (a `Shard`'s `ask_first_error`).
    pub fn first_error_if(asked: bool) -> Self {
        if asked {
            AnswerForm::FirstError
        } else {
            AnswerForm::Whole
        }
    }
}

/// The summed gradient of one shard for the quadratic cost (network.py's)
/// with the best kernel set.
pub fn quadratic_gradient(network: &Network, shard: &Samples) -> Gradients {
    summed_gradient(network, shard, Cost::Quadratic, KernelSet::best())
}

thread_local! {
    /// The buffers of [`summed_gradient`] and its kin on this thread.
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::new());
}

/// The summed gradient of one shard for `cost` with the kernel set
/// `kernels`, as a worker computes it: [`Network::backprop_with`]'s bits,
/// computed in this thread's [`Workspace`].
pub fn summed_gradient(
    network: &Network,
    shard: &Samples,
    cost: Cost,
    kernels: KernelSet,
) -> Gradients {
    WORKSPACE.with_borrow_mut(|ws| {
        ws.load_all(shard);
        ws.backprop(network, cost, kernels);
        // The caller keeps the gradients (they go on the wire or into the
        // sum): moved out, not copied; the next shard's are written afresh.
        ws.take_gradients().expect("backprop made them")
    })
}

/// The summed gradient of one shard of a chapter-6 net (`network.net`),
/// whose dropout masks come from `key` (the shard's first sample's place in
/// the epoch): the same bits wherever it is computed.
///
/// # Panics
/// If `network` is not a chapter-6 net.
pub fn net_gradient(
    network: &Network,
    shard: &Samples,
    kernels: KernelSet,
    key: DropoutKey,
) -> Gradients {
    let spec = network.net.as_ref().expect("a chapter-6 net");
    let (x, y) = (shard.inputs(), shard.targets());
    crate::layers::net::backprop(spec, network.params(), x.view(), y.view(), kernels, key)
}

/// [`net_gradient`] with the weight gradients of the fully connected layers
/// in `factored` (ascending; the layers a `Shard` listed in
/// `factor_layers`) left empty and their factors returned instead (see
/// [`crate::layers::net::Factor`]); with none, the whole gradient.
///
/// # Panics
/// If `network` is not a chapter-6 net or a layer in `factored` is a conv layer.
pub fn net_answer(
    network: &Network,
    shard: &Samples,
    kernels: KernelSet,
    key: DropoutKey,
    factored: &[usize],
) -> (Gradients, Vec<crate::layers::net::Factor>) {
    let spec = network.net.as_ref().expect("a chapter-6 net");
    let (x, y) = (shard.inputs(), shard.targets());
    let p = network.params();
    crate::layers::net::backprop_factored(spec, p, x.view(), y.view(), kernels, key, factored)
}

/// [`summed_gradient`] without the first weight matrix (left empty,
/// 0 × 0), and the first layer's error δ¹ (`sizes[1]` × samples, row-major)
/// from which [`complete_first_weights`] computes it: for a small shard, far
/// fewer values to send than the matrix (δ¹ has `samples` columns, the matrix 784).
pub fn gradient_and_first_error(
    network: &Network,
    shard: &Samples,
    cost: Cost,
    kernels: KernelSet,
) -> (Gradients, Vec<f32>) {
    WORKSPACE.with_borrow_mut(|ws| {
        ws.load_all(shard);
        ws.backprop_first_error(network, cost, kernels)
    })
}

/// A shard's answer as a worker computes it: [`summed_gradient`]'s
/// gradient whole, or, for [`AnswerForm::FirstError`] (the shard asked for
/// it), [`gradient_and_first_error`]'s gradient and error; for a chapter-6
/// net, [`net_gradient`] with the shard's dropout `key` (nets always
/// answer whole).
pub fn answer(
    network: &Network,
    shard: &Samples,
    cost: Cost,
    kernels: KernelSet,
    form: AnswerForm,
    key: DropoutKey,
) -> (Gradients, Option<Vec<f32>>) {
    if network.net.is_some() {
        return (net_gradient(network, shard, kernels, key), None);
    }
    match form {
        AnswerForm::FirstError => {
            let (g, error) = gradient_and_first_error(network, shard, cost, kernels);
            (g, Some(error))
        }
        AnswerForm::Whole => (summed_gradient(network, shard, cost, kernels), None),
    }
}

/// Completes the gradient `g` of `shard` from its first layer's error
/// `error`: writes the first weight matrix δ¹·xᵀ, the bits
/// [`summed_gradient`] gives it with the same kernel set, into `g`'s
/// first weight matrix (which must have its shape, as a decoded one has).
///
/// # Panics
/// If `error` is not `g`'s first layer size × the shard's samples.
pub fn complete_first_weights(
    g: &mut Gradients,
    shard: &Samples,
    error: &[f32],
    kernels: KernelSet,
) {
    let out = g.nabla_w[0].as_slice_mut().expect("standard layout");
    assert_eq!(
        error.len(),
        shard.len() * (out.len() / crate::dataset::IMAGE_SIZE)
    );
    WORKSPACE.with_borrow_mut(|ws| {
        ws.load_all(shard);
        ws.first_weight_gradient(error, kernels, out);
    })
}
