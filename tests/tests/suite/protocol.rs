//! Malformed and hostile messages from a raw gRPC client: each gets the exact
//! status naming the problem, and nothing it sent is ever applied.

use std::time::Duration;

use common::pb::{self, coordinator_message, trainer_client::TrainerClient, worker_message};
use common::trainer::{train, TrainingPlan};
use coordinator::Config;
use integration_tests::{bits, fixture_data, test_config, Cluster};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

fn plan() -> TrainingPlan {
    TrainingPlan {
        sizes: vec![784, 30, 10],
        epochs: 1,
        batch_size: 10,
        eta: 3.0,
        shards: 2,
        seed: 4,
        ..TrainingPlan::default()
    }
}

fn config() -> Config {
    Config {
        wait_timeout: Duration::from_secs(60),
        ..test_config(plan(), 1)
    }
}

fn hello(version: u32) -> pb::WorkerMessage {
    pb::WorkerMessage {
        kind: Some(worker_message::Kind::Hello(pb::Hello {
            name: "raw".into(),
            protocol_version: version,
        })),
    }
}

/// Opens a stream, sends `first`, returns the sender and the response stream (or the status).
async fn open(
    addr: std::net::SocketAddr,
    first: pb::WorkerMessage,
) -> (
    mpsc::Sender<pb::WorkerMessage>,
    Result<tonic::Streaming<pb::CoordinatorMessage>, tonic::Status>,
) {
    let mut client = TrainerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let response = client
        .train(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_violations_get_failed_precondition_with_both_versions() {
    let cluster = Cluster::start(config(), fixture_data(), 0).await.unwrap();
    let (_tx, response) = open(cluster.addr, hello(2)).await;
    let status = response.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "protocol version mismatch: peer speaks v2, this build speaks v1"
    );

    let result = pb::ShardResult {
        step_id: 0,
        shard_id: 0,
        sample_count: 1,
        gradients: Default::default(),
        ..Default::default()
    };
    let (_tx, response) = open(
        cluster.addr,
        pb::WorkerMessage {
            kind: Some(worker_message::Kind::Result(result)),
        },
    )
    .await;
    let status = response.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::FailedPrecondition,
            "unexpected message: expected Hello, got ShardResult"
        )
    );
}

/// A worker that answers its first Step with bad results is told exactly why,
/// dropped, and its shards are recomputed by an honest worker: the weights
/// are those of the single-process reference, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_results_are_rejected_with_the_reason_and_never_applied() {
    let mut reference = plan().initial_network();
    train(
        &mut reference,
        &fixture_data(),
        &plan(),
        common::trainer::Quiet,
    );
    let cases: [(&str, fn(&mut pb::ShardResult), &str); 4] = [
        (
            "NaN gradient",
            |r| r.gradients = vec![0xff; 95_440].into(),
            "gradients: value 0 is NaN, not finite",
        ),
        (
            "short gradients",
            |r| r.gradients = vec![0; 100].into(),
            "gradients: 100 bytes, expected 95440",
        ),
        (
            "wrong sample count",
            |r| r.sample_count = 9,
            "result covers 9 samples, the shard has 5",
        ),
        ("unknown shard", |r| r.shard_id = 7, ""),
    ];
    for (i, (name, corrupt, want)) in cases.into_iter().enumerate() {
        let mut cluster = Cluster::start(config(), fixture_data(), 0).await.unwrap();
        let (tx, response) = open(cluster.addr, hello(1)).await;
        let mut inbound = response.unwrap();
        let welcome = inbound.message().await.unwrap().unwrap();
        assert!(
            matches!(welcome.kind, Some(coordinator_message::Kind::Welcome(_))),
            "case {i}"
        );
        let Some(coordinator_message::Kind::Step(step)) =
            inbound.message().await.unwrap().unwrap().kind
        else {
            panic!("case {i}: expected a Step")
        };
        assert_eq!(
            step.shards.len(),
            2,
            "case {i}: the only worker gets both shards"
        );
        let mut result = pb::ShardResult {
            step_id: step.step_id,
            shard_id: 0,
            sample_count: 5,
            gradients: vec![0; 95_440].into(),
            ..Default::default()
        };
        corrupt(&mut result);
        tx.send(pb::WorkerMessage {
            kind: Some(worker_message::Kind::Result(result)),
        })
        .await
        .unwrap();
        if !want.is_empty() {
            let status = loop {
                match inbound.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("case {i} ({name}): stream ended without a status"),
                    Err(status) => break status,
                }
            };
            assert_eq!(status.code(), Code::InvalidArgument, "case {i} ({name})");
            assert!(
                status.message().contains(want),
                "case {i} ({name}): {}",
                status.message()
            );
        }
        // The raw client goes away, as a real worker does once refused.
        drop((inbound, tx));
        cluster.add_worker("honest");
        let (summary, _) = cluster.finish(LIMIT).await.unwrap();
        let summary = summary.unwrap_or_else(|e| panic!("case {i} ({name}): {e}"));
        assert!(
            bits(&summary.network) == bits(&reference),
            "case {i} ({name}): a bad result leaked into the weights"
        );
    }
}

/// A message over the 64 MiB limit is refused by the decoder, not buffered
/// and not applied; the run still finishes exactly with an honest worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_rejected() {
    let mut reference = plan().initial_network();
    train(
        &mut reference,
        &fixture_data(),
        &plan(),
        common::trainer::Quiet,
    );
    let mut cluster = Cluster::start(config(), fixture_data(), 0).await.unwrap();
    let (tx, response) = open(cluster.addr, hello(1)).await;
    let mut inbound = response.unwrap();
    let _welcome = inbound.message().await.unwrap().unwrap();
    let _step = inbound.message().await.unwrap().unwrap();
    let huge = pb::ShardResult {
        step_id: 0,
        shard_id: 0,
        sample_count: 5,
        gradients: vec![0; (64 << 20) + 1].into(),
        ..Default::default()
    };
    tx.send(pb::WorkerMessage {
        kind: Some(worker_message::Kind::Result(huge)),
    })
    .await
    .unwrap();
    let status = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    drop((inbound, tx));
    cluster.add_worker("honest");
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    assert!(bits(&summary.unwrap().network) == bits(&reference));
}
