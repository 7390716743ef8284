//! Webhook tokens served from the JetStream key-value bucket (issue 24): the tokens projection's
//! entries and their replay, intake through a real Postgres stop and start, readiness.

use std::{collections::BTreeMap, path::Path, time::Duration};

use chrono::{TimeZone as _, Utc};
use copilot::app::{App, Services};
use copilot_e2e::{NatsServer, wait_until};
use copilot_events::{
    Envelope, Headers, TenantResumed, TenantSuspended, WebhookTokenIssued, WebhookTokenRevoked,
    subjects,
};
use copilot_runtime::tokens::{self, TenantEntry, TokenEntry};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

async fn append<P: copilot_events::EventPayload>(
    js: &async_nats::jetstream::Context,
    subject: String,
    tenant: &str,
    payload: &P,
    at: chrono::DateTime<Utc>,
) -> u64 {
    let envelope = Envelope::new(tenant, payload, at, Headers::default());
    let message = async_nats::jetstream::message::PublishMessage::build()
        .payload(envelope.to_bytes().into())
        .headers(copilot_runtime::nats::event_headers(&envelope))
        .message_id(envelope.id.to_string());
    copilot_runtime::append::append(js, subject, message)
        .await
        .unwrap()
        .sequence
}

/// Every entry of the bucket, by key, without revisions.
async fn entries(js: &async_nats::jetstream::Context) -> BTreeMap<String, serde_json::Value> {
    let store = tokens::bucket(js).await.unwrap();
    let mut keys: Vec<String> = store
        .keys()
        .await
        .unwrap()
        .map(|k| k.unwrap())
        .collect()
        .await;
    keys.sort();
    let mut out = BTreeMap::new();
    for key in keys {
        let value = store.get(&key).await.unwrap().unwrap();
        out.insert(key, serde_json::from_slice(&value).unwrap());
    }
    out
}

