//! The hash chain of a run's weights, the heart of its verifiable record.
//!
//! A link is taken of the initial weights (step 0), after every
//! `record_every` steps if asked, and after the last step of every epoch.
//! Each link holds the SHA-256 of the packed weights (the little-endian f32
//! layout of `Step.weights`) and the chain value
//!
//! ```text
//! chain = SHA-256(previous chain ‖ step as u64 LE ‖ SHA-256(weights))
//! ```
//!
//! starting from 32 zero bytes. Because a run is a pure function of its
//! flags, data and kernel set, replaying it must reproduce every link; the
//! first link that differs bounds the first step that differs. Checkpoints
//! carry the chain, so a resumed run's links are the same as an
//! uninterrupted one's.

use sha2::{Digest, Sha256};

use crate::wire::encode_network;
use crate::Network;

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// One link of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Steps applied when it was taken (0: the initial weights).
    pub step: u64,
    /// The epoch that ended at this step, if one did.
    pub epoch: Option<usize>,
    /// SHA-256 of the packed weights.
    pub weights: Digest32,
    /// The chain value after this link.
    pub chain: Digest32,
}

/// The links of a run so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// Every link, in step order.
    pub links: Vec<Link>,
}

impl Chain {
    /// The chain value so far (32 zero bytes before the first link).
    pub fn head(&self) -> Digest32 {
        self.links.last().map_or([0; 32], |l| l.chain)
    }

    /// Links the weights a run starts from after `step` steps (0, or where
    /// a resumed run without a chain continues), unless the chain has begun.
    pub fn start(&mut self, step: u64, network: &Network) {
        if self.links.is_empty() {
            self.push(step, None, network);
        }
    }

    /// The links as text, one `step,epoch,weights,chain` per `;`-separated
    /// item (epoch `-` when none ended): how checkpoints carry the chain.
    pub fn to_text(&self) -> String {
        self.links
            .iter()
            .map(|l| {
                let epoch = l.epoch.map_or("-".to_string(), |e| e.to_string());
                format!("{},{epoch},{},{}", l.step, hex(&l.weights), hex(&l.chain))
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The chain [`Chain::to_text`] wrote, checked link by link.
    pub fn from_text(text: &str) -> Option<Chain> {
        let mut chain = Chain::default();
        for item in text.split(';').filter(|i| !i.is_empty()) {
            let mut parts = item.split(',');
            let step = parts.next()?.parse().ok()?;
            let epoch = match parts.next()? {
                "-" => None,
                e => Some(e.parse().ok()?),
            };
            let weights = from_hex(parts.next()?)?;
            let value = from_hex(parts.next()?)?;
            if parts.next().is_some() || value != link_value(&chain.head(), step, &weights) {
                return None;
            }
            chain.links.push(Link {
                step,
                epoch,
                weights,
                chain: value,
            });
        }
        Some(chain)
    }

    /// After step `step` is applied: a link if `every` divides it.
    pub fn after_step(&mut self, step: u64, every: Option<u64>, network: &Network) {
        if every.is_some_and(|k| k > 0 && step % k == 0) {
            self.push(step, None, network);
        }
    }

    /// After epoch `epoch` ended at step `step`: a link tagged with the
    /// epoch (the step's own link, if `after_step` took one).
    pub fn after_epoch(&mut self, epoch: usize, step: u64, network: &Network) {
        match self.links.last_mut() {
            Some(last) if last.step == step && step > 0 => last.epoch = Some(epoch),
            _ => self.push(step, Some(epoch), network),
        }
    }

    fn push(&mut self, step: u64, epoch: Option<usize>, network: &Network) {
        let weights = weights_digest(network);
        let chain = link_value(&self.head(), step, &weights);
        self.links.push(Link {
            step,
            epoch,
            weights,
            chain,
        });
    }
}

/// SHA-256 of `network`'s packed weights.
pub fn weights_digest(network: &Network) -> Digest32 {
    Sha256::digest(encode_network(network)).into()
}

/// The chain value after `previous` of a link at `step` with weights digest `weights`.
pub fn link_value(previous: &Digest32, step: u64, weights: &Digest32) -> Digest32 {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(step.to_le_bytes());
    h.update(weights);
    h.finalize().into()
}

/// Lower-case hex of a digest.
pub fn hex(d: &Digest32) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest from 64 hex digits.
pub fn from_hex(s: &str) -> Option<Digest32> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut d = [0; 32];
    for (i, byte) in d.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::init_rng;

    #[test]
    fn links_follow_the_documented_formula() {
        let mut net = Network::new(&[4, 3, 2], &mut init_rng(1));
        let mut chain = Chain::default();
        chain.start(0, &net);
        chain.start(0, &net); // a resumed run does not link again
        net.biases[0][0] += 1.0;
        chain.after_step(1, Some(2), &net); // not due
        chain.after_step(2, Some(2), &net);
        chain.after_epoch(0, 2, &net); // tags step 2's link
        chain.after_epoch(1, 5, &net);
        let steps: Vec<_> = chain.links.iter().map(|l| (l.step, l.epoch)).collect();
        assert_eq!(steps, [(0, None), (2, Some(0)), (5, Some(1))]);
        let mut previous = [0; 32];
        for link in &chain.links {
            assert_eq!(link.chain, link_value(&previous, link.step, &link.weights));
            previous = link.chain;
        }
        assert_eq!(chain.head(), previous);
        assert_eq!(from_hex(&hex(&previous)), Some(previous));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(Chain::from_text(&chain.to_text()), Some(chain.clone()));
        let mut forged = chain.clone();
        forged.links[1].weights[0] ^= 1;
        assert_eq!(
            Chain::from_text(&forged.to_text()),
            None,
            "a link that does not chain"
        );
    }
}
