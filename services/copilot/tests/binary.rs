//! The `copilot` binary as a user runs it: `copilot up` against a NATS server and a database of
//! the test's own, its printed instructions followed to the letter, and `copilot tenants create`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use copilot::local::{EphemeralNats, ScratchDatabase, local_admin_url};

fn copilot(
    nats: &EphemeralNats,
    db: &ScratchDatabase,
    data_dir: &std::path::Path,
    port: u16,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_copilot"));
    cmd.env("NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("COPILOT_LISTEN", format!("127.0.0.1:{port}"))
        .env("COPILOT_DATA_DIR", data_dir)
        .env("COPILOT_LOG_FORMAT", "text")
        .env_remove("COPILOT_JWT_SECRET");
    cmd
}

/// Runs a one-shot command; fails the test with its stderr unless it succeeds.
fn succeeds(cmd: &mut Command) -> std::process::Output {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The value printed after `label` on a banner line.
fn field<'a>(banner: &'a str, label: &str) -> &'a str {
    banner
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the banner has no {label:?} line:\n{banner}"))
}

/// The number of `items` a page at `url` lists, polled until it is `expected` (or 5 s passed).
async fn items_within_5s(http: &reqwest::Client, url: &str, jwt: &str, expected: usize) -> usize {
    let mut seen = 0;
    for _ in 0..100 {
        let page: serde_json::Value = http
            .get(url)
            .bearer_auth(jwt)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen = page["items"].as_array().map_or(0, Vec::len);
        if seen == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

#[tokio::test]
async fn copilot_up_prints_working_instructions_and_tenants_create_prints_json() {
    let nats = EphemeralNats::start().await.unwrap();
    let db = ScratchDatabase::create(&local_admin_url(), "copilot_bin")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut up = copilot(&nats, &db, data_dir.path(), port)
        .arg("up")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut banner = String::new();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let started = Instant::now();
    while !banner.contains("/v1/incidents -H") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no banner in 60 s:\n{banner}"
        );
        let line = lines
            .next()
            .expect("copilot up stopped before printing its banner")
            .unwrap();
        banner.push_str(&line);
        banner.push('\n');
    }
    let url = field(&banner, "Alertmanager webhook").to_owned();
    let token = field(&banner, "webhook token").to_owned();
    let jwt = field(&banner, "admin JWT (30 days)").to_owned();
    let http = reqwest::Client::new();
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/alertmanager-v4-firing-1alert-alerta.json"
    ))
    .unwrap();

    let accepted = http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let signals_url = format!("http://127.0.0.1:{port}/v1/signals");
    let seen = items_within_5s(&http, &signals_url, &jwt, 1).await;
    assert_eq!(
        seen, 1,
        "the alert sent as the banner says is readable with the printed JWT"
    );
    assert!(
        banner.contains(&format!("credentials: {token}")),
        "the Alertmanager block carries the token"
    );
    assert!(banner.contains(&format!("curl -sS http://127.0.0.1:{port}/v1/incidents")));
    let incidents_url = format!("http://127.0.0.1:{port}/v1/incidents");
    let incidents = items_within_5s(&http, &incidents_url, &jwt, 1).await;
    assert_eq!(
        incidents, 1,
        "the alert opened an incident, listed as the banner says"
    );

    let created = succeeds(
        copilot(&nats, &db, data_dir.path(), port).args(["tenants", "create", "acme", "--json"]),
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(created["tenant"], "acme");
    assert!(
        created["webhook_token"]
            .as_str()
            .unwrap()
            .starts_with("cpw_")
    );

    let again = copilot(&nats, &db, data_dir.path(), port)
        .args(["tenants", "create", "acme"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let status = up.wait().unwrap();
    assert!(
        status.success(),
        "copilot up exits cleanly on Ctrl-C: {status}"
    );
}

/// A real HTTP server standing in for an OTLP collector: keeps every body POSTed to /v1/traces.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, bodies)
}

#[tokio::test]
async fn logs_into_a_pipe_are_json_lines_when_no_format_is_asked_for() {
    let nats = EphemeralNats::start().await.unwrap();
    let db = ScratchDatabase::create(&local_admin_url(), "copilot_bin")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let mut up = copilot(&nats, &db, data_dir.path(), free_port())
        .arg("up")
        .env_remove("COPILOT_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let first = BufReader::new(up.stderr.take().unwrap())
        .lines()
        .next()
        .expect("copilot up logged nothing")
        .unwrap();
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    up.wait().unwrap();

    let line: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("not a JSON line ({e}): {first}"));
    assert!(line["level"].is_string(), "{first}");
    assert!(line["message"].is_string(), "{first}");
}

#[tokio::test]
async fn with_an_otlp_endpoint_set_spans_of_a_webhooks_trace_are_exported() {
    let (endpoint, bodies) = collector().await;
    let nats = EphemeralNats::start().await.unwrap();
    let db = ScratchDatabase::create(&local_admin_url(), "copilot_bin")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut up = copilot(&nats, &db, data_dir.path(), port)
        .arg("up")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let mut token = None;
    while token.is_none() {
        let line = lines
            .next()
            .expect("copilot up printed its banner")
            .unwrap();
        token = line
            .trim_start()
            .strip_prefix("webhook token")
            .map(|t| t.trim().to_owned());
    }
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/alertmanager-v4-firing-2alerts-oncall.json"
    ))
    .unwrap();
    let accepted = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/webhooks/alertmanager"))
        .bearer_auth(token.as_deref().unwrap_or_default())
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);

    // Spans are protobuf: the trace id appears as its 16 raw bytes.
    let raw: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    let mut exported = 0;
    for _ in 0..100 {
        exported = bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.windows(16).any(|w| w == raw.as_slice()))
            .count();
        if exported > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    up.wait().unwrap();
    assert!(
        exported > 0,
        "no span of the webhook's trace reached the collector"
    );
}

