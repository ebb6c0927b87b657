//! Crafted run records against `verify`, generated: a real record of a
//! small run, then edits to its plan (sizes, epochs, batch, `record_every`),
//! its links (cut, repeated, reordered, pushed past the plan) and the kind
//! of file its path or its `--init` model's path names (a FIFO, a
//! directory, a device). The property: loading and replaying it ends
//! within a bound with a clear error, a verified replay or a difference,
//! never a panic or a hang; and the record left alone verifies.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::plan::{RunState, TrainingPlan};
use coordinator::app::record::{self, RunRecord, Verdict};
use integration_tests::{fixture_data, fixture_dir, plan_for, TempDir};
use proptest::prelude::*;
use serde_json::{json, Value};

/// The record of a one-epoch run on the committed slice, a link every 20 steps.
fn original() -> &'static Value {
    static RECORD: OnceLock<Value> = OnceLock::new();
    RECORD.get_or_init(|| {
        let plan = TrainingPlan {
            record_every: Some(20),
            ..plan_for(1, 2, 5)
        };
        let mut net = plan.initial_network();
        let mut state = RunState::new(&plan);
        let quiet = common::progress::Quiet;
        common::local::train_in_process_with_state(
            &mut net,
            &mut state,
            &fixture_data(),
            &plan,
            quiet,
        );
        let digests = record::data_digests(&fixture_dir()).unwrap();
        record::of_run(&plan, digests, None, &state.chain).to_json()
    })
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    File,
    Fifo,
    Directory,
    Device,
}

#[derive(Debug, Clone)]
enum Edit {
    Sizes(Vec<u64>),
    Epochs(u64),
    BatchSize(u64),
    RecordEvery(Option<u64>),
    /// Keep the first n links.
    Truncate(usize),
    /// Append this many copies of the last link.
    Repeat(usize),
    Reverse,
    /// The last link's step, moved far past the plan.
    StepFarAway,
    /// An `--init` model at a path of this kind.
    Init(Kind),
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::File),
        Just(Kind::Fifo),
        Just(Kind::Directory),
        Just(Kind::Device)
    ]
}

fn edits() -> impl Strategy<Value = Edit> {
    let sizes = prop_oneof![
        Just(vec![5, 10]),
        Just(vec![784, 30, 7]),
        Just(vec![784, 10]),
        Just(vec![784, 30, 10]),
        Just(vec![]),
        Just(vec![784]),
        Just(vec![784, 0, 10]),
        Just(vec![784, 1 << 40, 10]),
    ];
    prop_oneof![
        sizes.prop_map(Edit::Sizes),
        prop_oneof![Just(0u64), Just(1), Just(2), Just(1_000_000), Just(1 << 62)]
            .prop_map(Edit::Epochs),
        prop_oneof![Just(0u64), Just(1), Just(10), Just(5000)].prop_map(Edit::BatchSize),
        prop_oneof![
            Just(None),
            Just(Some(0u64)),
            Just(Some(1)),
            Just(Some(20)),
            Just(Some(7))
        ]
        .prop_map(Edit::RecordEvery),
        (0usize..45).prop_map(Edit::Truncate),
        prop_oneof![1usize..5, Just(100_000)].prop_map(Edit::Repeat),
        Just(Edit::Reverse),
        Just(Edit::StepFarAway),
        kinds().prop_map(Edit::Init),
    ]
}

/// A path of `kind` in `dir`: a file holding `bytes`, or what the kind says.
fn path_of(dir: &Path, name: &str, kind: Kind, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    match kind {
        Kind::File => std::fs::write(&path, bytes).unwrap(),
        Kind::Fifo => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: mkfifo reads a NUL-terminated path we own.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        Kind::Directory => std::fs::create_dir(&path).unwrap(),
        Kind::Device => return PathBuf::from("/dev/zero"),
    }
    path
}

fn apply(v: &mut Value, edit: &Edit, dir: &Path) {
    let links = v["links"].as_array_mut().unwrap();
    match edit {
        Edit::Sizes(s) => v["flags"]["sizes"] = json!(s),
        Edit::Epochs(n) => v["flags"]["epochs"] = json!(n),
        Edit::BatchSize(n) => v["flags"]["batch_size"] = json!(n),
        Edit::RecordEvery(n) => v["flags"]["record_every"] = json!(n),
        Edit::Truncate(n) => links.truncate(*n),
        Edit::Repeat(k) => {
            if let Some(last) = links.last().cloned() {
                links.extend(std::iter::repeat_n(last, *k));
            }
        }
        Edit::Reverse => links.reverse(),
        Edit::StepFarAway => {
            if let Some(last) = links.last_mut() {
                last["step"] = json!(1u64 << 60);
            }
        }
        Edit::Init(kind) => {
            let model = common::model_file::to_bytes(&plan_for(1, 2, 5).initial_network());
            let name = format!("init-{}.safetensors", rand_suffix());
            let path = path_of(dir, &name, *kind, &model);
            v["init_model"] =
                json!({ "path": path.display().to_string(), "weights_sha256": "00".repeat(32) });
        }
    }
}

/// Loads and replays the record at `path` on a thread; `None` if it did
/// not end within `limit` (a hang), else the verdict or the error in words.
fn verify_within(path: PathBuf, limit: Duration) -> Option<Result<Verdict, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got = RunRecord::load(&path)
            .and_then(|r| record::verify(&r, &fixture_dir(), None, None))
            .map(|(verdict, _)| verdict)
            .map_err(|e| e.to_string());
        let _ = tx.send(got);
    });
    rx.recv_timeout(limit).ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn crafted_records_give_a_clear_answer(
        edits in proptest::collection::vec(edits(), 0..3),
        kind in prop_oneof![6 => Just(Kind::File), 1 => kinds()],
    ) {
        let dir = TempDir::new(&format!("records-{}", rand_suffix()));
        let mut v = original().clone();
        for e in &edits {
            apply(&mut v, e, &dir);
        }
        let path = path_of(&dir, "run.record.json", kind, &serde_json::to_vec(&v).unwrap());
        let got = verify_within(path, Duration::from_secs(120));
        let got = got.ok_or_else(|| TestCaseError::fail("verify did not end within 120 s"))?;
        match &got {
            Err(e) => prop_assert!(!e.is_empty()),
            Ok(Verdict::Differs { what }) => prop_assert!(!what.is_empty()),
            Ok(Verdict::Verified { .. }) => {}
        }
        if kind != Kind::File {
            prop_assert!(matches!(&got, Err(e) if e.contains("not a regular file")), "{got:?}");
        }
        let links = original()["links"].as_array().unwrap().len();
        if edits.is_empty() && kind == Kind::File {
            prop_assert!(matches!(got, Ok(Verdict::Verified { hashes, .. }) if hashes == links), "{got:?}");
        }
        let sizes = &v["flags"]["sizes"];
        let bad_sizes = *sizes != json!([784, 30, 10]) && *sizes != json!([784, 10]);
        if bad_sizes && kind == Kind::File {
            prop_assert!(matches!(&got, Err(e) if e.contains("flags.sizes")), "{got:?}");
        }
    }
}

/// A distinct name per case: proptest runs cases one after another, but
/// a failed case's directory is removed only when its guard drops.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
