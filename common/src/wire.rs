//! The one place where wire messages (`pb::*`) meet the math types
//! (`Network`, `Gradients`, `Samples`). Everything that comes off the wire is
//! validated here (lengths, shapes, finiteness, label ranges, protocol
//! version) before anything else sees it; services and sessions just `?` a
//! [`WireError`].
//!
//! Tensors are "packed parameters" (see `proto/trainer.proto`): for each layer
//! `w_l` row-major then `b_l`, little-endian f32. A result may leave weight
//! matrices out and send what they are computed from instead, where the
//! coordinator asked: an MLP's first layer's error (`first_error`), or a
//! net's fully connected layers' errors and inputs (`factors`);
//! [`ShardGradients::complete`] multiplies them out with the run's kernels.

use bytes::{Bytes, BytesMut};
use ndarray::{Array1, Array2};

use crate::cost::Cost;
use crate::dataset::{Samples, CLASSES, IMAGE_SIZE};
use crate::gradients::Gradients;
use crate::kernels::KernelSet;
use crate::layers::net::{fc_weight_gradient, Factor};
use crate::layers::{Layer, NetSpec, Shape};
use crate::network::{checked_parameter_count, parameter_count, Network};
use crate::pb;
use crate::schedule::ShardId;
use crate::shard::AnswerForm;

/// The protocol version this build speaks (`package ddp.v1`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest gRPC message either side sends, and the largest a worker
/// accepts (64 MiB): well above a `[784,100,10]` step at batch 1,000 (1.1 MB).
/// The coordinator accepts much less: [`max_worker_message_bytes`].
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The largest `WorkerMessage` an honest worker sends for a model of
/// `sizes` (or of any model of as many parameters: [`max_result_bytes`]):
/// a `ShardResult` carrying one packed gradient, plus room for its
/// fixed fields (each at most 11 bytes) and the framing. A Hello is smaller.
pub fn max_worker_message_bytes(sizes: &[usize]) -> usize {
    max_result_bytes(parameter_count(sizes))
}

/// The largest message a worker sends for a model of `parameters` parameters.
pub fn max_result_bytes(parameters: usize) -> usize {
    parameters * 4 + 128
}

/// Longest worker name accepted in a `Hello`, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Largest model accepted from the wire, in parameters (64 MiB of f32).
pub const MAX_PARAMETERS: usize = 16 << 20;

/// What is wrong with a message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// A `Welcome` names a cost this build does not know.
    #[error(
        "unknown cost {value} in Welcome; this build knows quadratic (0) and cross-entropy (1)"
    )]
    UnknownCost {
        /// The enum value received.
        value: i32,
    },
    /// A `Welcome` names a kernel set this build does not know.
    #[error("unknown kernel set {value} in Welcome; this build knows portable (1) and avx2 (2)")]
    UnknownKernels {
        /// The enum value received.
        value: i32,
    },
    /// A worker cannot compute with the run's kernel set.
    #[error("this run computes with kernel set {run}, which this worker does not offer (it offers: {offered}); start it with --kernels auto on a CPU that has the set's features")]
    Kernels {
        /// The run's set.
        run: KernelSet,
        /// The sets the worker offered, by name.
        offered: String,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: peer speaks v{theirs}, this build speaks v{ours}")]
    ProtocolVersion {
        /// Ours.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// A worker name that could forge log lines or flood them.
    #[error("worker name refused: {why} (at most {MAX_NAME_BYTES} bytes of printable text)")]
    Name {
        /// What is wrong, without echoing the name.
        why: String,
    },
    /// A packed tensor has the wrong number of bytes.
    #[error("{tensor}: {got} bytes, expected {expected} ({} f32 values for sizes {sizes:?})", expected / 4)]
    Length {
        /// Which tensor ("weights", "gradients").
        tensor: &'static str,
        /// Layer sizes it should fit.
        sizes: Vec<usize>,
        /// Bytes expected.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A value is NaN or infinite.
    #[error("{tensor}: value {index} is {value}, not finite")]
    NonFinite {
        /// Which tensor.
        tensor: &'static str,
        /// Index within the packed parameters.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Layer sizes that cannot describe a network.
    #[error("invalid layer sizes {sizes:?}: need two or more positive sizes and at most {MAX_PARAMETERS} parameters")]
    Sizes {
        /// The sizes received.
        sizes: Vec<u32>,
    },
    /// A result carries factors its shard did not ask for.
    #[error(
        "step {step} shard {shard}: result carries factors the shard did not list (factor_layers)"
    )]
    FactorsNotAsked {
        /// Its step.
        step: u64,
        /// Its shard.
        shard: u32,
    },
    /// A `Shard` lists factor layers that do not fit the run's net.
    #[error("shard {shard}: factor_layers refused: {why}")]
    FactorLayers {
        /// The shard.
        shard: u32,
        /// What is wrong.
        why: String,
    },
    /// `Welcome.net` names a net this worker cannot build.
    #[error("cannot build the run's net: {0}")]
    Net(String),
    /// Model sizes differ from the ones this side expects.
    #[error("model sizes differ: peer has {theirs:?}, this side {ours:?}")]
    SizesMismatch {
        /// Ours.
        ours: Vec<usize>,
        /// Theirs.
        theirs: Vec<usize>,
    },
    /// A shard with no samples.
    #[error("shard {shard}: no samples")]
    EmptyShard {
        /// The shard.
        shard: u32,
    },
    /// A shard's pixel bytes do not match its label count.
    #[error("shard {shard}: {got} pixel bytes for {labels} labels, expected {expected}")]
    ShardPixels {
        /// The shard.
        shard: u32,
        /// Labels in the shard.
        labels: usize,
        /// Pixel bytes expected.
        expected: usize,
        /// Pixel bytes received.
        got: usize,
    },
    /// A label outside `0..CLASSES`.
    #[error("shard {shard}: label {label} at index {index} is not a digit 0..=9")]
    Label {
        /// The shard.
        shard: u32,
        /// Index in the shard.
        index: usize,
        /// The label.
        label: u8,
    },
    /// A result's sample count differs from the shard's size.
    #[error("step {step} shard {shard}: result covers {got} samples, the shard has {expected}")]
    SampleCount {
        /// The step.
        step: u64,
        /// The shard.
        shard: u32,
        /// Samples in the shard.
        expected: usize,
        /// Samples claimed.
        got: u32,
    },
    /// A `ShardResult` carries the first layer's error, which its `Shard` did not ask for.
    #[error("step {step} shard {shard}: the first layer's error came, but whole gradients were asked for")]
    FirstErrorNotAsked {
        /// The step.
        step: u64,
        /// The shard.
        shard: u32,
    },
    /// A message of the wrong kind for this point of the protocol, or empty.
    #[error("unexpected message: expected {expected}, got {got}")]
    Unexpected {
        /// What the protocol expects here.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
}

/// Which tensors a packed message holds: all, or all but the first weight
/// matrix (a `ShardResult` that carries the first layer's error instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tensors<'a> {
    All,
    AllButFirstWeights,
    /// All but the weight matrices of these layers (a net's factored layers).
    AllBut(&'a [usize]),
}

impl Tensors<'_> {
    /// Whether layer `l`'s weight matrix is packed.
    fn has_weights(self, l: usize) -> bool {
        match self {
            Tensors::All => true,
            Tensors::AllButFirstWeights => l > 0,
            Tensors::AllBut(layers) => !layers.contains(&l),
        }
    }
}

fn pack(weights: &[Array2<f32>], biases: &[Array1<f32>], tensors: Tensors) -> Bytes {
    let count: usize = (0..weights.len())
        .map(|l| biases[l].len() + usize::from(tensors.has_weights(l)) * weights[l].len())
        .sum();
    let mut out = BytesMut::with_capacity(count * 4);
    for (l, (w, b)) in weights.iter().zip(biases).enumerate() {
        // Row-major order. `as_standard_layout` borrows when the array already
        // is (the usual case) and copies otherwise.
        let w = w.as_standard_layout();
        let b = b.as_standard_layout();
        if tensors.has_weights(l) {
            put_f32s(
                &mut out,
                w.as_slice().expect("standard layout is contiguous"),
            );
        }
        put_f32s(
            &mut out,
            b.as_slice().expect("standard layout is contiguous"),
        );
    }
    out.freeze()
}

/// Appends `values` to `out` as little-endian f32: on a little-endian CPU
/// their own bytes, in one copy.
fn put_f32s(out: &mut BytesMut, values: &[f32]) {
    #[cfg(target_endian = "little")]
    out.extend_from_slice(bytemuck::cast_slice(values));
    #[cfg(not(target_endian = "little"))]
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Copies packed little-endian f32 from `src` into `dst` (same length in
/// values): on a little-endian CPU, one copy of the bytes.
fn read_f32s(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_endian = "little")]
    bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(src);
    #[cfg(not(target_endian = "little"))]
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes(c.try_into().expect("chunks of 4"));
    }
}

