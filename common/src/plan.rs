//! What a run trains and where it has got to, shared by every loop and
//! every process: the [`TrainingPlan`] (the flags that decide the weights,
//! and the [`Monitor`] switches that do not) and the [`RunState`] besides
//! the weights (velocity, early stopping, best model, hash chain), which
//! checkpoints carry so that a resume is exact.

use crate::chain::Chain;
use crate::cost::Cost;
use crate::kernels::KernelSet;
use crate::layers::{DropoutKey, NetSpec};
use crate::network::{Init, Network};
use crate::optimizer::{Update, Velocity};
use crate::schedule::init_rng;
use crate::stopping::{EtaSchedule, Stopping};

/// Which figures are computed after each epoch besides test and validation
/// accuracy (network2.py's `monitor_*` switches; those two are always on,
/// because early stopping and the η schedule need the validation accuracy).
/// None of them affects the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Monitor {
    /// Cost on the 50,000 training images (with the L2 term).
    pub training_cost: bool,
    /// Accuracy on the training images.
    pub training_accuracy: bool,
    /// Cost on the validation images (with the L2 term).
    pub validation_cost: bool,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            training_cost: true,
            training_accuracy: true,
            validation_cost: true,
        }
    }
}

/// What to train and how; validated by whoever builds it. The
/// [`Default`] is network.py's run: `[784, 30, 10]`, 30 epochs, batch 10,
/// η 3.0, quadratic cost, N(0, 1) init, no L2, no momentum, seed 2, one
/// shard, and this CPU's fastest kernel set.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPlan {
    /// Layer sizes, e.g. `[784, 30, 10]`; for a chapter-6 net (`net`), its
    /// input and output sizes.
    pub sizes: Vec<usize>,
    /// `--net`: chapter 6's layers instead of the sigmoid network of
    /// `sizes`, with the log-likelihood cost, network3.py's initialisation
    /// and its L2 rule (see [`TrainingPlan::update`]).
    pub net: Option<NetSpec>,
    /// `--expand-data`: train on every training image and its four
    /// one-pixel shifts (expand_mnist.py), five times as many samples.
    pub expand_data: bool,
    /// Number of epochs.
    pub epochs: usize,
    /// Mini-batch length (`len` in `eta / len`); the last batch of an epoch may be shorter.
    pub batch_size: usize,
    /// Learning rate.
    pub eta: f32,
    /// Logical shards per mini-batch, `S`.
    pub shards: usize,
    /// Seed of the initial weights and of every epoch's shuffle.
    pub seed: u64,
    /// The cost the gradients are of (workers are told it in `Welcome`).
    pub cost: Cost,
    /// How the initial weights are drawn from the seed.
    pub init: Init,
    /// L2 regularisation parameter λ ≥ 0.
    pub lambda: f32,
    /// Momentum coefficient μ in [0, 1).
    pub momentum: f32,
    /// `--early-stop N`: stop after N epochs without a better validation accuracy.
    pub early_stop: Option<usize>,
    /// `--eta-schedule halve:N:R`.
    pub eta_schedule: Option<EtaSchedule>,
    /// What to evaluate after each epoch (never changes the weights).
    pub monitor: Monitor,
    /// The code every shard and evaluation of the run is computed with
    /// (workers are told it in `Welcome`).
    pub kernels: KernelSet,
    /// `--record-every K`: link the weights into the run's hash chain every
    /// K steps too (besides the initial weights and every epoch's end).
    pub record_every: Option<u64>,
}

impl Default for TrainingPlan {
    fn default() -> Self {
        TrainingPlan {
            sizes: vec![784, 30, 10],
            net: None,
            expand_data: false,
            epochs: 30,
            batch_size: 10,
            eta: 3.0,
            shards: 1,
            seed: 2,
            cost: Cost::Quadratic,
            init: Init::Large,
            lambda: 0.0,
            momentum: 0.0,
            early_stop: None,
            eta_schedule: None,
            monitor: Monitor::default(),
            kernels: KernelSet::best(),
            record_every: None,
        }
    }
}

impl TrainingPlan {
    /// The initial network of this plan, drawn by `init` from the seed.
    pub fn initial_network(&self) -> Network {
        match &self.net {
            Some(spec) => Network::network3(spec, &mut init_rng(self.seed)),
            None => Network::with_init(&self.sizes, self.init, &mut init_rng(self.seed)),
        }
    }

    /// Number of f32 parameters of this plan's model.
    pub fn parameter_count(&self) -> usize {
        match &self.net {
            Some(spec) => spec.parameter_count(),
            None => crate::network::parameter_count(&self.sizes),
        }
    }

    /// A network of this plan's shapes with every parameter zero.
    pub fn zero_network(&self) -> Network {
        match &self.net {
            Some(spec) => Network::for_net(spec),
            None => Network::zeros(&self.sizes),
        }
    }

    /// The update of a step taken at `eta` on a training set of `n` samples.
    ///
    /// L2 follows the book's chapter: network2.py's `w ← (1 − ηλ/n)·w − …`
    /// for the sigmoid network; for a chapter-6 net, network3.py's cost term
    /// `0.5·λ·Σw²/num_training_batches`, whose gradient step is the same
    /// rule with `n` replaced by the number of mini-batches, `n / len`
    /// (floored, as Python 2 divides).
    pub fn update(&self, eta: f32, n: usize) -> Update {
        let n = match self.net {
            Some(_) => (n / self.batch_size).max(1),
            None => n,
        };
        Update {
            eta,
            lambda: self.lambda,
            n,
            momentum: self.momentum,
        }
    }

    /// The dropout masks' key of the shard whose first sample is at
    /// position `first` of epoch `epoch`.
    pub fn dropout_key(&self, epoch: usize, first: usize) -> DropoutKey {
        DropoutKey {
            seed: self.seed,
            epoch: epoch as u64,
            first: first as u64,
        }
    }
}

/// A run's state besides the weights and the position: the optimiser's
/// velocity, the early-stopping and schedule state, and the best validation
/// epoch's model. Checkpoints carry all of it, so a resume is exact.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// Momentum's velocity (`None` without momentum).
    pub velocity: Option<Velocity>,
    /// Best validation epoch so far, counts since, η halvings.
    pub stopping: Stopping,
    /// The model after the best validation epoch so far.
    pub best: Option<BestEpoch>,
    /// The hash chain of the weights so far (the run record's links).
    pub chain: Chain,
}

/// The epoch with the best validation accuracy so far, and its model.
#[derive(Debug, Clone, PartialEq)]
pub struct BestEpoch {
    /// Epoch number, from 0.
    pub epoch: usize,
    /// Validation samples classified right.
    pub validation_correct: usize,
    /// Test samples classified right (the honest figure of an early-stopped run).
    pub test_correct: usize,
    /// The weights after that epoch.
    pub network: Network,
}

impl RunState {
    /// The state at the start of a run of `plan`.
    pub fn new(plan: &TrainingPlan) -> Self {
        RunState {
            velocity: (plan.momentum > 0.0).then(|| Velocity(plan.zero_network())),
            stopping: Stopping::default(),
            best: None,
            chain: Chain::default(),
        }
    }

    /// The learning rate of the next step.
    pub fn eta(&self, plan: &TrainingPlan) -> f32 {
        self.stopping.eta(plan.eta)
    }
}
