//! Malformed and hostile messages from a raw gRPC client: each gets the exact
//! status naming the problem, and nothing it sent is ever applied.

use std::time::Duration;

use common::pb::{self, coordinator_message, worker_message};
use common::plan::TrainingPlan;
use coordinator::Config;
use integration_tests::{
    assert_bits_eq, bits, fixture_data, open_stream, plan_for, reference_network, result_message,
    test_config, Cluster,
};
use tokio::sync::mpsc;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

fn plan() -> TrainingPlan {
    plan_for(1, 2, 4)
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
            ..Default::default()
        })),
    }
}

/// Opens a stream as a raw client, sending `first`.
async fn open(
    addr: std::net::SocketAddr,
    first: pb::WorkerMessage,
) -> (
    mpsc::Sender<pb::WorkerMessage>,
    Result<tonic::Streaming<pb::CoordinatorMessage>, tonic::Status>,
) {
    open_stream(addr, None, first).await
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
    let (_tx, response) = open(cluster.addr, result_message(result)).await;
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
    let reference = reference();
    // (what is wrong, how to make it so, what the refusal says)
    type Case = (&'static str, fn(&mut pb::ShardResult), &'static str);
    let cases: [Case; 6] = [
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
        (
            "shard id beyond the step's shards",
            |r| r.shard_id = 7,
            "step 0 has 2 shards; shard 7 does not exist",
        ),
        (
            "a step never issued",
            |r| r.step_id = 1,
            "step 1 has not been issued (the step in flight is 0)",
        ),
        (
            "a step id near 2^64",
            |r| r.step_id = u64::MAX - 1,
            "step 18446744073709551614 has not been issued",
        ),
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
        tx.send(result_message(result)).await.unwrap();
        let status = final_status(&mut inbound).await;
        assert_eq!(status.code(), Code::InvalidArgument, "case {i} ({name})");
        assert!(
            status.message().contains(want),
            "case {i} ({name}): {}",
            status.message()
        );
        // The raw client goes away, as a real worker does once refused.
        drop((inbound, tx));
        cluster.add_worker("honest");
        let (summary, _) = cluster.finish(LIMIT).await.unwrap();
        let summary = summary.unwrap_or_else(|e| panic!("case {i} ({name}): {e}"));
        assert_bits_eq(
            &summary.network,
            &bits(&reference),
            &format!("case {i} ({name}): a bad result leaked into the weights"),
        );
    }
}

/// Reads a stream to its end; the status it ended with.
async fn final_status(inbound: &mut tonic::Streaming<pb::CoordinatorMessage>) -> tonic::Status {
    loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    }
}

fn reference() -> common::Network {
    reference_network(&plan())
}

/// A message one byte over the largest a worker can legitimately send (a
/// ShardResult of this model) is refused by the decoder, not buffered and
/// not applied; the run still finishes exactly with an honest worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_rejected() {
    let mut cluster = Cluster::start(config(), fixture_data(), 0).await.unwrap();
    let (tx, response) = open(cluster.addr, hello(1)).await;
    let mut inbound = response.unwrap();
    let _welcome = inbound.message().await.unwrap().unwrap();
    let _step = inbound.message().await.unwrap().unwrap();
    let limit = common::wire::max_worker_message_bytes(&plan().sizes);
    let mut huge = pb::ShardResult {
        step_id: 0,
        shard_id: 0,
        sample_count: 5,
        gradients: vec![0; limit].into(),
        ..Default::default()
    };
    // Grow it until its encoding is exactly one byte over the limit.
    let over = |r: &pb::ShardResult| prost::Message::encoded_len(&result_message(r.clone()));
    let excess = over(&huge) - limit;
    huge.gradients = vec![0; limit - excess + 1].into();
    assert_eq!(over(&huge), limit + 1);
    tx.send(result_message(huge)).await.unwrap();
    let status = final_status(&mut inbound).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    drop((inbound, tx));
    cluster.add_worker("honest");
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    assert!(bits(&summary.unwrap().network) == bits(&reference()));
}

