//! TLS between workers and the coordinator, with a certificate made here:
//! a worker trusting it trains over https; a plaintext worker and a worker
//! trusting another CA cannot get in.

use std::time::Duration;

use coordinator::config::TlsPem;
use coordinator::Config;
use integration_tests::{fixture_data, plan_for, test_config, worker_config, Cluster};
use worker::{WorkerConfig, WorkerError};

const LIMIT: Duration = Duration::from_secs(120);

fn self_signed() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (certified.cert.pem(), certified.key_pair.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_train_over_tls_and_untrusting_or_plaintext_workers_cannot_connect() {
    let (cert, key) = self_signed();
    let plan = plan_for(1, 2, 1);
    let tls = TlsPem {
        cert: cert.clone().into_bytes(),
        key: key.into_bytes(),
    };
    let config = Config {
        tls: Some(tls),
        ..test_config(plan, 1)
    };
    let mut cluster = Cluster::start(config, fixture_data(), 0).await.unwrap();
    let https = format!("https://127.0.0.1:{}", cluster.addr.port());
    let quick = |c: WorkerConfig| WorkerConfig {
        retry_for: Duration::from_millis(500),
        ..c
    };

    let plaintext = cluster.add_worker_config(quick(worker_config(cluster.addr, "plaintext")));
    let (other_ca, _) = self_signed();
    let stranger = cluster.add_worker_config(quick(WorkerConfig {
        endpoint: https.clone(),
        tls_ca: Some(other_ca.into_bytes()),
        tls_domain: Some("localhost".into()),
        ..worker_config(cluster.addr, "stranger")
    }));
    // Each is refused for the right reason: a plaintext client reaches the
    // server but cannot speak HTTP/2 to it (the RPC fails; how hyper words
    // that varies), and a client that does not trust the certificate
    // rejects it, naming it.
    for (name, index, why) in [
        ("plaintext", plaintext, "coordinator said "),
        ("stranger", stranger, "invalid peer certificate"),
    ] {
        let exit = cluster.worker_exit(index, LIMIT).await.unwrap();
        match exit {
            Err(WorkerError::Unreachable { last_error, .. }) => {
                assert!(last_error.contains(why), "{name}: {last_error}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    cluster.add_worker_config(WorkerConfig {
        endpoint: https,
        tls_ca: Some(cert.into_bytes()),
        tls_domain: Some("localhost".into()),
        ..worker_config(cluster.addr, "trusted")
    });
    let (summary, workers) = cluster.finish(LIMIT).await.unwrap();
    assert_eq!(summary.unwrap().reports.len(), 1);
    assert!(workers.iter().all(Result::is_ok), "{workers:?}");
}
