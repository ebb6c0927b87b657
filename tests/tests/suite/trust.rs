//! Trust: one kernel set per run, and audits that catch workers whose
//! results are wrong (silent data corruption, or a lying peer).

use std::time::Duration;

use common::kernels::KernelSet;
use common::plan::TrainingPlan;
use coordinator::{Config, RunSummary};
use integration_tests::{
    assert_bits_eq, bits, fixture_data, plan_for, reference_network, skip, test_config, Cluster,
};
use tonic::Code;
use worker::{Fault, SessionError, WorkerConfig, WorkerError};

const LIMIT: Duration = Duration::from_secs(180);

fn plan(kernels: KernelSet) -> TrainingPlan {
    TrainingPlan {
        kernels,
        ..plan_for(1, 4, 8)
    }
}

fn reference(plan: &TrainingPlan) -> Vec<u8> {
    bits(&reference_network(plan))
}

/// The status a worker was refused with.
fn refusal(exit: &Result<(), WorkerError>) -> Option<&tonic::Status> {
    match exit {
        Err(WorkerError::Refused(SessionError::Status(s))) => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_kernels_give_the_same_bits_on_1_2_and_4_workers() {
    let plan = plan(KernelSet::Portable);
    let want = reference(&plan);
    for workers in [1, 2, 4] {
        let mut cluster = Cluster::start(test_config(plan.clone(), workers), fixture_data(), 0)
            .await
            .unwrap();
        // One worker insists on portable; the others take whatever the run says.
        cluster.add_worker_config(WorkerConfig {
            kernels: Some(KernelSet::Portable),
            ..cluster.worker_config("forced-portable")
        });
        for i in 1..workers {
            cluster.add_worker(&format!("default-{i}"));
        }
        let (summary, exits) = cluster.finish(LIMIT).await.unwrap();
        assert!(exits.iter().all(Result::is_ok), "{exits:?}");
        assert_bits_eq(
            &summary.unwrap().network,
            &want,
            &format!("portable on {workers} workers differs from the portable reference"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_will_not_compute_the_runs_kernel_set_is_refused() {
    if KernelSet::Avx2.missing_feature().is_some() {
        return skip(
            "a_worker_that_will_not_compute_the_runs_kernel_set_is_refused",
            "this CPU has one kernel set only",
        );
    }
    for (run, forced) in [
        (KernelSet::Avx2, KernelSet::Portable),
        (KernelSet::Portable, KernelSet::Avx2),
    ] {
        let plan = TrainingPlan {
            epochs: 1,
            ..plan(run)
        };
        let want = reference(&plan);
        let mut cluster = Cluster::start(test_config(plan, 1), fixture_data(), 1)
            .await
            .unwrap();
        let other = cluster.add_worker_config(WorkerConfig {
            kernels: Some(forced),
            ..cluster.worker_config("other-kernels")
        });
        let exit = cluster.worker_exit(other, LIMIT).await.unwrap();
        let status = refusal(&exit).unwrap_or_else(|| panic!("not refused: {exit:?}"));
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let message = status.message();
        assert!(
            message.contains(&format!("kernel set {run}")) && message.contains(forced.name()),
            "the refusal names both sets: {message}"
        );
        let (summary, _) = cluster.finish(LIMIT).await.unwrap();
        assert!(
            bits(&summary.unwrap().network) == want,
            "{run}: the run's model changed"
        );
    }
}

/// A cluster of two honest workers and one faulty one (`fault`), auditing `rate`.
async fn audited_run(
    plan: &TrainingPlan,
    rate: f64,
    fault: Fault,
) -> (RunSummary, Result<(), WorkerError>) {
    let config = Config {
        audit_rate: rate,
        // No backup copies: one answered first would make the faulty
        // worker's result a duplicate, never applied and never audited, and
        // the counts below would depend on the machine's load.
        backup: coordinator::pool::backup::BackupPolicy::OFF,
        ..test_config(plan.clone(), 3)
    };
    let mut cluster = Cluster::start(config, fixture_data(), 2).await.unwrap();
    let faulty = cluster.add_worker_config(WorkerConfig {
        fault: Some(fault),
        ..cluster.worker_config("faulty")
    });
    let exit = cluster.worker_exit(faulty, LIMIT).await.unwrap();
    let (summary, exits) = cluster.finish(LIMIT).await.unwrap();
    assert!(exits.iter().all(Result::is_ok), "honest workers: {exits:?}");
    (summary.unwrap(), exit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audited_corruption_is_caught_and_the_model_stays_the_honest_one() {
    let plan = plan(KernelSet::best());
    let want = reference(&plan);
    // Step 37: one flipped low bit in one value, finite and plausible.
    let (summary, exit) = audited_run(&plan, 1.0, Fault::CorruptAtStep(37)).await;
    let status = refusal(&exit).unwrap_or_else(|| panic!("not dropped: {exit:?}"));
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("step 37"), "{}", status.message());
    let shards = 100 * plan.shards as u64;
    assert_eq!(
        summary.stats.audited, shards,
        "at rate 1 every result is recomputed"
    );
    assert_eq!(summary.stats.audit_failures, 1);
    // The recomputation replaced the corrupt result, and the honest ones it
    // checked were used as they came: bit for bit the reference.
    assert_bits_eq(
        &summary.network,
        &want,
        "the model differs from the honest run",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_audit_rate_a_tenth_a_tenth_of_results_is_checked_and_a_persistent_fault_is_caught() {
    let plan = TrainingPlan {
        epochs: 2,
        ..plan(KernelSet::best())
    };
    let p = 0.1;
    // Wrong from the first step on: caught at its first audited shard.
    let (summary, exit) = audited_run(&plan, p, Fault::CorruptFromStep(0)).await;
    let status = refusal(&exit).unwrap_or_else(|| panic!("never caught: {exit:?}"));
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert_eq!(summary.stats.audit_failures, 1);
    // Results received: every shard once, plus nothing else accepted. The
    // audited count is Binomial(n, p): within 4.5 standard deviations with
    // probability 1 − 7·10⁻⁶.
    let n = (200 * plan.shards) as f64;
    let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
    let audited = summary.stats.audited as f64;
    assert!(
        (audited - mean).abs() <= 4.5 * sd,
        "{audited} of {n} results audited; expected {mean} ± {sd:.1}"
    );
}

/// Runs `coordinator verify` on `record` with the data in `data`; returns
/// whether it passed and its stdout.
fn verify(record: &std::path::Path, data: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(integration_tests::binary("coordinator"))
        .arg("verify")
        .arg(record)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run coordinator verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        stdout + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A record verifies; altering a link, a flag or the data makes `verify`
/// fail, naming the step where the replay first differs.
#[test]
fn verify_fails_naming_the_step_when_the_record_a_flag_or_the_data_is_altered() {
    let dir = integration_tests::TempDir::new("verify-tamper");
    let out = dir.join("model.safetensors");
    let run = std::process::Command::new(integration_tests::binary("coordinator"))
        .args([
            "--local",
            "--epochs",
            "2",
            "--shards",
            "2",
            "--record-every",
            "10",
        ])
        .arg("--data-dir")
        .arg(integration_tests::fixture_dir())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run coordinator --local");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let record = dir.join("model.record.json");
    let fixture = integration_tests::fixture_dir();
    let (ok, text) = verify(&record, &fixture);
    // Steps 0, 10, ..., 200: 21 links.
    assert!(ok && text.contains("verified: 21 hashes match"), "{text}");

    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let tampered = |edit: &dyn Fn(&mut serde_json::Value), name: &str| {
        let mut v = original.clone();
        edit(&mut v);
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        path
    };
    // A link's hash, as if the weights at step 150 had been others.
    let link = tampered(
        &|v| {
            let l = &mut v["links"][15];
            assert_eq!(l["step"], 150);
            l["weights_sha256"] = "00".repeat(32).into();
        },
        "link.json",
    );
    let (ok, text) = verify(&link, &fixture);
    assert!(
        !ok && text.contains("DIFFERS") && text.contains("at step 150"),
        "{text}"
    );
    // A flag: another learning rate changes every step from the first.
    let flag = tampered(&|v| v["flags"]["eta"] = 2.5.into(), "flag.json");
    let (ok, text) = verify(&flag, &fixture);
    assert!(
        !ok && text.contains("at step 10") && text.contains("1..=10"),
        "{text}"
    );
    // The data: one pixel of one training image.
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, data.join(path.file_name().unwrap())).unwrap();
    }
    let images = common::dataset::find_file(&data, common::dataset::TRAIN_IMAGES).unwrap();
    let mut bytes = common::dataset::idx::read_maybe_gz(&images).unwrap();
    let pixel = 16 + 500 * 784 + 400; // the middle of image 500
    bytes[pixel] = bytes[pixel].wrapping_add(99);
    std::fs::remove_file(&images).unwrap();
    std::fs::write(data.join(common::dataset::TRAIN_IMAGES), &bytes).unwrap();
    let (ok, text) = verify(&record, &data);
    assert!(
        !ok && text.contains("train-images-idx3-ubyte")
            && text.contains("DIFFERS")
            && text.contains("step"),
        "{text}"
    );
}
