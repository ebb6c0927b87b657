//! What an epoch's network has learned, for the page: each hidden unit's
//! incoming weights as a 28×28 tile, the test set's confusion matrix, a
//! sample of misclassified test digits, and the costs per set. Computed on
//! a blocking thread (tens of milliseconds of feedforwards), never on the
//! async threads that serve gRPC.

use base64::Engine;
use common::cost::Cost;
use common::dataset::{Mnist, Samples, IMAGE_SIZE};
use common::kernels::KernelSet;
use common::layers::Layer;
use common::network::argmax;
use common::Network;

/// Misclassified test digits shown per epoch.
pub const MISCLASSIFIED_SHOWN: usize = 24;

/// Training samples the running cost and, when `--monitor` leaves it out,
/// the per-epoch training cost are measured on (the first ones of the set).
pub const TRAINING_SAMPLE: usize = 1000;

/// At most this many tiles are sent (a `[784, 1000, 10]` network would make
/// the page heavy for no insight).
pub const MAX_TILES: usize = 400;

/// One misclassified test digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    /// Index in the test set.
    pub index: usize,
    /// Its label.
    pub label: u8,
    /// What the network said.
    pub predicted: u8,
    /// 784 grey levels as in the IDX file (0 background, 255 ink), base64.
    pub pixels: String,
}

/// What one epoch's network learned.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    /// The epoch.
    pub epoch: usize,
    /// Per first-layer hidden unit, its 784 incoming weights scaled to
    /// `-127..=127` by the tile's largest magnitude, stored `+128` as bytes, base64.
    /// For a chapter-6 net whose first layer is a conv layer on one
    /// channel, its filters instead, K×K each. Empty when the first layer's
    /// input is neither.
    pub tiles: Vec<String>,
    /// The side of each square tile: 28, or a conv layer's K.
    pub tile_side: usize,
    /// Hidden units in the first layer (tiles may be fewer, see [`MAX_TILES`]).
    pub hidden: usize,
    /// `confusion[label][predicted]` on the test set.
    pub confusion: [[u32; 10]; 10],
    /// The first [`MISCLASSIFIED_SHOWN`] misclassified test digits.
    pub misclassified: Vec<Miss>,
    /// Mean cost on the test set.
    pub test_cost: f64,
    /// Mean cost on the validation set.
    pub validation_cost: f64,
    /// Mean cost on the first [`TRAINING_SAMPLE`] training samples.
    pub training_cost_sample: f64,
}

/// Mean `cost` of `network` over `samples`.
pub fn mean_cost(network: &Network, samples: &Samples, cost: Cost, kernels: KernelSet) -> f64 {
    common::evaluation::cost_and_correct(network, samples, cost, kernels).0
        / samples.len().max(1) as f64
}

/// The training samples the running cost is measured on.
pub fn training_sample(data: &Mnist) -> Samples {
    data.training
        .slice(0..TRAINING_SAMPLE.min(data.training.len()))
}