/// Only a shard's owner may answer it. A peer holding the token, joined as a
/// worker, answers the other worker's shard (with forged gradients, and with
/// the honest ones): it is refused with PERMISSION_DENIED and dropped, its
/// own shard is recomputed, and the model is the reference's, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_for_someone_elses_shard_is_refused() {
    for forged in [true, false] {
        let mut cluster = Cluster::start(test_config(plan(), 2), fixture_data(), 0)
            .await
            .unwrap();
        let (tx, response) = open(cluster.addr, hello(1)).await;
        let mut inbound = response.unwrap();
        let _welcome = inbound.message().await.unwrap().unwrap();
        cluster.add_worker("honest");
        let Some(coordinator_message::Kind::Step(step)) =
            inbound.message().await.unwrap().unwrap().kind
        else {
            panic!("expected a Step")
        };
        assert_eq!(step.shards.len(), 1, "two workers, two shards: one each");
        let mine = step.shards[0].shard_id;
        let theirs = 1 - mine;
        // The other worker's shard has 5 samples too (10 split in two).
        let gradients = if forged {
            vec![0; 95_440].into()
        } else {
            let mut net = common::Network::zeros(&plan().sizes);
            common::wire::decode_network_into(&step.weights, &mut net).unwrap();
            let (_, samples) = common::wire::decode_shard(&step.shards[0]).unwrap();
            common::wire::encode_gradients(&common::shard::quadratic_gradient(&net, &samples))
        };
        let result = pb::ShardResult {
            step_id: step.step_id,
            shard_id: theirs,
            sample_count: 5,
            gradients,
            ..Default::default()
        };
        tx.send(result_message(result)).await.unwrap();
        let status = final_status(&mut inbound).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status.message(),
            format!("step 0 shard {theirs} is not assigned to this worker")
        );
        drop((inbound, tx));
        let (summary, _) = cluster.finish(LIMIT).await.unwrap();
        let summary = summary.unwrap();
        assert_bits_eq(
            &summary.network,
            &bits(&reference()),
            &format!("forged={forged}: a result for another's shard changed the model"),
        );
        assert_eq!(summary.stats.refused, 1);
    }
}

/// A WorkerMessage as raw fields: `hello` as itself, and `result` with the
/// wrong wire type (a varint where a message belongs), which cannot decode.
#[derive(Clone, PartialEq, prost::Message)]
struct RawWorkerMessage {
    #[prost(message, optional, tag = "1")]
    hello: Option<pb::Hello>,
    #[prost(uint64, tag = "2")]
    result: u64,
}

/// Bytes that do not decode as a WorkerMessage get INVALID_ARGUMENT, as the
/// first message and after the handshake (tonic itself says INTERNAL, which
/// a worker would take as worth retrying).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_messages_get_invalid_argument() {
    let cluster = Cluster::start(config(), fixture_data(), 0).await.unwrap();
    let garbage = RawWorkerMessage {
        hello: None,
        result: 7,
    };
    let (_tx, response) = open_stream(cluster.addr, None, garbage.clone()).await;
    let first = response.unwrap_err();

    let hello = RawWorkerMessage {
        hello: Some(pb::Hello {
            name: "raw".into(),
            protocol_version: 1,
            ..Default::default()
        }),
        result: 0,
    };
    let (tx, response) = open_stream(cluster.addr, None, hello).await;
    let mut inbound = response.unwrap();
    let welcome = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        welcome.kind,
        Some(coordinator_message::Kind::Welcome(_))
    ));
    tx.send(garbage).await.unwrap();
    let later = final_status(&mut inbound).await;
    for status in [first, later] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with("malformed message:"),
            "{status:?}"
        );
    }
}

/// A name that would forge a log line, or flood it, is refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_could_forge_log_lines_are_refused() {
    let cluster = Cluster::start(config(), fixture_data(), 0).await.unwrap();
    let cases = [
        (
            "w\nERROR forged line".to_string(),
            "control character U+000A at byte 1",
        ),
        (
            "\u{1b}[31mred".to_string(),
            "control character U+001B at byte 0",
        ),
        ("x".repeat(129), "129 bytes long"),
    ];
    for (name, want) in cases {
        let (_tx, response) = open(
            cluster.addr,
            pb::WorkerMessage {
                kind: Some(worker_message::Kind::Hello(pb::Hello {
                    name,
                    protocol_version: 1,
                    ..Default::default()
                })),
            },
        )
        .await;
        let status = response.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(want), "{status:?}");
    }
}

/// Connections that never start their handshake do not hold the server:
/// when the run ends, they are closed at once, not after a grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_when_the_run_ends() {
    use tokio::io::AsyncReadExt;
    let mut cluster = Cluster::start(config(), fixture_data(), 0).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(cluster.addr).await.unwrap());
    }
    cluster.add_worker("honest");
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    summary.unwrap();
    for (i, mut conn) in idle.into_iter().enumerate() {
        // The server's own SETTINGS frame may be there to read first; then
        // the socket must be closed. The timeout bounds a hang; it is not a
        // timing assertion: the server has stopped, so a closed socket reads
        // its end at once.
        let closed = async {
            let mut buf = [0u8; 256];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap_or_else(|_| panic!("connection {i} still open after the run ended"));
    }
}

