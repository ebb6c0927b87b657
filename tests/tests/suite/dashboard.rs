//! The dashboard, `/metrics` and `--trace` on a real in-process cluster
//! (real tonic and HTTP on 127.0.0.1): a headless Chromium watching the
//! page, `promtool` reading the metrics, the trace's spans, and the access
//! rule beyond loopback. Every wait polls the real condition against a
//! deadline that only marks a failure.

use std::net::SocketAddr;
use std::time::Duration;

use common::auth::Token;
use coordinator::app::dashboard::{self, Access, Dashboard, RunInfo};
use coordinator::app::trace::TraceOptions;
use coordinator::Config;
use integration_tests::http::{read_stream, request};
use integration_tests::webdriver::{find_browser, Browser};
use integration_tests::{fixture_data, plan_for, skip, test_config, Cluster, TempDir};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);
const HTTP: Duration = Duration::from_secs(30);

fn run_info(config: &Config) -> RunInfo {
    let p = &config.plan;
    RunInfo {
        sizes: p.sizes.clone(),
        epochs: p.epochs,
        batch: p.batch_size,
        shards: p.shards,
        workers: config.workers,
        eta: p.eta,
        cost: p.cost,
        kernels: p.kernels,
        net: p.net.as_ref().map(|n| n.to_string()),
    }
}

fn start(
    config: &Config,
    listener: Option<std::net::TcpListener>,
    access: Access,
    trace: Option<TraceOptions>,
) -> Dashboard {
    Dashboard::start(dashboard::Options {
        listener,
        access,
        hosts: Vec::new(),
        trace,
        run: run_info(config),
    })
    .expect("the dashboard starts")
}

