//! `--net SPEC`: a network as a list of `network3.py`'s layers, parsed,
//! validated against the input's shape, and written back in one canonical
//! spelling (which is what travels in `Welcome`, records and model files).
//!
//! Grammar (comma-separated, no spaces):
//! - `conv<N>x<K>` then `pool<P>`: a ConvPoolLayer, N filters of K×K over
//!   every input channel (valid, stride 1), then P×P max-pooling;
//! - `fc<N>`: a FullyConnectedLayer of N neurons;
//! - `softmax<N>`: the SoftmaxLayer, last and only last;
//! - suffixes: `:sigmoid` (the default), `:relu`, `:tanh` on conv and fc
//!   layers, `:dropout=P` (0 ≤ P < 1) on fc and softmax layers.
//!
//! Example: `conv20x5:relu,pool2,conv40x5:relu,pool2,fc100:relu,softmax10`.

use std::fmt;

use crate::layers::activation::Activation;

/// An image's shape: channels × height × width (MNIST: 1 × 28 × 28). A
/// sample is stored channel after channel, each row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Channels (feature maps).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Shape {
    /// An MNIST (or Fashion-MNIST) image, 1×28×28: the input of every `--net`.
    pub const MNIST: Shape = Shape {
        channels: 1,
        height: 28,
        width: 28,
    };

    /// A flat vector of `n` values (the input of an fc or softmax layer).
    pub fn flat(n: usize) -> Shape {
        Shape {
            channels: n,
            height: 1,
            width: 1,
        }
    }

    /// Values per sample.
    pub fn len(self) -> usize {
        self.channels * self.height * self.width
    }

    /// True if the shape holds no value.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// One layer of a net.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layer {
    /// `network3.py`'s ConvPoolLayer: `activation(pool(conv(x)) + b)`.
    ConvPool {
        /// Filters (output channels), N.
        filters: usize,
        /// Filter side, K.
        kernel: usize,
        /// Pooling side, P.
        pool: usize,
        /// Applied after pooling and the bias.
        activation: Activation,
    },
    /// `network3.py`'s FullyConnectedLayer: `activation(w·(mask⊙x) + b)`.
    Fc {
        /// Neurons.
        neurons: usize,
        /// Its activation.
        activation: Activation,
        /// Probability that an input is dropped in training.
        dropout: f32,
    },
    /// `network3.py`'s SoftmaxLayer: `softmax(w·(mask⊙x) + b)`, with the
    /// log-likelihood cost `−ln a_y`.
    Softmax {
        /// Classes.
        classes: usize,
        /// Probability that an input is dropped in training.
        dropout: f32,
    },
}

impl Layer {
    /// The probability that this layer's inputs are dropped in training.
    pub fn dropout(&self) -> f32 {
        match *self {
            Layer::ConvPool { .. } => 0.0,
            Layer::Fc { dropout, .. } | Layer::Softmax { dropout, .. } => dropout,
        }
    }

    /// The output shape for `input`, assuming the layer was validated for it.
    pub fn output(&self, input: Shape) -> Shape {
        match *self {
            Layer::ConvPool {
                filters,
                kernel,
                pool,
                ..
            } => Shape {
                channels: filters,
                height: (input.height + 1 - kernel) / pool,
                width: (input.width + 1 - kernel) / pool,
            },
            Layer::Fc { neurons, .. } => Shape::flat(neurons),
            Layer::Softmax { classes, .. } => Shape::flat(classes),
        }
    }

    /// The weight matrix's shape `(out, in)` for `input`: a conv layer's
    /// filters are `(N, C·K·K)`, each row one filter as `(c, ky, kx)`.
    pub fn weight_shape(&self, input: Shape) -> (usize, usize) {
        match *self {
            Layer::ConvPool {
                filters, kernel, ..
            } => (filters, input.channels * kernel * kernel),
            Layer::Fc { neurons, .. } => (neurons, input.len()),
            Layer::Softmax { classes, .. } => (classes, input.len()),
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffixes = |f: &mut fmt::Formatter<'_>, act: Option<Activation>, p: f32| {
            if let Some(a) = act.filter(|&a| a != Activation::Sigmoid) {
                write!(f, ":{a}")?;
            }
            if p > 0.0 {
                write!(f, ":dropout={p}")?;
            }
            Ok(())
        };
        match *self {
            Layer::ConvPool {
                filters,
                kernel,
                pool,
                activation,
            } => {
                write!(f, "conv{filters}x{kernel}")?;
                suffixes(f, Some(activation), 0.0)?;
                write!(f, ",pool{pool}")
            }
            Layer::Fc {
                neurons,
                activation,
                dropout,
            } => {
                write!(f, "fc{neurons}")?;
                suffixes(f, Some(activation), dropout)
            }
            Layer::Softmax { classes, dropout } => {
                write!(f, "softmax{classes}")?;
                suffixes(f, None, dropout)
            }
        }
    }
}

