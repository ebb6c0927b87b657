//! Authentication and health on a real in-process cluster: with a token set,
//! workers without it or with a wrong one are refused with UNAUTHENTICATED
//! (and do not retry); the right one trains. Health needs no token.

use std::time::Duration;

use common::auth::Token;
use coordinator::Config;
use integration_tests::{fixture_data, plan_for, test_config, worker_config, Cluster};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use worker::{SessionError, WorkerConfig, WorkerError};

const LIMIT: Duration = Duration::from_secs(120);

fn config(token: &str) -> Config {
    let plan = plan_for(1, 2, 1);
    Config {
        token: Some(Token::new(token).unwrap()),
        ..test_config(plan, 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_unauthenticated_and_right_token_trains() {
    let mut cluster = Cluster::start(config("right-token"), fixture_data(), 0)
        .await
        .unwrap();

    // Health answers without a token: SERVING while the run accepts workers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: "ddp.v1.Trainer".into(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);

    for (i, token) in [None, Some("wrong-token")].into_iter().enumerate() {
        let config = WorkerConfig {
            token: token.map(|t| Token::new(t).unwrap()),
            ..worker_config(cluster.addr, "intruder")
        };
        let index = cluster.add_worker_config(config);
        match cluster.worker_exit(index, LIMIT).await.unwrap() {
            Err(WorkerError::Refused(SessionError::Status(s))) => {
                assert_eq!(s.code(), tonic::Code::Unauthenticated, "case {i}: {s:?}");
                assert!(
                    !s.message().contains("right-token"),
                    "case {i}: the secret leaked into the status"
                );
            }
            other => panic!("case {i}: expected UNAUTHENTICATED, got {other:?}"),
        }
    }
    cluster.add_worker_config(WorkerConfig {
        token: Some(Token::new("right-token").unwrap()),
        ..worker_config(cluster.addr, "member")
    });
    let (summary, workers) = cluster.finish(LIMIT).await.unwrap();
    assert_eq!(summary.unwrap().reports.len(), 1);
    assert!(workers.iter().all(Result::is_ok), "{workers:?}");
}