fn unpack(
    sizes: &[usize],
    tensor: &'static str,
    bytes: &[u8],
    weights: &mut [Array2<f32>],
    biases: &mut [Array1<f32>],
    tensors: Tensors,
) -> Result<(), WireError> {
    let values: usize = (0..weights.len())
        .map(|l| biases[l].len() + usize::from(tensors.has_weights(l)) * weights[l].len())
        .sum();
    let expected = values * 4;
    if bytes.len() != expected {
        return Err(WireError::Length {
            tensor,
            sizes: sizes.to_vec(),
            expected,
            got: bytes.len(),
        });
    }
    let mut offset = 0; // in values
    for (l, (w, b)) in weights.iter_mut().zip(biases.iter_mut()).enumerate() {
        // Arrays made by Network::zeros / Gradients::zeros are in standard layout.
        let contiguous = "parameter arrays are contiguous";
        let w = tensors
            .has_weights(l)
            .then(|| w.as_slice_mut().expect(contiguous));
        let b = Some(b.as_slice_mut().expect(contiguous));
        for slot in [w, b].into_iter().flatten() {
            read_f32s(&bytes[offset * 4..(offset + slot.len()) * 4], slot);
            check_finite(tensor, offset, slot)?;
            offset += slot.len();
        }
    }
    Ok(())
}

/// [`WireError::NonFinite`] for the first NaN or infinity in `values`, which
/// start at value `offset` of `tensor`.
fn check_finite(tensor: &'static str, offset: usize, values: &[f32]) -> Result<(), WireError> {
    // The index is looked up only on failure.
    if all_finite(values) {
        return Ok(());
    }
    let i = values
        .iter()
        .position(|v| !v.is_finite())
        .expect("a non-finite value exists");
    Err(WireError::NonFinite {
        tensor,
        index: offset + i,
        value: values[i],
    })
}

/// Whether every value is finite: one branch-free (vectorised) pass, 8
/// lanes at a time where the CPU has AVX2 (the same code, compiled for it;
/// the portable build's 4 lanes took ~3% of a worker's CPU at batch 10).
fn all_finite(values: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        return unsafe { all_finite_avx2(values) };
    }
    all_finite_portable(values)
}