/// A validated net: its input's shape and its layers, the last a softmax.
#[derive(Debug, Clone, PartialEq)]
pub struct NetSpec {
    /// The shape of one input sample.
    pub input: Shape,
    /// The layers, input first.
    pub layers: Vec<Layer>,
}

/// Why a `--net` cannot be built; every message names the layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--net: {0}")]
pub struct SpecError(pub String);

/// At most this many parameters in a net (as for `--sizes`: a 400 MB model).
pub const MAX_PARAMETERS: usize = 100_000_000;
/// At most this many layers in a net, and this many bytes in its text: a
/// `--net` from a file or a peer is refused before anything is built from
/// it (the book's deepest net has 5).
pub const MAX_LAYERS: usize = 64;
/// See [`MAX_LAYERS`].
pub const MAX_TEXT: usize = 4096;

/// At most this many values in one layer's output per sample (bounds the
/// memory of a shard's activations).
pub const MAX_FEATURES: usize = 4_000_000;

impl NetSpec {
    /// Parses `text` for inputs of shape `input` and validates it: every
    /// conv followed by its pool, a pool that divides the map, a softmax
    /// last, dropout in [0, 1), and a size within [`MAX_PARAMETERS`].
    ///
    /// # Errors
    /// A [`SpecError`] naming the layer (its position from 1 and its text).
    pub fn parse(text: &str, input: Shape) -> Result<NetSpec, SpecError> {
        if text.len() > MAX_TEXT || text.split(',').count() > 2 * MAX_LAYERS {
            return Err(SpecError(format!(
                "more than {MAX_LAYERS} layers or {MAX_TEXT} characters"
            )));
        }
        let tokens: Vec<&str> = text.split(',').collect();
        let mut layers = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let at = |msg: String| SpecError(format!("layer {} `{}`: {msg}", i + 1, tokens[i]));
            let (head, suffixes) = split_suffixes(tokens[i]);
            let (activation, dropout) = parse_suffixes(&suffixes).map_err(at)?;
            if let Some(rest) = head.strip_prefix("conv") {
                let (n, k) = rest
                    .split_once('x')
                    .and_then(|(n, k)| Some((number(n)?, number(k)?)))
                    .ok_or_else(|| at("expected conv<N>x<K>, e.g. conv20x5".into()))?;
                if dropout > 0.0 {
                    return Err(at("dropout applies to fc and softmax layers only".into()));
                }
                let pool = tokens
                    .get(i + 1)
                    .and_then(|t| t.strip_prefix("pool"))
                    .and_then(number)
                    .ok_or_else(|| {
                        at("a conv layer must be followed by pool<P>, e.g. pool2".into())
                    })?;
                layers.push(Layer::ConvPool {
                    filters: n,
                    kernel: k,
                    pool,
                    activation: activation.unwrap_or_default(),
                });
                i += 2;
                continue;
            }
            if head.starts_with("pool") {
                return Err(at("a pool must follow a conv layer".into()));
            }
            let layer = if let Some(n) = head.strip_prefix("fc").and_then(number) {
                Layer::Fc {
                    neurons: n,
                    activation: activation.unwrap_or_default(),
                    dropout,
                }
            } else if let Some(n) = head.strip_prefix("softmax").and_then(number) {
                if activation.is_some() {
                    return Err(at("a softmax layer takes no activation".into()));
                }
                Layer::Softmax {
                    classes: n,
                    dropout,
                }
            } else {
                return Err(at(
                    "expected conv<N>x<K>, pool<P>, fc<N> or softmax<N>".into()
                ));
            };
            layers.push(layer);
            i += 1;
        }
        let spec = NetSpec { input, layers };
        spec.validate(text)?;
        Ok(spec)
    }

    /// Checks the shapes layer by layer; `text` is what was parsed (to name layers).
    fn validate(&self, text: &str) -> Result<(), SpecError> {
        let names = self.layer_names();
        let at =
            |l: usize, msg: String| SpecError(format!("layer {} `{}`: {msg}", l + 1, names[l]));
        if self.layers.is_empty() || text.is_empty() {
            return Err(SpecError("a net needs at least one layer".into()));
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(SpecError(format!("more than {MAX_LAYERS} layers")));
        }
        let (mut shape, mut params) = (self.input, 0usize);
        for (l, layer) in self.layers.iter().enumerate() {
            let last = l + 1 == self.layers.len();
            match *layer {
                Layer::ConvPool {
                    filters,
                    kernel,
                    pool,
                    ..
                } => {
                    if shape.height * shape.width <= 1 {
                        return Err(at(
                            l,
                            "a conv layer needs an image, not a flat vector".into(),
                        ));
                    }
                    if filters == 0 || kernel == 0 || pool == 0 {
                        return Err(at(l, "filters, kernel and pool must be positive".into()));
                    }
                    if kernel > shape.height || kernel > shape.width {
                        return Err(at(
                            l,
                            format!("a {kernel}×{kernel} filter does not fit the {shape} map"),
                        ));
                    }
                    let (h, w) = (shape.height + 1 - kernel, shape.width + 1 - kernel);
                    if h % pool != 0 || w % pool != 0 {
                        return Err(at(
                            l,
                            format!("pool{pool} does not divide the {h}×{w} map the conv makes"),
                        ));
                    }
                }
                Layer::Fc { neurons: 0, .. } | Layer::Softmax { classes: 0, .. } => {
                    return Err(at(l, "a layer needs at least one neuron".into()));
                }
                _ => {}
            }
            let p = layer.dropout();
            if !(0.0..1.0).contains(&p) {
                return Err(at(l, format!("dropout {p} is not in [0, 1)")));
            }
            if matches!(layer, Layer::Softmax { .. }) != last {
                return Err(at(
                    l,
                    "the last layer, and only the last, must be softmax<N>".into(),
                ));
            }
            let (o, i) = layer.weight_shape(shape);
            let out = layer.output(shape);
            params = o
                .checked_mul(i)
                .and_then(|w| w.checked_add(o))
                .and_then(|n| n.checked_add(params))
                .filter(|&n| n <= MAX_PARAMETERS)
                .ok_or_else(|| {
                    at(
                        l,
                        format!("the net has more than {MAX_PARAMETERS} parameters"),
                    )
                })?;
            let conv_values = match *layer {
                Layer::ConvPool {
                    filters, kernel, ..
                } => {
                    filters.saturating_mul((shape.height + 1 - kernel) * (shape.width + 1 - kernel))
                }
                _ => 0,
            };
            if out.len() > MAX_FEATURES || conv_values > MAX_FEATURES {
                return Err(at(l, format!("more than {MAX_FEATURES} values per sample")));
            }
            shape = out;
        }
        Ok(())
    }

    /// Each layer's canonical text, e.g. `conv20x5:relu,pool2`.
    pub fn layer_names(&self) -> Vec<String> {
        self.layers.iter().map(Layer::to_string).collect()
    }

    /// The input shape of each layer, then the output shape of the last.
    pub fn shapes(&self) -> Vec<Shape> {
        let mut shapes = vec![self.input];
        for layer in &self.layers {
            shapes.push(layer.output(*shapes.last().expect("starts with the input")));
        }
        shapes
    }

    /// The `(out, in)` shape of each layer's weight matrix.
    pub fn weight_shapes(&self) -> Vec<(usize, usize)> {
        let shapes = self.shapes();
        self.layers
            .iter()
            .zip(&shapes)
            .map(|(l, &s)| l.weight_shape(s))
            .collect()
    }

    /// Number of f32 parameters (weights and biases).
    pub fn parameter_count(&self) -> usize {
        self.weight_shapes().iter().map(|&(o, i)| o * i + o).sum()
    }

    /// Multiply-adds of one sample's training pass: each layer's forward
    /// product, its weight gradient, and (above the first layer) the error
    /// sent back, i.e. 3× the forward products but the first layer's 2×.
    pub fn multiply_adds(&self) -> usize {
        let shapes = self.shapes();
        self.layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let (o, i) = layer.weight_shape(shapes[l]);
                let columns = match *layer {
                    Layer::ConvPool { kernel, .. } => {
                        (shapes[l].height + 1 - kernel) * (shapes[l].width + 1 - kernel)
                    }
                    _ => 1,
                };
                o * i * columns * if l == 0 { 2 } else { 3 }
            })
            .sum()
    }

    /// The number of classes the softmax layer outputs.
    pub fn classes(&self) -> usize {
        self.shapes().last().map_or(0, |s| s.len())
    }

    /// True if some layer drops inputs in training (so a shard's gradient
    /// depends on its samples' positions in the epoch).
    pub fn has_dropout(&self) -> bool {
        self.layers.iter().any(|l| l.dropout() > 0.0)
    }
}

impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.layer_names().join(","))
    }
}

/// `head` and its `:`-separated suffixes.
fn split_suffixes(token: &str) -> (&str, Vec<&str>) {
    let mut parts = token.split(':');
    let head = parts.next().unwrap_or("");
    (head, parts.collect())
}

/// The activation (if named) and dropout of a layer's suffixes.
fn parse_suffixes(suffixes: &[&str]) -> Result<(Option<Activation>, f32), String> {
    let (mut activation, mut dropout) = (None, 0.0);
    for s in suffixes {
        if let Some(p) = s.strip_prefix("dropout=") {
            dropout = p
                .parse::<f32>()
                .ok()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| format!("dropout={p} is not a probability in [0, 1)"))?;
        } else if let Some(a) = Activation::from_name(s) {
            if activation.replace(a).is_some() {
                return Err("two activations".into());
            }
        } else {
            return Err(format!(
                "unknown suffix `:{s}` (sigmoid, relu, tanh or dropout=P)"
            ));
        }
    }
    Ok((activation, dropout))
}

/// A positive decimal number without sign or spaces (bounded, so `conv1e9…` fails cleanly).
fn number(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
