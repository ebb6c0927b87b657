//! Worker faults on a real in-process cluster: a worker that dies mid-step or
//! goes silent costs only time. Every case must finish with weights bitwise
//! identical to the undisturbed single-process reference.

use std::time::Duration;

use common::plan::TrainingPlan;
use coordinator::pool::PoolError;
use coordinator::{Config, CoordinatorError};
use integration_tests::{
    assert_bits_eq, bits, fixture_data, plan_for, reference_network, test_config, Cluster,
};
use worker::{Fault, WorkerConfig, WorkerError};

const LIMIT: Duration = Duration::from_secs(120);

fn plan() -> TrainingPlan {
    plan_for(2, 4, 5)
}

fn config(workers: usize, shard_timeout: Duration, wait_timeout: Duration) -> Config {
    Config {
        wait_timeout,
        shard_timeout,
        ..test_config(plan(), workers)
    }
}

fn reference() -> Vec<u8> {
    bits(&reference_network(&plan()))
}

/// A cluster whose only worker, `doomed`, exits at step `step`, and whose
/// coordinator waits `wait_timeout` for another; returns it and the worker's index.
async fn cluster_of_one_doomed_worker(wait_timeout: Duration, step: u64) -> (Cluster, usize) {
    let config = config(1, Duration::from_secs(30), wait_timeout);
    let mut cluster = Cluster::start(config, fixture_data(), 0).await.unwrap();
    let doomed = cluster.add_worker_exiting_at("doomed", step);
    (cluster, doomed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_dying_or_going_silent_mid_run_gives_the_same_weights() {
    let want = reference();
    let cases = [
        ("exits at the first step", Fault::ExitAtStep(0)),
        ("exits mid-epoch", Fault::ExitAtStep(42)),
        ("exits at the last step of an epoch", Fault::ExitAtStep(99)),
        ("goes silent mid-epoch", Fault::StallAtStep(61)),
    ];
    for (i, (name, fault)) in cases.into_iter().enumerate() {
        let config = config(4, Duration::from_millis(500), Duration::from_secs(10));
        let mut cluster = Cluster::start(config, fixture_data(), 3).await.unwrap();
        let faulty = cluster.add_worker_config(WorkerConfig {
            fault: Some(fault),
            ..cluster.worker_config("faulty")
        });
        let (Fault::ExitAtStep(n) | Fault::StallAtStep(n)) = fault else {
            unreachable!("the cases above stop the worker")
        };
        let exit = cluster.worker_exit(faulty, LIMIT).await.unwrap();
        assert!(
            matches!(exit, Err(WorkerError::InjectedExit(s)) if s == n),
            "case {i} ({name}): {exit:?}"
        );
        let (summary, workers) = cluster.finish(LIMIT).await.unwrap();
        let summary = summary.unwrap_or_else(|e| panic!("case {i} ({name}): {e}"));
        assert_bits_eq(
            &summary.network,
            &want,
            &format!("case {i} ({name}): weights differ from the undisturbed run"),
        );
        // Its shard went to another worker: reassigned after the loss, or
        // copied before it as a straggler's (whichever came first).
        assert!(
            summary.stats.reassigned + summary.stats.backups >= 1,
            "case {i} ({name}): nothing was recomputed: {:?}",
            summary.stats
        );
        let healthy = workers.iter().filter(|w| w.is_ok()).count();
        assert!(
            healthy >= 3,
            "case {i} ({name}): the healthy workers finish cleanly: {workers:?}"
        );
    }
}

/// Below the asked number of workers, then recovery: the only worker dies,
/// the coordinator waits, a new worker joins and the run completes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_worker_dies_and_a_replacement_finishes_the_run_exactly() {
    let want = reference();
    let (mut cluster, first) = cluster_of_one_doomed_worker(Duration::from_secs(30), 70).await;
    assert!(matches!(
        cluster.worker_exit(first, LIMIT).await.unwrap(),
        Err(WorkerError::InjectedExit(70))
    ));
    cluster.add_worker("replacement");
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    assert_bits_eq(
        &summary.unwrap().network,
        &want,
        "weights differ from the undisturbed run",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_within_wait_timeout_fails_with_the_step() {
    let (mut cluster, only) = cluster_of_one_doomed_worker(Duration::from_millis(300), 12).await;
    cluster.worker_exit(only, LIMIT).await.unwrap().unwrap_err();
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    match summary {
        Err(CoordinatorError::Pool(PoolError::NoWorkers { step, .. })) => assert_eq!(step.0, 12),
        other => panic!("expected NoWorkers at step 12, got {other:?}"),
    }
}