#[inline(always)]
fn all_finite_portable(values: &[f32]) -> bool {
    values.iter().fold(true, |ok, v| ok & v.is_finite())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn all_finite_avx2(values: &[f32]) -> bool {
    all_finite_portable(values)
}

/// Packs a network's weights and biases for a `Step`.
pub fn encode_network(network: &Network) -> Bytes {
    pack(&network.weights, &network.biases, Tensors::All)
}

/// Unpacks `Step.weights` into `network` (whose sizes fix the layout), reusing its buffers.
///
/// # Errors
/// [`WireError::Length`] or [`WireError::NonFinite`]; `network` may then be partly overwritten.
pub fn decode_network_into(bytes: &[u8], network: &mut Network) -> Result<(), WireError> {
    let sizes = network.sizes.clone();
    unpack(
        &sizes,
        "weights",
        bytes,
        &mut network.weights,
        &mut network.biases,
        Tensors::All,
    )
}

/// Packs gradients for a `ShardResult`.
pub fn encode_gradients(g: &Gradients) -> Bytes {
    pack(&g.nabla_w, &g.nabla_b, Tensors::All)
}

/// Unpacks `ShardResult.gradients` for a network of `sizes`.
///
/// # Errors
/// [`WireError::Length`] or [`WireError::NonFinite`].
pub fn decode_gradients(sizes: &[usize], bytes: &[u8]) -> Result<Gradients, WireError> {
    let mut g = Gradients::zeros(sizes);
    unpack(
        sizes,
        "gradients",
        bytes,
        &mut g.nabla_w,
        &mut g.nabla_b,
        Tensors::All,
    )?;
    Ok(g)
}

/// [`WireError::SampleCount`] unless `result` counts `expected` samples.
fn check_sample_count(result: &pb::ShardResult, expected: usize) -> Result<(), WireError> {
    if result.sample_count as usize == expected {
        return Ok(());
    }
    Err(WireError::SampleCount {
        step: result.step_id,
        shard: result.shard_id,
        expected,
        got: result.sample_count,
    })
}

/// Unpacks the gradients of a chapter-6 net's `ShardResult` for a shard of
/// `expected_samples` samples, validated: whole, or, where its `Shard`
/// listed `factored` layers, every tensor but those layers' weight
/// matrices plus their factors (see `ShardResult.factors`), which
/// [`ShardGradients::complete`] multiplies out. Nets never send a first error.
///
/// # Errors
/// [`WireError::SampleCount`], [`WireError::Length`], [`WireError::NonFinite`],
/// [`WireError::FirstErrorNotAsked`] or [`WireError::FactorsNotAsked`].
pub fn decode_net_result(
    result: &pb::ShardResult,
    net: &Network,
    expected_samples: usize,
    factored: &[usize],
) -> Result<ShardGradients, WireError> {
    check_sample_count(result, expected_samples)?;
    let (step, shard) = (result.step_id, result.shard_id);
    if !result.first_error.is_empty() {
        return Err(WireError::FirstErrorNotAsked { step, shard });
    }
    let sent = if result.factors.is_empty() {
        &[][..]
    } else if factored.is_empty() {
        return Err(WireError::FactorsNotAsked { step, shard });
    } else {
        factored
    };
    let mut g = Gradients::zeros_like(net);
    let (w, b) = (&mut g.nabla_w, &mut g.nabla_b);
    unpack(
        &net.sizes,
        "gradients",
        &result.gradients,
        w,
        b,
        Tensors::AllBut(sent),
    )?;
    let shapes: Vec<(usize, usize)> = sent.iter().map(|&l| net.weights[l].dim()).collect();
    let expected = 4 * expected_samples * shapes.iter().map(|(o, i)| o + i).sum::<usize>();
    if result.factors.len() != expected {
        return Err(WireError::Length {
            tensor: "factors",
            sizes: net.sizes.clone(),
            expected,
            got: result.factors.len(),
        });
    }
    let mut values = vec![0.0f32; expected / 4];
    read_f32s(&result.factors, &mut values);
    check_finite("factors", 0, &values)?;
    let mut rest = &values[..];
    let mut take = |rows: usize| {
        let (head, tail) = rest.split_at(rows * expected_samples);
        rest = tail;
        Array2::from_shape_vec((rows, expected_samples), head.to_vec()).expect("rows × samples")
    };
    let factors = (sent.iter().zip(&shapes))
        .map(|(&layer, &(out, inputs))| Factor {
            layer,
            delta: take(out),
            input: take(inputs),
        })
        .collect();
    for &l in sent {
        g.nabla_w[l] = Array2::zeros((0, 0)); // filled by `complete`
    }
    Ok(ShardGradients {
        gradients: g,
        first_error: None,
        factors,
    })
}

/// The layers a `Shard` lists in `factor_layers`, checked against `net`:
/// fully connected layers of it, ascending.
///
/// # Errors
/// [`WireError::FactorLayers`].
pub fn shard_factor_layers(
    shard: &pb::Shard,
    net: Option<&NetSpec>,
) -> Result<Vec<usize>, WireError> {
    if shard.factor_layers.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: &str| WireError::FactorLayers {
        shard: shard.shard_id,
        why: why.to_string(),
    };
    let net = net.ok_or_else(|| bad("the run trains no chapter-6 net"))?;
    if shard.factor_layers.len() > net.layers.len() {
        return Err(bad("more layers listed than the net has"));
    }
    let layers: Vec<usize> = shard.factor_layers.iter().map(|&l| l as usize).collect();
    if layers.windows(2).any(|p| p[0] >= p[1]) {
        return Err(bad("layers must be listed once each, ascending"));
    }
    match layers
        .iter()
        .find(|&&l| l >= net.layers.len() || matches!(net.layers[l], Layer::ConvPool { .. }))
    {
        Some(l) => Err(bad(&format!(
            "layer {l} is not a fully connected layer of the net"
        ))),
        None => Ok(layers),
    }
}

/// The chapter-6 net a `Welcome` names (`Welcome.net`), if any, built for
/// MNIST's 1×28×28 images and 10 classes.
///
/// # Errors
/// [`WireError::Net`] naming the layer that cannot be built.
pub fn welcome_net(welcome: &pb::Welcome) -> Result<Option<NetSpec>, WireError> {
    if welcome.net.is_empty() {
        return Ok(None);
    }
    let spec = NetSpec::parse(&welcome.net, Shape::MNIST).map_err(|e| WireError::Net(e.0))?;
    if spec.classes() != CLASSES || welcome.sizes != [IMAGE_SIZE as u32, CLASSES as u32] {
        return Err(WireError::Net(format!(
            "{} with sizes {:?} does not classify MNIST's {CLASSES} digits",
            welcome.net, welcome.sizes
        )));
    }
    Ok(Some(spec))
}

/// Checks a worker's `Hello`: its protocol version, and a name that is safe
/// to write into a log (no control characters: no forged lines, no escape
/// codes for a reader's terminal; bounded length).
///
/// # Errors
/// [`WireError::ProtocolVersion`] if the worker speaks another version,
/// [`WireError::Name`] for a name with control characters or too long.
pub fn check_hello(hello: &pb::Hello) -> Result<(), WireError> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(WireError::ProtocolVersion {
            ours: PROTOCOL_VERSION,
            theirs: hello.protocol_version,
        });
    }
    if hello.name.len() > MAX_NAME_BYTES {
        return Err(WireError::Name {
            why: format!("{} bytes long", hello.name.len()),
        });
    }
    if let Some((at, c)) = hello.name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(WireError::Name {
            why: format!("control character U+{:04X} at byte {at}", u32::from(c)),
        });
    }
    Ok(())
}