#[tokio::test]
async fn every_worker_run_alone_answers_health_and_metrics() {
    let nats = EphemeralNats::start().await.unwrap();
    let db = ScratchDatabase::create(&local_admin_url(), "copilot_bin")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    for setup in [&["migrate"][..], &["streams", "apply"][..]] {
        let done = copilot(&nats, &db, data_dir.path(), 0)
            .args(setup)
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    let http = reqwest::Client::new();
    for worker in ["projector", "correlator", "hypothesis"] {
        let port = free_port();
        let mut process = copilot(&nats, &db, data_dir.path(), port)
            .arg(worker)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut metrics = String::new();
        for _ in 0..100 {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
            {
                metrics = r.text().await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        Command::new("kill")
            .args(["-INT", &process.id().to_string()])
            .status()
            .unwrap();
        let exit = process.wait().unwrap();
        assert!(
            metrics.contains("http_requests_in_flight"),
            "{worker} serves no /metrics"
        );
        assert_eq!(ready, 200, "{worker} is not ready");
        assert!(exit.success(), "{worker} did not exit cleanly on Ctrl-C");
    }
}

/// Posts one Alertmanager fixture to a gateway with a webhook token; the status it answers.
async fn post_alert(http: &reqwest::Client, port: u16, token: &str) -> u16 {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/alertmanager-v4-firing-1alert-alerta.json"
    ))
    .unwrap();
    http.post(format!("http://127.0.0.1:{port}/v1/webhooks/alertmanager"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_token_revoked_from_the_cli_is_refused_by_a_gateway_in_another_process_within_a_second() {
    // Arrange: a gateway process of its own, and a tenant created by another process.
    let nats = EphemeralNats::start().await.unwrap();
    let db = ScratchDatabase::create(&local_admin_url(), "copilot_bin")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let created = succeeds(
        copilot(&nats, &db, data_dir.path(), 0)
            .env("COPILOT_JWT_SECRET", "s".repeat(32))
            .args(["tenants", "create", "acme", "--json"]),
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let token = created["webhook_token"].as_str().unwrap().to_owned();
    let token_id = created["token_id"].as_str().unwrap().to_owned();
    let port = free_port();
    let mut gateway = copilot(&nats, &db, data_dir.path(), port)
        .arg("gateway")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut before = 0;
    for _ in 0..100 {
        before = post_alert(&http, port, &token).await;
        if before != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Act: revoke it with the CLI (which returns once the projector has recorded it).
    let revoked = copilot(&nats, &db, data_dir.path(), 0)
        .args(["webhook-token", "revoke", "--tenant", "acme", &token_id])
        .output()
        .unwrap();
    let revoked_at = Instant::now();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let mut after = 0;
    while revoked_at.elapsed() < Duration::from_secs(5) {
        after = post_alert(&http, port, &token).await;
        if after == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = revoked_at.elapsed();
    Command::new("kill")
        .args(["-INT", &gateway.id().to_string()])
        .status()
        .unwrap();
    gateway.wait().unwrap();

    // Assert
    assert_eq!(before, 202, "the token worked before");
    assert_eq!(
        after, 401,
        "the other process's gateway refuses the revoked token"
    );
    // One second of token cache, plus the requests' own time on a loaded machine.
    assert!(
        took < Duration::from_millis(1500),
        "refused only after {took:?}"
    );
    eprintln!("revocation reached the other process's gateway in {took:?}");
}

/// A task's state as its own events say, read from the stream.
async fn task_state(
    js: &async_nats::jetstream::Context,
    id: uuid::Uuid,
) -> copilot_commands::tasks::Task {
    copilot_commands::load_task(js, "acme", id)
        .await
        .unwrap()
        .expect("the task exists")
        .0
}

#[tokio::test]
async fn a_worker_process_killed_mid_task_loses_it_to_another_worker_after_the_lease() {
    use copilot_commands::tasks::TaskStatus;

    // Arrange: a tenant, a 2 s lease, a worker process running a 3 s task.
    let nats = EphemeralNats::start().await.unwrap();
    let db = ScratchDatabase::create(&local_admin_url(), "copilot_bin")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let secret = "a-jwt-secret-of-the-tests-own-32-bytes";
    let run = |args: &[&str]| {
        succeeds(
            copilot(&nats, &db, data_dir.path(), free_port())
                .env("COPILOT_JWT_SECRET", secret)
                .args(args),
        );
    };
    run(&["migrate"]);
    run(&["tenants", "create", "acme"]);
    let worker = || {
        copilot(&nats, &db, data_dir.path(), free_port())
            .args([
                "worker",
                "--tenant",
                "acme",
                "--kind",
                "echo",
                "--capacity",
                "1",
            ])
            .env("COPILOT_TASK_LEASE_SECS", "2")
            .env("COPILOT_JWT_SECRET", secret)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut first = worker();
    let task = copilot_commands::NewTask {
        kind: "echo".into(),
        input: serde_json::json!({"sleep_ms": 3000}),
        priority: 5,
        timeout_secs: 60,
        max_attempts: 3,
        incident_id: None,
    };
    let id = copilot_commands::create_task(&js, "acme", "tester", task, Default::default())
        .await
        .unwrap();
    let started = Instant::now();
    let holder = loop {
        let task = task_state(&js, id).await;
        if task.status == TaskStatus::Running {
            break task.worker.expect("a running task has its worker");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first worker never claimed the task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Act: SIGKILL mid-task (no drain, no goodbye), and a second worker.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = worker();
    let started = Instant::now();
    let done = loop {
        let task = task_state(&js, id).await;
        if task.status.is_final() {
            break task;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the task never finished on the second worker: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Command::new("kill")
        .args(["-INT", &second.id().to_string()])
        .status()
        .unwrap();
    let stopped = second.wait().unwrap();

    // Assert: the second attempt succeeded, the first's lease expiry is its reason.
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 2, "{done:?}");
    assert_eq!(done.reasons.len(), 1, "{done:?}");
    assert!(
        done.reasons[0].contains(&format!("lease of worker {holder}")),
        "{:?}",
        done.reasons
    );
    assert!(
        stopped.success(),
        "the second worker drains on Ctrl-C: {stopped}"
    );
}