async fn wait_for_checkpoint(js: &async_nats::jetstream::Context, seq: u64) {
    wait_until(Duration::from_secs(10), || async {
        match tokens::bucket(js).await {
            Ok(store) => tokens::checkpoint(&store).await.unwrap_or(0) >= seq,
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test]
async fn the_tokens_projection_records_issue_revocations_and_suspension_and_a_replay_gives_the_same_entries()
 {
    // Arrange: NATS alone, and TENANTS events for two tokens and a tenant.
    copilot_runtime::telemetry::init_for_tests("info");
    let nats = NatsServer::start().await.unwrap();
    let client = copilot_runtime::nats::connect(&nats.url(), "test")
        .await
        .unwrap();
    let js = copilot_runtime::nats::jetstream(client, Duration::from_secs(5));
    copilot_runtime::nats::provision(&js).await.unwrap();
    let t0 = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
    let (now_id, later_id, kept_id) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    let issue = |id, hash: &str| WebhookTokenIssued {
        token_id: id,
        token_hash: hash.to_owned(),
        prefix: "cpt_".into(),
        issued_by: "test".into(),
    };
    let tokens_subject = subjects::tenant_tokens("acme");
    append(
        &js,
        tokens_subject.clone(),
        "acme",
        &issue(now_id, "aa"),
        t0,
    )
    .await;
    append(
        &js,
        tokens_subject.clone(),
        "acme",
        &issue(later_id, "bb"),
        t0,
    )
    .await;
    append(
        &js,
        tokens_subject.clone(),
        "acme",
        &issue(kept_id, "cc"),
        t0,
    )
    .await;
    let revoke = |id, effective_at| WebhookTokenRevoked {
        token_id: id,
        revoked_by: "test".into(),
        effective_at,
    };
    let revoked_now_at = t0 + chrono::Duration::seconds(10);
    append(
        &js,
        tokens_subject.clone(),
        "acme",
        &revoke(now_id, None),
        revoked_now_at,
    )
    .await;
    let later = t0 + chrono::Duration::days(1);
    append(
        &js,
        tokens_subject.clone(),
        "acme",
        &revoke(later_id, Some(later)),
        t0,
    )
    .await;
    // Another tenant cannot revoke acme's token.
    append(
        &js,
        subjects::tenant_tokens("globex"),
        "globex",
        &revoke(kept_id, None),
        t0,
    )
    .await;
    let suspend = TenantSuspended {
        reason: "unpaid".into(),
        suspended_by: "platform:ops".into(),
    };
    append(&js, subjects::tenant("acme"), "acme", &suspend, t0).await;
    append(&js, subjects::tenant("globex"), "globex", &suspend, t0).await;
    let last = append(
        &js,
        subjects::tenant("globex"),
        "globex",
        &TenantResumed {
            resumed_by: "platform:ops".into(),
        },
        t0,
    )
    .await;

    // Act: run the projection until it has applied everything.
    let shutdown = CancellationToken::new();
    let projection = tokio::spawn(tokens::serve(js.clone(), shutdown.clone()));
    wait_for_checkpoint(&js, last).await;
    let live = entries(&js).await;

    // Assert: the entries say what the events did.
    let token = |hash: &str| -> TokenEntry {
        serde_json::from_value(live[&subjects::token_key(hash)].clone()).unwrap()
    };
    let tenant = |slug: &str| -> TenantEntry {
        serde_json::from_value(live[&subjects::tenant_status_key(slug)].clone()).unwrap()
    };
    assert_eq!(token("aa").tenant, "acme");
    assert_eq!(token("aa").token_id, now_id);
    assert_eq!(token("aa").revoked_at, Some(revoked_now_at));
    assert!(token("aa").revoked(Utc::now().max(revoked_now_at)));
    assert_eq!(token("bb").revoked_at, Some(later));
    assert!(!token("bb").revoked(t0));
    assert_eq!(
        token("cc").revoked_at,
        None,
        "globex cannot revoke acme's token"
    );
    assert!(tenant("acme").suspended);
    assert!(!tenant("globex").suspended);
    assert_eq!(
        live[subjects::TOKENS_CHECKPOINT_KEY],
        serde_json::json!(last)
    );

    // Act: a rebuild: stop the projection, delete the bucket, start it again; it replays
    // TENANTS into a new bucket.
    shutdown.cancel();
    projection.await.unwrap().unwrap();
    js.delete_stream(format!("KV_{}", subjects::TOKENS_BUCKET))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let projection = tokio::spawn(tokens::serve(js.clone(), shutdown.clone()));
    wait_for_checkpoint(&js, last).await;
    let rebuilt = entries(&js).await;
    shutdown.cancel();
    projection.await.unwrap().unwrap();

    // Assert: the same entries.
    assert_eq!(rebuilt, live);
}

/// A Postgres cluster of the test's own, on a free port, that the test can stop and start.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    pg_ctl: std::path::PathBuf,
}

fn pg_bin(program: &str) -> std::path::PathBuf {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin").join(program))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop().expect("initdb and pg_ctl")
}

fn as_postgres(program: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

impl PrivatePostgres {
    fn create() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let out = as_postgres(&pg_bin("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            dir,
            port,
            pg_ctl: pg_bin("pg_ctl"),
        };
        pg.start();
        pg
    }

    fn ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let out = as_postgres(&self.pg_ctl)
            .args(args)
            .arg("-D")
            .arg(&data)
            .args([
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "-o",
                &format!(
                    "-c listen_addresses=127.0.0.1 -p {} -k {}",
                    self.port,
                    self.dir.path().display()
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        self.ctl(&["start", "-w"]);
    }

    fn stop(&self) {
        self.ctl(&["stop", "-w", "-m", "fast"]);
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.pg_ctl)
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .output();
    }
}

fn settings(nats: &NatsServer, database_url: String) -> copilot_runtime::Settings {
    let mut settings = copilot_runtime::Settings::defaults();
    settings.nats.url = Some(nats.url());
    settings.database.url = Some(database_url);
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.jwt.secret = Some(copilot_e2e::JWT_SECRET.to_owned().into());
    settings.nats.publish_timeout_ms = 1000;
    settings.database.max_connections = 8;
    settings.hypothesis.settle_ms = 3_600_000;
    settings.limits.webhook_rate_per_sec = 0;
    settings.limits.api_rate_per_sec = 0;
    settings.limits.api_user_rate_per_sec = 0;
    settings.limits.auth_failures_per_min = 0;
    settings.tenancy.secrets_key = Some(copilot_runtime::secrets::generate_key("test").into());
    settings
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: Vec<u8>) -> u16 {
    http.post(format!("{url}/v1/webhooks/alertmanager"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn readyz(http: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let response = http.get(format!("{url}/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn with_postgres_stopped_webhooks_get_202_and_every_one_is_projected_once_it_returns() {
    // Arrange: `copilot up` against a Postgres of the test's own, and a tenant.
    copilot_runtime::telemetry::init_for_tests("info");
    let pg = PrivatePostgres::create();
    copilot_store::ensure_database(&pg.url("postgres"), "copilot")
        .await
        .unwrap();
    let nats = NatsServer::start().await.unwrap();
    let app = App::start(settings(&nats, pg.url("copilot")), Services::All)
        .await
        .unwrap();
    let url = app.url();
    let created = copilot::cli::create_tenant(&app.ctx, "acme", "acme", "test")
        .await
        .unwrap();
    let token = created.webhook_token;
    let http = reqwest::Client::new();
    assert_eq!(readyz(&http, &url).await.0, 200);

    // Act: a steady sender (one new alert every 20 ms, counting its 202s) while Postgres is
    // stopped for three seconds and started again.
    let stop_sending = CancellationToken::new();
    let sender = tokio::spawn({
        let (http, url, token, stop) = (
            http.clone(),
            url.clone(),
            token.clone(),
            stop_sending.clone(),
        );
        async move {
            let mut accepted = Vec::new();
            let mut refused = Vec::new();
            let mut i = 0u32;
            while !stop.is_cancelled() {
                let body = copilot_e2e::alertmanager_payload(
                    "firing",
                    &[(
                        &format!("Load{i}"),
                        "api",
                        "critical",
                        "2030-01-01T00:00:00Z",
                    )],
                );
                match post(&http, &url, &token, body).await {
                    202 => accepted.push(i),
                    status => refused.push((i, status)),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (accepted, refused)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.stop();
    let mut down_202s = 0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Probes for two seconds of their own, however long the stop took; readiness is asked
    // after them, still inside the outage (its Postgres check may wait for a connect timeout).
    let probing = std::time::Instant::now();
    while probing.elapsed() < Duration::from_secs(2) {
        let body = copilot_e2e::alertmanager_payload(
            "firing",
            &[("Probe", "api", "critical", "2030-01-01T00:00:00Z")],
        );
        let status = post(&http, &url, &token, body).await;
        if status == 202 {
            down_202s += 1;
        } else {
            eprintln!("probe answered {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (down_status, down_body) = readyz(&http, &url).await;
    pg.start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_sending.cancel();
    let (accepted, refused) = sender.await.unwrap();

    // Assert: intake answered 202 throughout, readyz named Postgres while it was down, and once
    // it is back every accepted alert is one row, none counted twice.
    assert!(refused.is_empty(), "webhooks refused: {refused:?}");
    assert!(
        down_202s > 0,
        "no probe was accepted while Postgres was down"
    );
    assert_eq!(down_status, 503, "{down_body}");
    assert_eq!(
        down_body["checks"]["postgres"], "unreachable",
        "{down_body}"
    );
    assert_eq!(down_body["checks"]["nats"], "ok", "{down_body}");
    let expected = accepted.len() as i64 + 1; // the probe alert is one signal, notified again
    wait_until(Duration::from_secs(30), || async {
        app.ctx
            .store
            .signal_totals("acme")
            .await
            .ok()
            .map(|(rows, _)| rows)
            == Some(expected)
    })
    .await;
    let (rows, notifications) = app.ctx.store.signal_totals("acme").await.unwrap();
    assert_eq!(rows, expected);
    assert_eq!(
        notifications, rows,
        "a probe notification repeats only the same alert, within the duplicate window"
    );
    assert!(
        accepted.len() > 50,
        "only {} webhooks were sent",
        accepted.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_gateway_alone_is_ready_and_takes_webhooks_with_nats_alone() {
    // Arrange: NATS, a tenant whose token is in the bucket, and no Postgres at all.
    copilot_runtime::telemetry::init_for_tests("info");
    let nats = NatsServer::start().await.unwrap();
    let client = copilot_runtime::nats::connect(&nats.url(), "test")
        .await
        .unwrap();
    let js = copilot_runtime::nats::jetstream(client, Duration::from_secs(5));
    copilot_runtime::nats::provision(&js).await.unwrap();
    let token = "cpt_gateway_alone_token";
    append(
        &js,
        subjects::tenant_tokens("acme"),
        "acme",
        &WebhookTokenIssued {
            token_id: uuid::Uuid::new_v4(),
            token_hash: copilot_runtime::auth::hash_token(token),
            prefix: "cpt_".into(),
            issued_by: "test".into(),
        },
        Utc::now(),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = settings(&nats, "postgres://postgres@127.0.0.1:1/nothing".into());
    settings.http.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(copilot_gateway::run(settings, shutdown.clone()));
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // Act: wait for readiness, then send a webhook.
    wait_until(Duration::from_secs(10), || async {
        match http.get(format!("{url}/readyz")).send().await {
            Ok(r) => r.status() == 200,
            Err(_) => false,
        }
    })
    .await;
    let (_, body) = readyz(&http, &url).await;
    let status = post(
        &http,
        &url,
        token,
        copilot_e2e::alertmanager_payload(
            "firing",
            &[("Alone", "api", "critical", "2030-01-01T00:00:00Z")],
        ),
    )
    .await;
    let wrong = post(&http, &url, "cpt_unknown", b"{}".to_vec()).await;
    shutdown.cancel();
    gateway.await.unwrap().unwrap();

    // Assert: ready with Postgres unreachable (and said so), the webhook appended.
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["postgres"], "unreachable", "{body}");
    assert_eq!(status, 202);
    assert_eq!(wrong, 401);
    assert_eq!(
        copilot_runtime::nats::stream_state(&js, subjects::SIGNALS)
            .await
            .unwrap()
            .messages,
        1
    );
}