/// The cost a `Welcome` announces (absent: quadratic, as before the field existed).
///
/// # Errors
/// [`WireError::UnknownCost`] for a value this build does not know.
pub fn welcome_cost(welcome: &pb::Welcome) -> Result<Cost, WireError> {
    match pb::Cost::try_from(welcome.cost) {
        Ok(pb::Cost::Quadratic) => Ok(Cost::Quadratic),
        Ok(pb::Cost::CrossEntropy) => Ok(Cost::CrossEntropy),
        Err(_) => Err(WireError::UnknownCost {
            value: welcome.cost,
        }),
    }
}

impl From<Cost> for pb::Cost {
    fn from(cost: Cost) -> Self {
        match cost {
            Cost::Quadratic => pb::Cost::Quadratic,
            Cost::CrossEntropy => pb::Cost::CrossEntropy,
        }
    }
}

/// The kernel sets a worker offers in its `Hello`.
pub fn hello_kernels(offered: &[KernelSet]) -> Vec<i32> {
    offered
        .iter()
        .map(|&k| pb::Kernels::from(k).into())
        .collect()
}

/// Checks that a worker's `Hello` offers the run's kernel set `run` (an
/// empty list states nothing and is accepted).
///
/// # Errors
/// [`WireError::Kernels`] naming the run's set and the ones offered.
pub fn check_kernels(hello: &pb::Hello, run: KernelSet) -> Result<(), WireError> {
    if hello.kernels.is_empty() || hello.kernels.iter().any(|&k| kernel_set(k) == Some(run)) {
        return Ok(());
    }
    // Each known set named once, however long the list a peer sent.
    let offered: Vec<&str> = KernelSet::ALL
        .into_iter()
        .filter(|&set| hello.kernels.iter().any(|&k| kernel_set(k) == Some(set)))
        .map(KernelSet::name)
        .collect();
    Err(WireError::Kernels {
        run,
        offered: if offered.is_empty() {
            "none this build knows".to_string()
        } else {
            offered.join(", ")
        },
    })
}

/// The kernel set a `Welcome` names (`None`: not stated, as before the field existed).
///
/// # Errors
/// [`WireError::UnknownKernels`] for a value this build does not know.
pub fn welcome_kernels(welcome: &pb::Welcome) -> Result<Option<KernelSet>, WireError> {
    if welcome.kernels == i32::from(pb::Kernels::Unspecified) {
        return Ok(None);
    }
    kernel_set(welcome.kernels)
        .map(Some)
        .ok_or(WireError::UnknownKernels {
            value: welcome.kernels,
        })
}

fn kernel_set(value: i32) -> Option<KernelSet> {
    match pb::Kernels::try_from(value).ok()? {
        pb::Kernels::Unspecified => None,
        pb::Kernels::Portable => Some(KernelSet::Portable),
        pb::Kernels::Avx2 => Some(KernelSet::Avx2),
    }
}

impl From<KernelSet> for pb::Kernels {
    fn from(set: KernelSet) -> Self {
        match set {
            KernelSet::Portable => pb::Kernels::Portable,
            KernelSet::Avx2 => pb::Kernels::Avx2,
        }
    }
}

/// The model sizes of a `Welcome`, validated.
///
/// # Errors
/// [`WireError::ProtocolVersion`] or [`WireError::Sizes`].
pub fn decode_welcome(welcome: &pb::Welcome) -> Result<Vec<usize>, WireError> {
    if welcome.protocol_version != PROTOCOL_VERSION {
        return Err(WireError::ProtocolVersion {
            ours: PROTOCOL_VERSION,
            theirs: welcome.protocol_version,
        });
    }
    let sizes: Vec<usize> = welcome.sizes.iter().map(|&s| s as usize).collect();
    if checked_parameter_count(&sizes, MAX_PARAMETERS).is_none() {
        return Err(WireError::Sizes {
            sizes: welcome.sizes.clone(),
        });
    }
    if sizes[0] != IMAGE_SIZE || sizes[sizes.len() - 1] != CLASSES {
        return Err(WireError::SizesMismatch {
            ours: vec![IMAGE_SIZE, 0, CLASSES],
            theirs: sizes,
        });
    }
    Ok(sizes)
}

/// A shard's samples as a `pb::Shard`.
pub fn encode_shard(id: ShardId, samples: &Samples) -> pb::Shard {
    pb::Shard {
        shard_id: id.0,
        pixels: Bytes::copy_from_slice(&samples.pixels),
        labels: Bytes::copy_from_slice(&samples.labels),
        ask_first_error: false,
        position: 0,
        factor_layers: Vec::new(),
    }
}

/// A `pb::Step` as a worker reads it: its weights into `network` (see
/// [`decode_network_into`]) and each shard's samples (see [`decode_shard`]).
///
/// # Errors
/// The first error of either.
pub fn decode_step(
    step: &pb::Step,
    network: &mut Network,
) -> Result<Vec<(ShardId, Samples)>, WireError> {
    decode_network_into(&step.weights, network)?;
    step.shards.iter().map(decode_shard).collect()
}

/// A `pb::Shard`'s samples, validated.
///
/// # Errors
/// [`WireError::EmptyShard`], [`WireError::ShardPixels`] or [`WireError::Label`].
pub fn decode_shard(shard: &pb::Shard) -> Result<(ShardId, Samples), WireError> {
    let n = shard.labels.len();
    if n == 0 {
        return Err(WireError::EmptyShard {
            shard: shard.shard_id,
        });
    }
    let expected = n * IMAGE_SIZE;
    if shard.pixels.len() != expected {
        return Err(WireError::ShardPixels {
            shard: shard.shard_id,
            labels: n,
            expected,
            got: shard.pixels.len(),
        });
    }
    if let Some((index, &label)) = shard
        .labels
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= CLASSES)
    {
        return Err(WireError::Label {
            shard: shard.shard_id,
            index,
            label,
        });
    }
    Ok((
        ShardId(shard.shard_id),
        Samples {
            pixels: shard.pixels.to_vec(),
            labels: shard.labels.to_vec(),
        },
    ))
}