fn loopback() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// GET `path` from the dashboard at `addr` on a blocking thread.
async fn get(
    addr: SocketAddr,
    path: &str,
    headers: Vec<(String, String)>,
) -> integration_tests::http::Response {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        request(addr, "GET", &path, &h, None, HTTP)
    })
    .await
    .expect("the request thread")
    .expect("the request")
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_the_run() {
    let config = test_config(plan_for(2, 2, 3), 2);
    let d = start(&config, Some(loopback()), Access::Open, None);
    let addr = d.local_addr().unwrap();
    let cluster = Cluster::start_watched(config, fixture_data(), 2, &d)
        .await
        .unwrap();
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    let stats = summary.unwrap().stats;
    d.finish("finished").await;

    let text = get(addr, "/metrics", vec![]).await;
    assert_eq!(text.status, 200);
    assert!(text
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let body = text.text();
    // 1,000 training samples in batches of 10, two epochs. The counters
    // match the pool's own (a busy machine may see late answers from the
    // slower holder of a backed-up shard, so they need not be 0).
    for line in [
        "ddp_steps_total 200".to_string(),
        "ddp_samples_total 2000".to_string(),
        "ddp_step_seconds_count 200".to_string(),
        "ddp_epoch_test_accuracy{epoch=\"1\"}".to_string(),
        format!(
            "ddp_results_ignored_total{{reason=\"late\"}} {}\n",
            stats.late
        ),
        format!(
            "ddp_results_ignored_total{{reason=\"duplicate\"}} {}\n",
            stats.duplicate
        ),
        format!("ddp_shards_reassigned_total {}\n", stats.reassigned),
    ] {
        assert!(body.contains(&line), "{line} missing from\n{body}");
    }
    let om = get(
        addr,
        "/metrics",
        vec![(
            "Accept".into(),
            "application/openmetrics-text; version=1.0.0".into(),
        )],
    )
    .await;
    assert!(om.text().ends_with("# EOF\n"), "{}", om.text());

    let Some(promtool) = which("promtool") else {
        return skip(
            "metrics_pass_promtool_and_count_the_run",
            "promtool is not installed (Debian: prometheus)",
        );
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Spans per track must nest: each starts after the enclosing one starts and
/// ends before it ends, or starts after it ended.
fn assert_well_nested(events: &[Value]) {
    let mut tracks: std::collections::BTreeMap<u64, Vec<(u64, u64, String)>> = Default::default();
    for e in events.iter().filter(|e| e["ph"] == "X") {
        let ts = e["ts"].as_u64().unwrap();
        let dur = e["dur"].as_u64().unwrap();
        tracks.entry(e["tid"].as_u64().unwrap()).or_default().push((
            ts,
            ts + dur,
            e["name"].as_str().unwrap().to_string(),
        ));
    }
    for (tid, mut spans) in tracks {
        // Parents first: by start, then the longer one.
        spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut open: Vec<(u64, u64, String)> = Vec::new();
        for s in spans {
            while open
                .last()
                .is_some_and(|p| s.0 >= p.1 && !(s.0 == p.1 && s.1 == p.1))
            {
                open.pop();
            }
            if let Some(p) = open.last() {
                assert!(
                    s.1 <= p.1,
                    "track {tid}: {s:?} overlaps {p:?} without nesting"
                );
            }
            open.push(s);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_spans_nest_and_reassigned_shards_show_on_the_worker_that_computed_them() {
    let dir = TempDir::new("trace");
    let path = dir.join("trace.json");
    let config = Config {
        shard_timeout: Duration::from_secs(30),
        // Only reassignment here: on a busy machine a backup copy could
        // put a second compute span on a shard (stragglers.rs tests those).
        backup: coordinator::pool::backup::BackupPolicy::OFF,
        ..test_config(plan_for(1, 4, 5), 3)
    };
    let d = start(
        &config,
        None,
        Access::Open,
        Some(TraceOptions {
            path: path.clone(),
            steps: 0..60,
        }),
    );
    let mut cluster = Cluster::start_watched(config, fixture_data(), 2, &d)
        .await
        .unwrap();
    cluster.add_worker_exiting_at("dies-at-30", 30);
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    assert!(
        summary.unwrap().stats.reassigned > 0,
        "the fault moved no shard"
    );
    d.finish("finished").await;

    let trace: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    assert_well_nested(events);
    let names: std::collections::BTreeMap<u64, String> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            (
                e["tid"].as_u64().unwrap(),
                e["args"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(names.len(), 4, "coordinator and three workers: {names:?}");
    let steps: std::collections::BTreeSet<u64> = events
        .iter()
        .filter(|e| {
            e["tid"] == 0 && e["ph"] == "X" && e["name"].as_str().unwrap().starts_with("step ")
        })
        .map(|e| e["args"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (0..60).collect(),
        "one coordinator span per traced step"
    );
    let moved: Vec<&Value> = events.iter().filter(|e| e["name"] == "reassign").collect();
    assert!(!moved.is_empty(), "no reassignment in the trace");
    for r in moved {
        let (step, shard) = (&r["args"]["step"], &r["args"]["shard"]);
        let from = r["args"]["from"].as_str().unwrap();
        let computed: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["name"] == "compute" && &e["args"]["step"] == step && &e["args"]["shard"] == shard
            })
            .collect();
        assert_eq!(
            computed.len(),
            1,
            "shard {shard} of step {step} computed once: {computed:?}"
        );
        let c = computed[0];
        let on = &names[&c["tid"].as_u64().unwrap()];
        assert!(
            !on.starts_with(&format!("{from}:")),
            "shard {shard} of step {step} shows on {on}, which lost it"
        );
        assert_eq!(c["args"]["reassigned_from"].as_str(), Some(from));
        assert!(
            names[&(from.trim_start_matches("worker ").parse::<u64>().unwrap() + 1)]
                .ends_with("dies-at-30"),
            "{from} is not the worker that died"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_dashboard_needs_the_token_and_never_shows_it() {
    let secret = "s3cret-dashboard-token";
    let token = Token::new(secret).unwrap();
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    assert!(matches!(
        dashboard::access_rule(any, None, false),
        Err(dashboard::DashboardError::NeedsToken(_))
    ));
    assert!(matches!(
        dashboard::access_rule(any, None, true),
        Ok((Access::Open, None))
    ));
    assert!(matches!(
        dashboard::access_rule("127.0.0.1:0".parse().unwrap(), None, false),
        Ok((Access::Open, None))
    ));
    let (access, code) = dashboard::access_rule(any, Some(&token), false).unwrap();
    let code = code.expect("a one-time login code");
    assert!(!code.contains(secret));

    let config = test_config(plan_for(1, 1, 3), 1);
    let listener = std::net::TcpListener::bind(any).unwrap();
    let port = listener.local_addr().unwrap().port();
    let d = start(&config, Some(listener), access, None);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let cluster = Cluster::start_watched(config, fixture_data(), 1, &d)
        .await
        .unwrap();
    cluster.finish(LIMIT).await.unwrap().0.unwrap();
    d.finish("finished").await;

    let bearer = vec![("Authorization".to_string(), format!("Bearer {secret}"))];
    for path in ["/", "/metrics", "/state.json", "/learned.json", "/events"] {
        assert_eq!(
            get(addr, path, vec![]).await.status,
            401,
            "{path} without the token"
        );
        let wrong = vec![("Authorization".to_string(), "Bearer nope".to_string())];
        assert_eq!(
            get(addr, path, wrong).await.status,
            401,
            "{path} with a wrong token"
        );
    }
    for path in ["/", "/metrics", "/state.json", "/learned.json", "/events"] {
        let r = get(addr, path, bearer.clone()).await;
        assert_eq!(r.status, 200, "{path} with the token");
        assert!(!r.text().contains(secret), "{path} shows the token");
    }
    // Read-only.
    let post =
        tokio::task::spawn_blocking(move || request(addr, "POST", "/", &[], Some("{}"), HTTP))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(post.status, 405);

    // The one-time link: a wrong code fails, the right one sets a cookie once.
    assert_eq!(get(addr, "/login?code=0000", vec![]).await.status, 401);
    let login = get(addr, &format!("/login?code={code}"), vec![]).await;
    assert_eq!(login.status, 303);
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(!cookie.contains(secret), "the cookie carries the token");
    assert!(login.header("set-cookie").unwrap().contains("HttpOnly"));
    let page = get(addr, "/", vec![("Cookie".into(), cookie.clone())]).await;
    assert_eq!(page.status, 200);
    assert!(!page.text().contains(secret));
    let events = tokio::task::spawn_blocking(move || {
        read_stream(
            addr,
            "/events",
            &[("Cookie", &cookie)],
            |s| s.contains("event: end"),
            HTTP,
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        events.contains("event: state") && events.contains("event: end"),
        "{events}"
    );
    assert!(!events.contains(secret));
    assert_eq!(
        get(addr, &format!("/login?code={code}"), vec![])
            .await
            .status,
        401,
        "the code works once"
    );
}

/// What the test reads off the page, in one WebDriver round trip.
const PAGE_FACTS: &str = r##"
  const rows = [...document.querySelectorAll("#workers tr")].map(r => [r.cells[0].textContent, r.dataset.state]);
  return {
    points: Number(document.getElementById("acc").dataset.points || 0),
    rows: rows,
    tiles: Number(document.getElementById("tiles").dataset.tiles || 0),
    side: Number(document.getElementById("tiles").dataset.side || 0),
    title: document.getElementById("tiles-title").textContent,
    run: document.getElementById("run").textContent,
    confusion: Number(document.getElementById("confusion").dataset.drawn || 0),
    misses: document.querySelectorAll("#misses canvas").length,
    phase: document.getElementById("phase").textContent,
    ended: document.body.dataset.ended === "1",
  };"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_the_run_learn_and_a_worker_die() {
    let Some((chromium, driver)) = find_browser() else {
        return skip(
            "a_browser_sees_the_run_learn_and_a_worker_die",
            "chromium and chromedriver are not installed (Debian: chromium chromium-driver)",
        );
    };
    const EPOCHS: usize = 12;
    let config = test_config(plan_for(EPOCHS, 3, 7), 3);
    let d = start(&config, Some(loopback()), Access::Open, None);
    let url = format!("http://{}/", d.local_addr().unwrap());
    // The page opens while the run waits for its workers, so it sees every epoch.
    let browser = tokio::task::spawn_blocking(move || {
        let b = Browser::start(&chromium, &driver, 1400, 2000)?;
        b.open(&url)?;
        b.wait_for(
            "return document.getElementById('phase').textContent",
            LIMIT,
            |v| v.as_str().is_some_and(|s| s.starts_with("waiting")),
        )?;
        anyhow::Ok(b)
    })
    .await
    .unwrap()
    .unwrap();
    let mut cluster = Cluster::start_watched(config, fixture_data(), 2, &d)
        .await
        .unwrap();
    // 100 steps per epoch: this worker dies in epoch 6.
    cluster.add_worker_exiting_at("doomed", 650);
    let watching = tokio::task::spawn_blocking(move || {
        let seen = browser.wait_for(PAGE_FACTS, LIMIT, |v| v["ended"] == Value::Bool(true))?;
        anyhow::Ok((browser, seen))
    });
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    summary.unwrap();
    d.finish("finished").await;
    let (browser, seen) = watching.await.unwrap().unwrap();
    let last = seen.last().unwrap();

    // The curves gained points as epochs finished, not all at the end.
    let points: Vec<u64> = seen.iter().map(|v| v["points"].as_u64().unwrap()).collect();
    assert!(
        points.windows(2).all(|w| w[0] <= w[1]),
        "points went back: {points:?}"
    );
    let mut distinct = points.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 4,
        "the accuracy curve grew in too few steps: {distinct:?}"
    );
    assert_eq!(last["points"], EPOCHS as u64, "{last}");
    // The worker table: three workers; the doomed one was computing, then lost.
    let rows = last["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let state_of = |v: &Value| -> Option<String> {
        v["rows"]
            .as_array()?
            .iter()
            .find(|r| r[0].as_str().unwrap_or("").ends_with("doomed"))
            .map(|r| r[1].as_str().unwrap().to_string())
    };
    let states: Vec<String> = seen.iter().filter_map(state_of).collect();
    assert!(
        states.iter().any(|s| s == "computing" || s == "joined"),
        "the doomed worker never showed as live: {states:?}"
    );
    assert_eq!(state_of(last).as_deref(), Some("lost"), "{states:?}");
    assert!(
        rows.iter().filter(|r| r[1] != "lost").count() == 2,
        "the others stay: {rows:?}"
    );
    // What the network learned is drawn: 30 tiles, the 200 test images in the matrix.
    assert_eq!(last["tiles"], 30, "{last}");
    assert_eq!(last["confusion"], 200, "{last}");
    assert!(last["misses"].as_u64().unwrap() > 0, "{last}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    tokio::task::spawn_blocking(move || browser.screenshot(&shot))
        .await
        .unwrap()
        .unwrap();
}

/// A conv net's page: the first layer's 5×5 filters are the tiles, and the
/// run line names the net.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_a_conv_nets_filters() {
    let Some((chromium, driver)) = find_browser() else {
        return skip(
            "a_browser_sees_a_conv_nets_filters",
            "chromium and chromedriver are not installed (Debian: chromium chromium-driver)",
        );
    };
    let plan = common::plan::TrainingPlan {
        net: Some(coordinator::config::parse_net("conv6x5:relu,pool2,fc10,softmax10").unwrap()),
        sizes: vec![784, 10],
        eta: 0.1,
        ..plan_for(2, 2, 7)
    };
    let config = test_config(plan, 2);
    let d = start(&config, Some(loopback()), Access::Open, None);
    let url = format!("http://{}/", d.local_addr().unwrap());
    let browser = tokio::task::spawn_blocking(move || {
        let b = Browser::start(&chromium, &driver, 1400, 2000)?;
        b.open(&url)?;
        anyhow::Ok(b)
    })
    .await
    .unwrap()
    .unwrap();
    let cluster = Cluster::start_watched(config, fixture_data(), 2, &d)
        .await
        .unwrap();
    let watching = tokio::task::spawn_blocking(move || {
        browser.wait_for(PAGE_FACTS, LIMIT, |v| v["ended"] == Value::Bool(true))
    });
    let (summary, _) = cluster.finish(LIMIT).await.unwrap();
    summary.unwrap();
    d.finish("finished").await;
    let seen = watching.await.unwrap().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(
        (last["tiles"].as_u64(), last["side"].as_u64()),
        (Some(6), Some(5)),
        "{last}"
    );
    assert!(
        last["title"].as_str().unwrap().contains("filters as 5×5"),
        "{last}"
    );
    assert!(
        last["run"].as_str().unwrap().contains("conv6x5:relu,pool2"),
        "{last}"
    );
}

/// Against DNS rebinding: over the wire, every path (the page, its
/// documents, `/metrics`) answers only the dashboard's own `Host` names;
/// any other, or none, gets 421 and nothing of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_dashboards_own_host_names_are_served() {
    let config = test_config(plan_for(1, 2, 3), 2);
    let d = start(&config, Some(loopback()), Access::Open, None);
    let addr = d.local_addr().unwrap();
    let port = addr.port();
    let own = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".into(),
    ];
    let others = [
        format!("evil.example:{port}"),
        "evil.example".into(),
        format!("localhost:{}", port.wrapping_add(1)),
        format!("127.0.0.2:{port}"),
        format!("localhost.evil.example:{port}"),
        String::new(), // no Host at all
    ];
    for path in ["/", "/state.json", "/learned.json", "/metrics"] {
        for host in own.iter().chain(&others) {
            let r = get(addr, path, vec![("Host".into(), host.clone())]).await;
            let want = if own.contains(host) { 200 } else { 421 };
            assert_eq!(r.status, want, "{path} with Host {host:?}: {}", r.text());
            if want == 421 {
                assert!(!r.text().contains("ddp_"), "{path} with Host {host:?}");
            }
        }
    }
    d.finish("finished").await;
}

/// Event streams are capped ([`coordinator::fds::Budget`]): with the cap's
/// worth open and never read, one more gets 503 at once, and the rest of
/// the dashboard still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_the_rest_still_answers() {
    use std::io::{Read, Write};
    let config = test_config(plan_for(1, 2, 3), 2);
    let d = start(&config, Some(loopback()), Access::Open, None);
    let addr = d.local_addr().unwrap();
    let cap = coordinator::fds::Budget::current().subscribers;
    let open: Vec<std::net::TcpStream> = tokio::task::spawn_blocking(move || {
        (0..cap)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let head = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                s.write_all(head.as_bytes()).unwrap();
                // Its status line, so the stream is counted before the next one.
                let mut first = [0u8; 12];
                s.read_exact(&mut first).unwrap();
                assert_eq!(&first, b"HTTP/1.1 200");
                s
            })
            .collect()
    })
    .await
    .unwrap();
    let over = get(addr, "/events", vec![]).await;
    assert_eq!(over.status, 503, "{}", over.text());
    assert_eq!(get(addr, "/metrics", vec![]).await.status, 200);
    drop(open);
    d.finish("finished").await;
}
