//! A model as the JSON that `network2.py`'s `save` writes and `load` reads:
//! `{"sizes": [...], "weights": [...], "biases": [...], "cost": "CrossEntropyCost"}`.
//! `weights[l]` is a list of rows (`(out, in)`, as `w.tolist()`), `biases[l]`
//! a list of one-element rows (network2's biases are `(out, 1)` columns).
//! Each f32 is written as the decimal of its exact f64 value, so a float64
//! reader holds the very same numbers.

use std::fmt::Write;

use crate::cost::Cost;
use crate::network::Network;

/// The network2.py JSON of `network`, whose cost is `cost`.
pub fn to_json(network: &Network, cost: Cost) -> String {
    let mut out = String::new();
    let num = |out: &mut String, v: f32| {
        // `{:?}` of an f64 is its shortest round-trip decimal (always with a '.' or 'e').
        let _ = write!(out, "{:?}", f64::from(v));
    };
    let sizes: Vec<String> = network.sizes.iter().map(|s| s.to_string()).collect();
    let _ = write!(out, "{{\"sizes\": [{}], \"weights\": [", sizes.join(", "));
    for (l, w) in network.weights.iter().enumerate() {
        out.push_str(if l == 0 { "[" } else { ", [" });
        for (i, row) in w.rows().into_iter().enumerate() {
            out.push_str(if i == 0 { "[" } else { ", [" });
            for (j, &v) in row.iter().enumerate() {
                if j > 0 {
                    out.push_str(", ");
                }
                num(&mut out, v);
            }
            out.push(']');
        }
        out.push(']');
    }
    out.push_str("], \"biases\": [");
    for (l, b) in network.biases.iter().enumerate() {
        out.push_str(if l == 0 { "[" } else { ", [" });
        for (i, &v) in b.iter().enumerate() {
            out.push_str(if i == 0 { "[" } else { ", [" });
            num(&mut out, v);
            out.push(']');
        }
        out.push(']');
    }
    let _ = write!(out, "], \"cost\": \"{}\"}}", cost.network2_name());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn layout_is_network2s() {
        let net = Network {
            net: None,
            sizes: vec![2, 1],
            weights: vec![array![[0.5f32, -0.1]]],
            biases: vec![array![2.0f32]],
        };
        assert_eq!(
            to_json(&net, Cost::CrossEntropy),
            format!(
                "{{\"sizes\": [2, 1], \"weights\": [[[0.5, {:?}]]], \"biases\": [[[2.0]]], \"cost\": \"CrossEntropyCost\"}}",
                f64::from(-0.1f32)
            )
        );
    }
}