/// A `ShardResult` for shard `id` of step `step` over `samples` samples.
pub fn encode_shard_result(
    step: u64,
    id: ShardId,
    samples: usize,
    g: &Gradients,
) -> pb::ShardResult {
    pb::ShardResult {
        step_id: step,
        shard_id: id.0,
        sample_count: samples as u32,
        gradients: encode_gradients(g),
        compute_nanos: 0,
        codec_nanos: 0,
        first_error: Bytes::new(),
        factors: Bytes::new(),
    }
}

/// A chapter-6 net's `ShardResult` as [`crate::shard::net_answer`] gives
/// it: every tensor of `g` but the weight matrices of the `factors`' layers
/// (ignored: they may be empty), and those layers' factors.
pub fn encode_net_answer(
    step: u64,
    id: ShardId,
    samples: usize,
    g: &Gradients,
    factors: &[Factor],
) -> pb::ShardResult {
    let layers: Vec<usize> = factors.iter().map(|f| f.layer).collect();
    let values: usize = factors.iter().map(|f| f.delta.len() + f.input.len()).sum();
    let mut bytes = BytesMut::with_capacity(values * 4);
    for f in factors {
        for m in [&f.delta, &f.input] {
            let m = m.as_standard_layout();
            put_f32s(
                &mut bytes,
                m.as_slice().expect("standard layout is contiguous"),
            );
        }
    }
    pb::ShardResult {
        step_id: step,
        shard_id: id.0,
        sample_count: samples as u32,
        gradients: pack(&g.nabla_w, &g.nabla_b, Tensors::AllBut(&layers)),
        factors: bytes.freeze(),
        ..Default::default()
    }
}

/// A `ShardResult` as [`crate::shard::answer`] gives it: with no
/// `first_error`, [`encode_shard_result`]; with one (`sizes[1]` × `samples`,
/// row-major), that error and every tensor of `g` but the first weight
/// matrix (ignored: it may be empty), which the coordinator computes from the
/// error (see `Shard.ask_first_error` in the proto).
pub fn encode_shard_answer(
    step: u64,
    id: ShardId,
    samples: usize,
    g: &Gradients,
    first_error: Option<&[f32]>,
) -> pb::ShardResult {
    let Some(first_error) = first_error else {
        return encode_shard_result(step, id, samples, g);
    };
    let mut error = BytesMut::with_capacity(first_error.len() * 4);
    put_f32s(&mut error, first_error);
    pb::ShardResult {
        step_id: step,
        shard_id: id.0,
        sample_count: samples as u32,
        gradients: pack(&g.nabla_w, &g.nabla_b, Tensors::AllButFirstWeights),
        compute_nanos: 0,
        codec_nanos: 0,
        first_error: error.freeze(),
        factors: Bytes::new(),
    }
}

/// A decoded `ShardResult`: the summed gradients, whole, or all but the
/// first weight matrix (left zero) with the first layer's error to compute
/// it from.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardGradients {
    /// The gradients (the first weight matrix zero if `first_error` is set).
    pub gradients: Gradients,
    /// The first layer's error δ¹, `sizes[1]` × samples, row-major.
    pub first_error: Option<Vec<f32>>,
    /// A net's factored layers (their weight matrices left empty).
    pub factors: Vec<Factor>,
}

impl ShardGradients {
    /// The whole gradients of `shard`, whose result this is: with a first
    /// layer's error, the first weight matrix computed from it with the run's
    /// `kernels` (the bits the worker would have sent).
    ///
    /// `shard` must be the shard the result answers (one of another length
    /// panics; one of the same length gives other bits).
    ///
    /// # Errors
    /// [`WireError::NonFinite`] for the tensor "first weights, from the error"
    /// if that matrix overflows (a peer's error can be finite and still too large).
    pub fn complete(self, shard: &Samples, kernels: KernelSet) -> Result<Gradients, WireError> {
        let mut g = self.gradients;
        for f in &self.factors {
            g.nabla_w[f.layer] = fc_weight_gradient(kernels, &f.delta, &f.input);
            let w = g.nabla_w[f.layer].as_slice().expect("standard layout");
            check_finite("weights, from the factors", 0, w)?;
        }
        let Some(error) = self.first_error else {
            return Ok(g);
        };
        crate::shard::complete_first_weights(&mut g, shard, &error, kernels);
        let w = g.nabla_w[0].as_slice().expect("standard layout");
        check_finite("first weights, from the error", 0, w)?;
        Ok(g)
    }
}

impl From<Gradients> for ShardGradients {
    /// Whole gradients, with no first error to complete.
    fn from(gradients: Gradients) -> Self {
        ShardGradients {
            gradients,
            first_error: None,
            factors: Vec::new(),
        }
    }
}

