//! Standard gRPC operations on a real in-process cluster: health follows
//! the run (coordinator and worker), and server reflection lists the
//! services with no .proto at hand (v1 and v1alpha).

use std::sync::Arc;
use std::time::Duration;

use common::dataset::Mnist;

use coordinator::app::health::health;
use integration_tests::{fixture_data, plan_for, test_config, worker_config};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use worker::WorkerConfig;

const LIMIT: Duration = Duration::from_secs(120);

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Opens a Watch on `service` and waits for its first status, so that the
/// caller knows the watch is in place before anything changes.
async fn watch(
    channel: Channel,
    service: &str,
) -> (
    tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    ServingStatus,
) {
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first status");
    (stream, first.status())
}

/// The statuses of an open Watch, in order and without repeats, from
/// `first` until the stream ends or `last` is seen after a SERVING. The
/// first SERVING is also announced on `serving`, so the test can hold the
/// run until the watcher has seen it (a watch keeps only the newest status,
/// so a run that ended first could hide it).
async fn statuses(
    mut stream: tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    first: ServingStatus,
    last: ServingStatus,
    serving: oneshot::Sender<()>,
) -> Vec<ServingStatus> {
    let mut seen = vec![first];
    let mut serving = Some(serving);
    while let Ok(Some(msg)) = stream.message().await {
        let status = msg.status();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == ServingStatus::Serving {
            if let Some(tx) = serving.take() {
                let _ = tx.send(());
            }
        }
        if status == last && seen.contains(&ServingStatus::Serving) {
            break;
        }
    }
    seen
}

macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().expect("one response");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                names.sort();
                names
            }
            other => panic!("expected a service list, got {other:?}"),
        }
    }};
}

/// Opens a [`watch`] on `service` at `addr` and follows it on a task with
/// [`statuses`] up to a NOT_SERVING after SERVING; returns the task and the
/// receiver told of the first SERVING.
async fn follow(
    addr: std::net::SocketAddr,
    service: &str,
) -> (
    tokio::task::JoinHandle<Vec<ServingStatus>>,
    oneshot::Receiver<()>,
) {
    let (stream, first) = watch(channel(addr).await, service).await;
    let (serving, seen_serving) = oneshot::channel();
    let task = tokio::spawn(statuses(stream, first, ServingStatus::NotServing, serving));
    (task, seen_serving)
}

/// [`coordinator::serve`] of `config` on `listener` with the data `loading`
/// gives: no shutdown but the run's end, no progress output, no observer.
async fn serve(
    listener: TcpListener,
    config: coordinator::Config,
    loading: impl std::future::Future<Output = Result<Arc<Mnist>, coordinator::DataLoadError>>,
) -> Result<coordinator::RunSummary, coordinator::CoordinatorError> {
    coordinator::serve(
        listener,
        config,
        loading,
        std::future::pending(),
        common::progress::Quiet,
        coordinator::pool::Observer::none(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_run_and_reflection_lists_the_services() {
    let plan = plan_for(2, 1, 1);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release_data, data_ready) = oneshot::channel::<()>();
    let loading = async move {
        data_ready.await?;
        Ok(fixture_data())
    };
    // Two workers: the run waits for the second, which joins only once
    // the first one's watcher has seen it SERVING.
    let coordinator = tokio::spawn(serve(listener, test_config(plan, 2), loading));
    let url = format!("http://{addr}");
    let timeout = Duration::from_secs(10);

    // While the data loads: alive (""), not ready for workers.
    assert_eq!(
        health(&url, "", timeout, None).await.unwrap(),
        (true, "SERVING".to_string())
    );
    assert_eq!(
        health(&url, coordinator::TRAINER_SERVICE, timeout, None)
            .await
            .unwrap(),
        (false, "NOT_SERVING".to_string())
    );
    let err = health(&url, "no.such.Service", timeout, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NotFound"), "{err}");

    // Reflection, both versions, with no token and no .proto.
    let v1 = list_services!(v1, channel(addr).await);
    let v1alpha = list_services!(v1alpha, channel(addr).await);
    let ours = ["ddp.v1.Trainer", "grpc.health.v1.Health"];
    assert_eq!(
        v1,
        [&ours[..], &["grpc.reflection.v1.ServerReflection"]].concat()
    );
    assert_eq!(
        v1alpha,
        [&ours[..], &["grpc.reflection.v1alpha.ServerReflection"]].concat()
    );

    // A worker with a health service: NOT_SERVING until it joins.
    let (reporter, health_addr) = worker::serve_health("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let worker_url = format!("http://{health_addr}");
    assert_eq!(
        health(&worker_url, "", timeout, None).await.unwrap().1,
        "NOT_SERVING"
    );
    let (coordinator_watch, seen_coordinator_serving) =
        follow(addr, coordinator::TRAINER_SERVICE).await;
    let (worker_watch, seen_worker_serving) = follow(health_addr, "").await;
    release_data.send(()).unwrap();
    // Ready once the data is in; the run cannot end before a worker joins.
    seen_coordinator_serving.await.unwrap();
    let config = WorkerConfig {
        health: Some(reporter),
        ..worker_config(addr, "probed")
    };
    let worker = tokio::spawn(worker::run(config, std::future::pending()));
    // Joined, so SERVING; the run starts only when a second worker joins.
    seen_worker_serving.await.unwrap();
    let second = tokio::spawn(worker::run(
        worker_config(addr, "second"),
        std::future::pending(),
    ));

    let summary = tokio::time::timeout(LIMIT, coordinator)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.reports.len(), 2);
    for w in [worker, second] {
        tokio::time::timeout(LIMIT, w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    use ServingStatus::{NotServing, Serving};
    let seen = tokio::time::timeout(LIMIT, coordinator_watch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, [NotServing, Serving, NotServing], "coordinator");
    let seen = tokio::time::timeout(LIMIT, worker_watch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, [NotServing, Serving, NotServing], "worker");
}

#[tokio::test]
async fn data_that_fails_to_load_stops_the_server_with_the_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plan = plan_for(1, 1, 1);
    let failing = async { Err::<Arc<Mnist>, _>("disk on fire".into()) };
    let result = serve(listener, test_config(plan, 1), failing).await;
    let err = result.unwrap_err().to_string();
    assert_eq!(err, "loading the data: disk on fire");
}