/// Evaluates `network` after `epoch` on `data` with `cost`, on the run's `kernels`.
pub fn learn(
    network: &Network,
    data: &Mnist,
    cost: Cost,
    kernels: KernelSet,
    epoch: usize,
) -> Learned {
    let b64 = base64::engine::general_purpose::STANDARD;
    let w0 = &network.weights[0];
    let tile_side = tile_side(network);
    let tiles = if tile_side > 0 {
        w0.rows()
            .into_iter()
            .take(MAX_TILES)
            .map(|row| {
                let max = row.iter().fold(0f32, |m, w| m.max(w.abs())).max(1e-12);
                let bytes: Vec<u8> = row
                    .iter()
                    .map(|w| (128.0 + (w / max * 127.0).round()) as u8)
                    .collect();
                b64.encode(bytes)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut confusion = [[0u32; 10]; 10];
    let mut misclassified = Vec::new();
    let mut test_cost = 0.0;
    const CHUNK: usize = 1000;
    let test = &data.test;
    for start in (0..test.len()).step_by(CHUNK) {
        let part = test.slice(start..(start + CHUNK).min(test.len()));
        let (c, outputs) =
            network.cost_and_outputs(part.inputs().view(), part.targets().view(), cost, kernels);
        test_cost += c;
        for (i, (out, &label)) in outputs.columns().into_iter().zip(&part.labels).enumerate() {
            let predicted = argmax(out.iter().copied());
            let row = &mut confusion[usize::from(label) % 10];
            row[predicted % 10] += 1;
            if predicted != usize::from(label) && misclassified.len() < MISCLASSIFIED_SHOWN {
                let pixels = &part.pixels[i * IMAGE_SIZE..(i + 1) * IMAGE_SIZE];
                misclassified.push(Miss {
                    index: start + i,
                    label,
                    predicted: predicted as u8,
                    pixels: b64.encode(pixels),
                });
            }
        }
    }
    Learned {
        epoch,
        tiles,
        tile_side,
        hidden: w0.nrows(),
        confusion,
        misclassified,
        test_cost: test_cost / test.len().max(1) as f64,
        validation_cost: mean_cost(network, &data.validation, cost, kernels),
        training_cost_sample: mean_cost(network, &training_sample(data), cost, kernels),
    }
}

/// The side of the first layer's tiles: 28 when each unit sees the whole
/// image, K for a conv layer's K×K filters on one channel, 0 otherwise.
fn tile_side(network: &Network) -> usize {
    match network
        .net
        .as_ref()
        .and_then(|n| n.layers.first().map(|l| (n.input, *l)))
    {
        Some((input, Layer::ConvPool { kernel, .. })) if input.channels == 1 => kernel,
        Some(_) => 0,
        None if network.weights[0].ncols() == IMAGE_SIZE => 28,
        None => 0,
    }
}

impl Learned {
    /// The JSON the page draws from.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "epoch": self.epoch,
            "hidden": self.hidden,
            "tiles": self.tiles,
            "tile_side": self.tile_side,
            "confusion": self.confusion,
            "misclassified": self.misclassified.iter().map(|m| serde_json::json!({
                "index": m.index, "label": m.label, "predicted": m.predicted, "pixels": m.pixels,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_confusion_and_misses_cover_the_test_set() {
        let data = Mnist::random(30, 10, 50, 5);
        let net = Network::new(&[784, 7, 10], &mut common::schedule::init_rng(3));
        let l = learn(&net, &data, Cost::Quadratic, KernelSet::best(), 2);
        assert_eq!((l.tiles.len(), l.hidden, l.epoch), (7, 7, 2));
        let tile = base64::engine::general_purpose::STANDARD
            .decode(&l.tiles[0])
            .unwrap();
        assert_eq!(tile.len(), 784);
        let total: u32 = l.confusion.iter().flatten().sum();
        assert_eq!(total as usize, data.test.len());
        let wrong = total - (0..10).map(|i| l.confusion[i][i]).sum::<u32>();
        assert_eq!(
            l.misclassified.len(),
            (wrong as usize).min(MISCLASSIFIED_SHOWN)
        );
        assert!(l.misclassified.iter().all(|m| m.label != m.predicted));
        assert_eq!(l.tile_side, 28);
        // A conv net's first layer: its 5×5 filters.
        let spec = crate::config::parse_net("conv6x5,pool2,fc10,softmax10").unwrap();
        let conv = Network::network3(&spec, &mut common::schedule::init_rng(3));
        let l = learn(&conv, &data, Cost::Quadratic, KernelSet::best(), 0);
        assert_eq!((l.tiles.len(), l.tile_side, l.hidden), (6, 5, 6));
        let tile = base64::engine::general_purpose::STANDARD
            .decode(&l.tiles[0])
            .unwrap();
        assert_eq!(tile.len(), 25);
    }
}
