//! Property tests of the coordinator's own decoders, with generated inputs:
//! checkpoint files (any metadata values, edited bytes) and the flags. The
//! property: a clear error or a valid value, never a panic. (The wire, model
//! file and IDX decoders are fuzzed in `common`.)

use clap::Parser;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::checkpoint;
use crate::config::Args;
use common::plan::TrainingPlan;
use common::Network;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Metadata values a hostile file might carry.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        Just(String::new()),
        Just("18446744073709551616".to_string()),
        Just("NaN".to_string()),
        "[0-9a-z,. -]{0,12}",
    ]
}

const KEYS: [&str; 9] = [
    "epoch",
    "batch",
    "step",
    "seed",
    "batch_size",
    "eta_bits",
    "shards",
    "epochs",
    "sizes",
];

proptest! {
    #![proptest_config(config(1500))]

    /// A checkpoint with any metadata values loads, or fails naming a key.
    #[test]
    fn checkpoints_with_any_metadata(values in vec(value(), KEYS.len())) {
        let net = Network::new(&[4, 3, 2], &mut common::schedule::init_rng(1));
        let extra: Vec<(&str, String)> = KEYS[..8].iter().copied().zip(values.iter().cloned()).collect();
        let bytes = common::model_file::to_bytes_with(&net, &extra);
        let dir = std::env::temp_dir().join(format!("ck-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.safetensors", rand::random::<u64>()));
        std::fs::write(&path, &bytes).unwrap();
        let loaded = checkpoint::load(&path);
        std::fs::remove_file(&path).unwrap();
        if let Ok(c) = loaded {
            // What loads is checked against validated flags before use.
            let plan = TrainingPlan { sizes: vec![4, 3, 2], epochs: 3, batch_size: 10, eta: 3.0, shards: 2, seed: 2, ..TrainingPlan::default() };
            let _ = c.check_matches(&path, &plan);
        }
    }

    /// Any mix of real flags and hostile values parses and validates, or is
    /// refused with an error; nothing panics (e.g. overflowing sizes).
    #[test]
    fn flags(args in vec((0usize..14, value()), 0..6)) {
        const FLAGS: [&str; 14] = [
            "--sizes", "--epochs", "--batch-size", "--eta", "--seed", "--shards", "--workers",
            "--listen", "--wait-timeout", "--shard-timeout", "--keepalive", "--checkpoint-every",
            "--token", "--progress",
        ];
        let mut argv = vec!["coordinator".to_string()];
        for (flag, v) in &args {
            argv.push(FLAGS[*flag].to_string());
            argv.push(v.clone());
        }
        if let Ok(parsed) = Args::try_parse_from(&argv) {
            let _ = parsed.validate();
        }
    }

    /// Layer sizes of any magnitude: refused unless they fit the parameter limit.
    #[test]
    fn layer_sizes(sizes in vec(prop_oneof![1u64..50, any::<u64>()], 0..5)) {
        let list: Vec<String> = std::iter::once(784).chain(sizes).chain(std::iter::once(10)).map(|s| s.to_string()).collect();
        let argv = ["coordinator".to_string(), "--sizes".into(), list.join(",")];
        if let Ok(parsed) = Args::try_parse_from(&argv) {
            if let Ok(config) = parsed.validate() {
                prop_assert!(common::network::parameter_count(&config.config.plan.sizes) <= common::wire::MAX_PARAMETERS);
            }
        }
    }
}