/// What a hostile result carries besides its gradients.
#[derive(Clone, Copy)]
enum Extra {
    None,
    FirstError,
    Factors,
}

/// A chapter-6 run: the Welcome names the net; results shaped for another
/// net, conv gradients with a NaN, or with a first layer's error (which
/// nets never send) or factors of the wrong size are refused with
/// INVALID_ARGUMENT naming what is wrong,
/// a result the size of the default network's with OUT_OF_RANGE by the
/// decoder, and nothing is applied: the honest worker's run equals `--local`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_results_for_a_net_are_refused_naming_the_tensor() {
    let plan = TrainingPlan {
        net: Some(coordinator::config::parse_net("conv3x5:relu,pool2,fc10,softmax10").unwrap()),
        sizes: vec![784, 10],
        eta: 0.1,
        ..plan()
    };
    let params = plan.parameter_count();
    let nan_at = 7;
    // Shards of 5 samples list fc10 (10 × 432 weights) for factors: a
    // result that sends them leaves that matrix out of its gradients.
    let fc_weights = 10 * 432;
    let cases: [(&str, Vec<f32>, Extra, Code, &str); 5] = [
        (
            "another net's",
            vec![0.0; 1000],
            Extra::None,
            Code::InvalidArgument,
            "gradients: 4000 bytes, expected",
        ),
        // The decoder's limit follows the net's size: the default network's
        // 95,440 bytes are refused before they are buffered.
        (
            "the default network's",
            vec![0.0; 23_860],
            Extra::None,
            Code::OutOfRange,
            "the limit is",
        ),
        (
            "NaN",
            (0..params)
                .map(|i| if i == nan_at { f32::NAN } else { 0.0 })
                .collect(),
            Extra::None,
            Code::InvalidArgument,
            "gradients: value 7 is NaN",
        ),
        (
            "first error",
            vec![0.0; 100],
            Extra::FirstError,
            Code::InvalidArgument,
            "first layer's error",
        ),
        (
            "misshapen factors",
            vec![0.0; params - fc_weights],
            Extra::Factors,
            Code::InvalidArgument,
            "factors: 12 bytes, expected",
        ),
    ];
    for (what, values, extra, code, says) in cases {
        let config = Config {
            wait_timeout: LIMIT,
            ..test_config(plan.clone(), 2)
        };
        let mut cluster = Cluster::start(config, fixture_data(), 0).await.unwrap();
        let (tx, response) = open(cluster.addr, hello(1)).await;
        let mut inbound = response.unwrap();
        let Some(coordinator_message::Kind::Welcome(welcome)) =
            inbound.message().await.unwrap().unwrap().kind
        else {
            panic!("expected a Welcome")
        };
        assert_eq!(welcome.net, "conv3x5:relu,pool2,fc10,softmax10");
        cluster.add_worker("honest");
        let Some(coordinator_message::Kind::Step(step)) =
            inbound.message().await.unwrap().unwrap().kind
        else {
            panic!("expected a Step")
        };
        let shard = &step.shards[0];
        assert_eq!(
            shard.factor_layers,
            vec![1],
            "fc10 (layer 1) is asked for its factors"
        );
        let result = pb::ShardResult {
            step_id: step.step_id,
            shard_id: shard.shard_id,
            sample_count: shard.labels.len() as u32,
            gradients: values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
            first_error: match extra {
                Extra::FirstError => vec![0u8; 4 * 30].into(),
                _ => Default::default(),
            },
            factors: match extra {
                Extra::Factors => vec![0u8; 12].into(),
                _ => Default::default(),
            },
            ..Default::default()
        };
        tx.send(result_message(result)).await.unwrap();
        let status = final_status(&mut inbound).await;
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(says),
            "{what}: {}",
            status.message()
        );
        drop((inbound, tx));
        let (summary, workers) = cluster.finish(LIMIT).await.unwrap();
        assert!(workers.iter().all(|w| w.is_ok()), "{what}: {workers:?}");
        let summary = summary.unwrap();
        let mut local = plan.initial_network();
        common::local::train_in_process(
            &mut local,
            &fixture_data(),
            &plan,
            common::progress::Quiet,
        );
        assert!(
            bits(&summary.network) == bits(&local),
            "{what}: the bad result was applied"
        );
    }
}