/// The gradients of a `ShardResult` for a shard of `expected_samples` samples, validated.
/// The caller has already matched its step and shard ids to an open shard;
/// `asked` is the form its `Shard` asked for (whole, or with the first layer's error).
///
/// # Errors
/// [`WireError::SampleCount`], [`WireError::Length`], [`WireError::NonFinite`],
/// or [`WireError::FirstErrorNotAsked`].
pub fn decode_shard_result(
    result: &pb::ShardResult,
    sizes: &[usize],
    expected_samples: usize,
    asked: AnswerForm,
) -> Result<ShardGradients, WireError> {
    check_sample_count(result, expected_samples)?;
    if !result.factors.is_empty() {
        // Only a net's shards list factor layers.
        return Err(WireError::FactorsNotAsked {
            step: result.step_id,
            shard: result.shard_id,
        });
    }
    if result.first_error.is_empty() {
        return Ok(ShardGradients {
            gradients: decode_gradients(sizes, &result.gradients)?,
            first_error: None,
            factors: Vec::new(),
        });
    }
    if asked == AnswerForm::Whole {
        return Err(WireError::FirstErrorNotAsked {
            step: result.step_id,
            shard: result.shard_id,
        });
    }
    let mut gradients = Gradients::zeros(sizes);
    let (w, b) = (&mut gradients.nabla_w, &mut gradients.nabla_b);
    let bytes = &result.gradients;
    unpack(sizes, "gradients", bytes, w, b, Tensors::AllButFirstWeights)?;
    let mut error = vec![0.0; sizes[1] * expected_samples];
    if result.first_error.len() != error.len() * 4 {
        return Err(WireError::Length {
            tensor: "first_error",
            sizes: sizes.to_vec(),
            expected: error.len() * 4,
            got: result.first_error.len(),
        });
    }
    read_f32s(&result.first_error, &mut error);
    check_finite("first_error", 0, &error)?;
    Ok(ShardGradients {
        gradients,
        first_error: Some(error),
        factors: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    const KEY: crate::layers::DropoutKey = crate::layers::DropoutKey {
        seed: 0,
        epoch: 0,
        first: 0,
    };
    use crate::schedule::init_rng;

    fn net() -> Network {
        Network::new(&[784, 5, 10], &mut init_rng(3))
    }

    #[test]
    fn network_round_trip_is_bitwise() {
        let a = net();
        let mut b = Network::zeros(&a.sizes);
        decode_network_into(&encode_network(&a), &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(encode_network(&a).len(), a.parameter_count() * 4);
    }

    /// The wire layout the proto documents, spelled out independently of
    /// `pack`: every weight row-major, then the biases, layer by layer, each
    /// value 4 little-endian bytes.
    #[test]
    fn tensors_are_row_major_little_endian_f32() {
        let a = net();
        let mut want = Vec::new();
        for (w, b) in a.weights.iter().zip(&a.biases) {
            for v in w.iter().chain(b.iter()) {
                want.extend_from_slice(&v.to_le_bytes());
            }
        }
        assert!(encode_network(&a)[..] == want[..]);
    }

    #[test]
    fn mnist_sized_payload_is_95440_bytes() {
        assert_eq!(parameter_count(&[784, 30, 10]) * 4, 95_440);
    }

    #[test]
    fn short_gradients_rejected() {
        let g = Gradients::zeros(&[784, 5, 10]);
        let bytes = encode_gradients(&g);
        let err = decode_gradients(&[784, 5, 10], &bytes[..bytes.len() - 4]).unwrap_err();
        assert!(
            matches!(err, WireError::Length { expected, got, .. } if got + 4 == expected),
            "{err:?}"
        );
    }

    #[test]
    fn nan_and_infinity_rejected_with_index() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut bytes = encode_gradients(&Gradients::zeros(&[784, 5, 10])).to_vec();
            bytes[40..44].copy_from_slice(&bad.to_le_bytes());
            let err = decode_gradients(&[784, 5, 10], &bytes).unwrap_err();
            assert!(
                matches!(err, WireError::NonFinite { index: 10, .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn shard_validation() {
        let samples = Samples {
            pixels: vec![7; 2 * IMAGE_SIZE],
            labels: vec![1, 9],
        };
        let (id, back) = decode_shard(&encode_shard(ShardId(3), &samples)).unwrap();
        assert_eq!((id, back), (ShardId(3), samples));
        let mut bad = pb::Shard {
            shard_id: 1,
            pixels: vec![0; IMAGE_SIZE].into(),
            labels: vec![1, 2].into(),
            ask_first_error: false,
            position: 0,
            factor_layers: Vec::new(),
        };
        assert!(matches!(
            decode_shard(&bad),
            Err(WireError::ShardPixels {
                expected: 1568,
                got: 784,
                ..
            })
        ));
        bad.pixels = vec![0; 2 * IMAGE_SIZE].into();
        bad.labels = vec![1, 12].into();
        assert!(matches!(
            decode_shard(&bad),
            Err(WireError::Label {
                index: 1,
                label: 12,
                ..
            })
        ));
        bad.labels = Bytes::new();
        assert!(matches!(
            decode_shard(&bad),
            Err(WireError::EmptyShard { shard: 1 })
        ));
    }

    /// Random pixels and labels for `n` samples.
    fn random_shard(n: usize, seed: u64) -> Samples {
        Samples::random_seeded(n, seed)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 40, failure_persistence: None, ..Default::default() })]

        /// A result sent with the first layer's error, decoded and completed
        /// by the coordinator, is the whole result bit for bit, for any
        /// hidden layers, shard size, cost and kernel set this CPU runs; and
        /// it is far smaller on the wire.
        #[test]
        fn first_error_results_complete_to_the_whole_gradients_bitwise(
            hidden in proptest::collection::vec(1usize..48, 1..3),
            n in 1usize..40,
            seed in 0u64..1000,
            cross_entropy in proptest::bool::ANY,
        ) {
            let sizes: Vec<usize> = [vec![IMAGE_SIZE], hidden, vec![CLASSES]].concat();
            let net = Network::new(&sizes, &mut init_rng(seed));
            let shard = random_shard(n, seed + 1);
            let cost = if cross_entropy { Cost::CrossEntropy } else { Cost::Quadratic };
            for kernels in KernelSet::supported() {
                let whole = crate::shard::summed_gradient(&net, &shard, cost, kernels);
                let (g, error) = crate::shard::answer(&net, &shard, cost, kernels, crate::shard::AnswerForm::FirstError, KEY);
                let r = encode_shard_answer(2, ShardId(0), n, &g, error.as_deref());
                let dense = encode_shard_result(2, ShardId(0), n, &whole);
                proptest::prop_assert_eq!(
                    r.gradients.len() + r.first_error.len() + 4 * sizes[1] * (IMAGE_SIZE - n),
                    dense.gradients.len()
                );
                let decoded = decode_shard_result(&r, &sizes, n, AnswerForm::FirstError).unwrap();
                let completed = decoded.complete(&shard, kernels).unwrap();
                let bits = |g: &Gradients| encode_gradients(g);
                proptest::prop_assert!(bits(&completed) == bits(&whole), "{kernels:?}");
            }
        }
    }

    /// A first layer's error is accepted only where it was asked for, of the
    /// right length, finite, and with a finite product.
    #[test]
    fn first_errors_are_validated() {
        let sizes = [784, 5, 10];
        let (net, shard) = (net(), random_shard(3, 4));
        let k = KernelSet::Portable;
        let (g, error) = crate::shard::answer(
            &net,
            &shard,
            Cost::Quadratic,
            k,
            crate::shard::AnswerForm::FirstError,
            KEY,
        );
        let error = error.expect("asked for");
        let with = |e: &[f32]| encode_shard_answer(1, ShardId(2), 3, &g, Some(e));
        let r = with(&error);
        assert_eq!(
            decode_shard_result(&r, &sizes, 3, AnswerForm::Whole),
            Err(WireError::FirstErrorNotAsked { step: 1, shard: 2 })
        );
        let short = decode_shard_result(&with(&error[1..]), &sizes, 3, AnswerForm::FirstError);
        assert!(
            matches!(
                short,
                Err(WireError::Length {
                    tensor: "first_error",
                    expected: 60,
                    got: 56,
                    ..
                })
            ),
            "{short:?}"
        );
        let mut nan = error.clone();
        nan[7] = f32::NAN;
        let nan = decode_shard_result(&with(&nan), &sizes, 3, AnswerForm::FirstError);
        assert!(
            matches!(
                nan,
                Err(WireError::NonFinite {
                    tensor: "first_error",
                    index: 7,
                    ..
                })
            ),
            "{nan:?}"
        );
        let huge =
            decode_shard_result(&with(&[3e38; 15]), &sizes, 3, AnswerForm::FirstError).unwrap();
        let white = Samples {
            pixels: vec![255; 3 * IMAGE_SIZE],
            labels: vec![0; 3],
        };
        let overflow = huge.complete(&white, k);
        assert!(
            matches!(
                overflow,
                Err(WireError::NonFinite {
                    tensor: "first weights, from the error",
                    ..
                })
            ),
            "{overflow:?}"
        );
        let mut dense_and_error = with(&error);
        let whole = crate::shard::summed_gradient(&net, &shard, Cost::Quadratic, k);
        dense_and_error.gradients = encode_gradients(&whole);
        let both = decode_shard_result(&dense_and_error, &sizes, 3, AnswerForm::FirstError);
        assert!(
            matches!(
                both,
                Err(WireError::Length {
                    tensor: "gradients",
                    ..
                })
            ),
            "{both:?}"
        );
    }

    #[test]
    fn sample_count_must_match() {
        let g = Gradients::zeros(&[784, 5, 10]);
        let r = encode_shard_result(4, ShardId(1), 3, &g);
        assert!(decode_shard_result(&r, &[784, 5, 10], 3, AnswerForm::Whole).is_ok());
        let err = decode_shard_result(&r, &[784, 5, 10], 2, AnswerForm::Whole).unwrap_err();
        assert!(
            err.to_string()
                .contains("step 4 shard 1: result covers 3 samples, the shard has 2"),
            "{err}"
        );
    }

    #[test]
    fn version_and_sizes_checked_at_handshake() {
        let err = check_hello(&pb::Hello {
            name: "w".into(),
            protocol_version: 2,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol version mismatch: peer speaks v2, this build speaks v1"
        );
        let welcome = |sizes: Vec<u32>| pb::Welcome {
            worker_id: 0,
            sizes,
            run_id: String::new(),
            protocol_version: 1,
            ..Default::default()
        };
        assert_eq!(
            decode_welcome(&welcome(vec![784, 30, 10])).unwrap(),
            vec![784, 30, 10]
        );
        assert!(matches!(
            decode_welcome(&welcome(vec![784])),
            Err(WireError::Sizes { .. })
        ));
        assert!(matches!(
            decode_welcome(&welcome(vec![784, 0, 10])),
            Err(WireError::Sizes { .. })
        ));
        assert!(matches!(
            decode_welcome(&welcome(vec![784, 1 << 30, 10])),
            Err(WireError::Sizes { .. })
        ));
    }

    #[test]
    fn kernel_offers_are_checked_and_named_once() {
        let hello = |kernels: Vec<i32>| pb::Hello {
            protocol_version: 1,
            kernels,
            ..Default::default()
        };
        let (portable, avx2) = (pb::Kernels::Portable as i32, pb::Kernels::Avx2 as i32);
        assert!(check_kernels(&hello(vec![]), KernelSet::Avx2).is_ok());
        assert!(check_kernels(&hello(vec![99, avx2]), KernelSet::Avx2).is_ok());
        let err = check_kernels(&hello(vec![portable; 20_000]), KernelSet::Avx2).unwrap_err();
        assert_eq!(
            err,
            WireError::Kernels {
                run: KernelSet::Avx2,
                offered: "portable".into()
            }
        );
        let err = check_kernels(&hello(vec![7, 8]), KernelSet::Portable).unwrap_err();
        assert!(
            err.to_string().contains("it offers: none this build knows"),
            "{err}"
        );
    }

    #[test]
    fn welcome_cost_defaults_to_quadratic_and_rejects_unknown_values() {
        let welcome = |cost: i32| pb::Welcome {
            sizes: vec![784, 30, 10],
            protocol_version: 1,
            cost,
            ..Default::default()
        };
        assert_eq!(
            welcome_cost(&pb::Welcome::default()).unwrap(),
            Cost::Quadratic
        );
        assert_eq!(welcome_cost(&welcome(1)).unwrap(), Cost::CrossEntropy);
        assert_eq!(
            welcome_cost(&welcome(7)).unwrap_err(),
            WireError::UnknownCost { value: 7 }
        );
    }

    #[test]
    fn a_welcome_names_a_net_the_worker_builds_or_says_why_not() {
        let welcome = |net: &str| pb::Welcome {
            sizes: vec![784, 10],
            net: net.into(),
            ..Default::default()
        };
        let spec = welcome_net(&welcome("conv20x5:relu,pool2,fc100:relu,softmax10"))
            .unwrap()
            .unwrap();
        assert_eq!(
            spec.parameter_count(),
            20 * 25 + 20 + 100 * 2880 + 100 + 10 * 100 + 10
        );
        assert_eq!(welcome_net(&welcome("")).unwrap(), None);
        let err = welcome_net(&welcome("conv20x5,pool7,softmax10"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer 1 `conv20x5,pool7`: pool7 does not divide"),
            "{err}"
        );
        let err = welcome_net(&welcome("fc10,softmax3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not classify MNIST"), "{err}");
    }

    /// A small dropout conv net over MNIST, its network with random
    /// weights, and a shard of `n` samples.
    fn factored_case(n: usize) -> (Network, Samples) {
        let text = "conv2x5:relu,pool2,fc30:dropout=0.5,softmax10:dropout=0.25";
        let spec = welcome_net(&pb::Welcome {
            net: text.into(),
            sizes: vec![784, 10],
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let mut rng = init_rng(4);
        let mut net = Network::network3(&spec, &mut rng);
        for w in net.weights.iter_mut() {
            w.mapv_inplace(|_| rand::Rng::random_range(&mut rng, -0.3..0.3));
        }
        (net, Samples::random_seeded(n, 5))
    }

    /// Factors on the wire, multiplied out by the coordinator, give the
    /// worker's whole gradient bit for bit; whole answers are accepted too.
    #[test]
    fn a_nets_factored_answer_completes_to_the_whole_gradient() {
        for n in [1, 3, 7] {
            let (net, shard) = factored_case(n);
            let spec = net.net.clone().unwrap();
            let factored = crate::layers::net::factor_layers(&spec, n);
            assert_eq!(
                factored,
                vec![1, 2],
                "fc30 over 288 inputs and softmax10 over 30"
            );
            for k in [KernelSet::Portable, KernelSet::best()] {
                let whole = crate::shard::net_gradient(&net, &shard, k, KEY);
                let (g, factors) = crate::shard::net_answer(&net, &shard, k, KEY, &factored);
                let result = encode_net_answer(7, ShardId(1), n, &g, &factors);
                let full = encode_shard_result(7, ShardId(1), n, &whole);
                assert!(result.gradients.len() + result.factors.len() < full.gradients.len());
                let decoded = decode_net_result(&result, &net, n, &factored).unwrap();
                assert_eq!(
                    decoded.complete(&shard, k).unwrap(),
                    whole,
                    "n = {n}, {k:?}"
                );
                let decoded = decode_net_result(&full, &net, n, &factored).unwrap();
                assert_eq!(decoded.complete(&shard, k).unwrap(), whole);
            }
        }
    }

    /// Factors nobody asked for, of the wrong size, or not finite, are refused.
    #[test]
    fn a_nets_factors_unasked_misshapen_or_not_finite_are_refused() {
        let n = 3;
        let (net, shard) = factored_case(n);
        let factored = vec![1, 2];
        let (g, factors) =
            crate::shard::net_answer(&net, &shard, KernelSet::Portable, KEY, &factored);
        let result = encode_net_answer(7, ShardId(1), n, &g, &factors);
        assert!(matches!(
            decode_net_result(&result, &net, n, &[]),
            Err(WireError::FactorsNotAsked { step: 7, shard: 1 })
        ));
        // Only the softmax layer factored, where both were asked for: the
        // gradients hold a matrix too many and the factors too few.
        let (g2, f2) = crate::shard::net_answer(&net, &shard, KernelSet::Portable, KEY, &[2]);
        let partial = encode_net_answer(7, ShardId(1), n, &g2, &f2);
        assert!(matches!(
            decode_net_result(&partial, &net, n, &factored),
            Err(WireError::Length {
                tensor: "gradients",
                ..
            })
        ));
        let mut short = result.clone();
        short.factors = short.factors.slice(4..);
        assert!(matches!(
            decode_net_result(&short, &net, n, &factored),
            Err(WireError::Length {
                tensor: "factors",
                ..
            })
        ));
        let mut nan = result.to_owned();
        let mut bytes = nan.factors.to_vec();
        bytes[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
        nan.factors = bytes.into();
        assert!(matches!(
            decode_net_result(&nan, &net, n, &factored),
            Err(WireError::NonFinite {
                tensor: "factors",
                index: 2,
                ..
            })
        ));
        // Finite factors whose product overflows are caught after the product.
        let mut huge = result;
        let bytes: Vec<u8> = (0..huge.factors.len() / 4)
            .flat_map(|_| 3e30f32.to_le_bytes())
            .collect();
        huge.factors = bytes.into();
        let decoded = decode_net_result(&huge, &net, n, &factored).unwrap();
        assert!(matches!(
            decoded.complete(&shard, KernelSet::Portable),
            Err(WireError::NonFinite {
                tensor: "weights, from the factors",
                ..
            })
        ));
    }

    /// A dense network's shards never list factor layers: factors are refused.
    #[test]
    fn a_dense_networks_result_with_factors_is_refused() {
        let net = net();
        let shard = Samples::random_seeded(3, 1);
        let g = crate::shard::quadratic_gradient(&net, &shard);
        let mut result = encode_shard_result(2, ShardId(0), 3, &g);
        result.factors = vec![0u8; 8].into();
        for asked in [AnswerForm::Whole, AnswerForm::FirstError] {
            assert!(matches!(
                decode_shard_result(&result, &net.sizes, 3, asked),
                Err(WireError::FactorsNotAsked { step: 2, shard: 0 })
            ));
        }
    }

    /// A Shard may list only fully connected layers of the run's net, once each, ascending.
    #[test]
    fn a_shards_factor_layers_must_be_fully_connected_layers_of_the_net() {
        let (net, _) = factored_case(2);
        let spec = net.net.as_ref();
        let shard = |layers: &[u32]| pb::Shard {
            shard_id: 4,
            factor_layers: layers.to_vec(),
            ..Default::default()
        };
        assert_eq!(
            shard_factor_layers(&shard(&[1, 2]), spec).unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            shard_factor_layers(&shard(&[]), None).unwrap(),
            Vec::<usize>::new()
        );
        for (layers, why) in [
            (&[0][..], "layer 0 is not a fully connected layer"),
            (&[3][..], "layer 3 is not a fully connected layer"),
            (&[2, 1][..], "ascending"),
            (&[1, 1][..], "ascending"),
            (&[1, 2, 2, 2][..], "more layers listed than the net has"),
        ] {
            let err = shard_factor_layers(&shard(layers), spec)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(why) && err.contains("shard 4"),
                "{layers:?}: {err}"
            );
        }
        let err = shard_factor_layers(&shard(&[1]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no chapter-6 net"), "{err}");
    }
}
