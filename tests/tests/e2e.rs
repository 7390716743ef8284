//! End-to-end: webhooks through the gateway into JetStream, folded by the projector into
//! Postgres, read back through the API, against a real nats-server and Postgres per test.

use std::time::Duration;

use copilot::app::Services;
use copilot_e2e::{TestApp, alertmanager_payload, fixture, wait_until};
use copilot_events::subjects;
use copilot_projector::Projection;
use copilot_store::ReadModel;
use serde_json::Value;

const FIXTURES: [(&str, &str, usize); 7] = [
    (
        "alertmanager",
        "alertmanager-v4-firing-2alerts-oncall.json",
        2,
    ),
    (
        "alertmanager",
        "alertmanager-v4-firing-1alert-alerta.json",
        1,
    ),
    (
        "alertmanager",
        "alertmanager-v4-firing-1alert-minimal-msteams.json",
        1,
    ),
    (
        "alertmanager",
        "alertmanager-v3-legacy-numeric-groupkey-alerta.json",
        1,
    ),
    ("grafana", "grafana-v1-firing-1alert-alerting-test.json", 1),
    ("grafana", "grafana-v1-firing-1alert-grafana12-keep.json", 1),
    ("grafana", "grafana-v1-firing-2alerts-docs.json", 2),
];

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test]
async fn every_upstream_fixture_becomes_signal_rows_readable_through_the_api() {
    let t = TestApp::spawn().await;

    let mut expected = 0;
    for (source, name, alerts) in FIXTURES {
        let response = t
            .post_webhook(source, &t.acme.webhook_token, fixture(name))
            .await;
        assert_eq!(response.status(), 202, "{name}");
        assert_eq!(json(response).await["accepted"], alerts, "{name}");
        expected += alerts;
    }
    t.settle(Projection::Signals).await;

    let page = json(t.get("/v1/signals?limit=100", &t.acme.viewer_jwt).await).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), expected);
    let keep = items
        .iter()
        .find(|s| s["fingerprint"] == "c4edaaf9f9f839b0")
        .expect("grafana 12 alert");
    assert_eq!(keep["generator_url"], "https://grafana.example.com?orgId=1");
    assert_eq!(keep["source"], "grafana");
    assert_eq!(keep["values"]["B"], 22);
    let legacy = items
        .iter()
        .find(|s| s["group_key"] == "5615590933959184469")
        .expect("v3 alert");
    assert_eq!(legacy["severity"], "critical");
    assert_eq!(legacy["service"], "System");

    let one = json(
        t.get(
            &format!("/v1/signals/{}", legacy["id"].as_str().unwrap()),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    assert_eq!(
        one["raw"]["labels"]["instance"], "host2",
        "the raw alert is kept"
    );
}

#[tokio::test]
async fn a_resent_webhook_is_dropped_by_the_stream_and_makes_no_second_row() {
    let t = TestApp::spawn().await;
    let body = fixture("alertmanager-v4-firing-2alerts-oncall.json");

    let first = json(
        t.post_webhook("alertmanager", &t.acme.webhook_token, body.clone())
            .await,
    )
    .await;
    let before = t.stream_messages(subjects::SIGNALS).await;
    let second = json(
        t.post_webhook("alertmanager", &t.acme.webhook_token, body)
            .await,
    )
    .await;
    t.settle(Projection::Signals).await;

    assert_eq!(first["duplicates"], 0);
    assert_eq!(second["duplicates"], 2);
    assert_eq!(t.stream_messages(subjects::SIGNALS).await, before);
    assert_eq!(t.ctx().store.signal_totals("acme").await.unwrap(), (2, 2));
}

#[tokio::test]
async fn a_resolved_notification_updates_the_row_it_resolves() {
    let t = TestApp::spawn().await;
    let firing = fixture("alertmanager-v4-firing-2alerts-oncall.json");
    // No upstream resolved payload exists (see shared/fixtures/SOURCES.md): derive one from the
    // firing fixture by setting the top-level and per-alert status and a real endsAt.
    let mut resolved: Value = serde_json::from_slice(&firing).unwrap();
    resolved["status"] = "resolved".into();
    for alert in resolved["alerts"].as_array_mut().unwrap() {
        alert["status"] = "resolved".into();
        alert["endsAt"] = "2023-06-12T09:00:00Z".into();
    }

    t.post_webhook("alertmanager", &t.acme.webhook_token, firing)
        .await;
    let response = t
        .post_webhook(
            "alertmanager",
            &t.acme.webhook_token,
            serde_json::to_vec(&resolved).unwrap(),
        )
        .await;
    assert_eq!(response.status(), 202);
    t.settle(Projection::Signals).await;

    let page = json(t.get("/v1/signals", &t.acme.viewer_jwt).await).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "the resolve updates rows, it adds none");
    for item in items {
        assert_eq!(item["status"], "resolved");
        assert_eq!(item["ends_at"], "2023-06-12T09:00:00Z");
        assert_eq!(item["notification_count"], 2);
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_problem_body_and_appends_nothing() {
    let t = TestApp::spawn_with(Services::All, |s| s.http.max_body_bytes = 64 * 1024).await;
    let good = fixture("alertmanager-v4-firing-1alert-alerta.json");
    let revoked = copilot::cli::create_tenant(t.ctx(), "initech", "Initech", "test")
        .await
        .unwrap();
    t.revoke_webhook_token("initech", revoked.token_id).await;
    let before = t.stream_messages(subjects::SIGNALS).await;
    let url = format!("{}/v1/webhooks/alertmanager", t.url);
    let token = t.acme.webhook_token.as_str();
    let post = || t.http.post(&url);
    let huge = alertmanager_payload(
        "firing",
        &vec![("Big", "svc", "warning", "2026-01-01T00:00:00Z"); 1000],
    );

    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "malformed JSON",
            post()
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body("{\"alerts\": [}"),
            400,
        ),
        (
            "truncated JSON",
            post()
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(good[..good.len() / 2].to_vec()),
            400,
        ),
        (
            "wrong content type",
            post()
                .bearer_auth(token)
                .header("content-type", "text/plain")
                .body(good.clone()),
            415,
        ),
        (
            "no content type",
            post().bearer_auth(token).body(good.clone()),
            415,
        ),
        (
            "body over the limit",
            post()
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(huge),
            413,
        ),
        (
            "no token",
            post()
                .header("content-type", "application/json")
                .body(good.clone()),
            401,
        ),
        (
            "wrong token",
            post()
                .bearer_auth("cpw_not-a-token")
                .header("content-type", "application/json")
                .body(good.clone()),
            401,
        ),
        (
            "revoked token",
            post()
                .bearer_auth(&revoked.webhook_token)
                .header("content-type", "application/json")
                .body(good.clone()),
            401,
        ),
        (
            "basic auth naming another tenant",
            post()
                .basic_auth("globex", Some(token))
                .header("content-type", "application/json")
                .body(good.clone()),
            401,
        ),
        (
            "a Grafana payload on the Alertmanager route",
            post()
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(fixture("grafana-v1-firing-2alerts-docs.json")),
            422,
        ),
        (
            "no alerts",
            post()
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(r#"{"version":"4","alerts":[]}"#),
            422,
        ),
        (
            "alert without startsAt",
            post()
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(r#"{"version":"4","alerts":[{"labels":{"a":"b"}}]}"#),
            422,
        ),
        (
            "a NUL character in a label",
            post()
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(r#"{"version":"4","alerts":[{"labels":{"a":"x\u0000"},"startsAt":"2026-01-01T00:00:00Z"}]}"#),
            422,
        ),
    ];
    let count = cases.len();
    for (name, request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem = json(response).await;
        for field in ["type", "title", "detail"] {
            assert!(
                problem[field].is_string(),
                "{name}: problem body lacks {field}: {problem}"
            );
        }
    }

    assert_eq!(count, 13);
    assert_eq!(
        t.stream_messages(subjects::SIGNALS).await,
        before,
        "nothing was appended"
    );
    let ok = t
        .http
        .post(&url)
        .basic_auth("acme", Some(token))
        .header("content-type", "application/json")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok.status(),
        202,
        "basic auth with the tenant as user works and the service still serves"
    );
}

#[tokio::test]
async fn a_stopped_nats_server_yields_503_with_retry_after_and_service_resumes_after() {
    let mut t = TestApp::spawn().await;
    let body = fixture("alertmanager-v4-firing-1alert-alerta.json");

    t.nats.stop();
    let refused = t
        .post_webhook("alertmanager", &t.acme.webhook_token, body.clone())
        .await;

    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(t.get("/readyz", "").await.status(), 503);

    t.nats.restart().await.unwrap();
    let mut accepted = false;
    for _ in 0..100 {
        if t.post_webhook("alertmanager", &t.acme.webhook_token, body.clone())
            .await
            .status()
            == 202
        {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted,
        "the gateway takes webhooks again once NATS is back"
    );
    t.settle(Projection::Signals).await;
    assert_eq!(t.ctx().store.signal_totals("acme").await.unwrap(), (1, 1));
}

#[tokio::test]
async fn a_projector_killed_mid_batch_and_restarted_leaves_the_rows_of_a_clean_rebuild() {
    let t = TestApp::spawn_with(Services::HttpOnly, |s| s.projector.batch = 7).await;
    copilot_projector::catch_up(t.ctx(), Projection::Tenants, Duration::from_secs(10))
        .await
        .unwrap();
    let mut notifications = 0;
    for round in 0..3 {
        for batch in 0..20 {
            let alerts: Vec<(String, String)> = (0..10)
                .map(|i| (format!("Alert{batch}x{i}"), format!("svc{}", i % 4)))
                .collect();
            let alerts: Vec<(&str, &str, &str, &str)> = alerts
                .iter()
                .map(|(name, svc)| {
                    (
                        name.as_str(),
                        svc.as_str(),
                        "warning",
                        "2026-11-22T08:00:00Z",
                    )
                })
                .collect();
            let status = if round == 2 { "resolved" } else { "firing" };
            let mut body: Value =
                serde_json::from_slice(&alertmanager_payload(status, &alerts)).unwrap();
            if round == 1 {
                // A repeat of round 0 with another startsAt: new alert instances.
                for alert in body["alerts"].as_array_mut().unwrap() {
                    alert["startsAt"] = "2026-11-22T09:00:00Z".into();
                }
            }
            let response = t
                .post_webhook(
                    "alertmanager",
                    &t.acme.webhook_token,
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
            assert_eq!(response.status(), 202);
            notifications += 10;
        }
    }
    let target = t.stream_last_seq(subjects::SIGNALS).await;

    // Kill the projector up to three times while it is part way through.
    let mut kills_before_the_end = 0;
    for _ in 0..3 {
        let floor = t.ctx().store.read_checkpoint("signals").await.unwrap();
        if floor >= target {
            break;
        }
        let task = tokio::spawn(copilot_projector::serve(
            t.ctx().clone(),
            Default::default(),
        ));
        wait_until(Duration::from_secs(20), || async {
            t.ctx().store.read_checkpoint("signals").await.unwrap() > floor
        })
        .await;
        task.abort();
        let _ = task.await;
        if t.ctx().store.read_checkpoint("signals").await.unwrap() < target {
            kills_before_the_end += 1;
        }
    }
    assert!(kills_before_the_end >= 1, "at least one kill lands mid-run");
    let task = tokio::spawn(copilot_projector::serve(
        t.ctx().clone(),
        Default::default(),
    ));
    t.settle(Projection::Signals).await;
    task.abort();
    let _ = task.await;
    let live = t.ctx().store.checksum(ReadModel::Signals).await.unwrap();
    assert_eq!(
        t.ctx().store.signal_totals("acme").await.unwrap(),
        (400, notifications)
    );

    // A clean run: a fresh database rebuilt from the stream by an uninterrupted projector.
    let (_rebuilt_db, rebuilt) = copilot_e2e::rebuild_target(&t.nats).await;
    copilot_projector::catch_up(&rebuilt, Projection::Signals, Duration::from_secs(30))
        .await
        .unwrap();

    assert_eq!(
        rebuilt.store.checksum(ReadModel::Signals).await.unwrap(),
        live
    );
}

#[tokio::test]
async fn a_token_of_one_tenant_never_reads_another_tenants_signals() {
    let t = TestApp::spawn().await;
    t.post_webhook(
        "alertmanager",
        &t.globex.webhook_token,
        fixture("alertmanager-v4-firing-1alert-alerta.json"),
    )
    .await;
    t.settle(Projection::Signals).await;
    let globex_page = json(t.get("/v1/signals", &t.globex.viewer_jwt).await).await;
    let id = globex_page["items"][0]["id"]
        .as_str()
        .expect("globex sees its signal")
        .to_owned();

    let as_acme = t
        .get(&format!("/v1/signals/{id}"), &t.acme.viewer_jwt)
        .await;
    let acme_page = json(t.get("/v1/signals", &t.acme.viewer_jwt).await).await;

    assert_eq!(as_acme.status(), 404);
    assert_eq!(acme_page["items"].as_array().unwrap().len(), 0);
    assert_eq!(
        t.get(&format!("/v1/signals/{id}"), &t.globex.viewer_jwt)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_signal_list_filters_and_pages_newest_first() {
    let t = TestApp::spawn().await;
    let firing = alertmanager_payload(
        "firing",
        &[
            ("A", "checkout", "critical", "2026-11-22T01:00:00Z"),
            ("B", "checkout", "warning", "2026-11-22T02:00:00Z"),
            ("C", "payments", "critical", "2026-11-22T03:00:00Z"),
            ("D", "payments", "info", "2026-11-22T04:00:00Z"),
            ("E", "search", "critical", "2026-11-22T05:00:00Z"),
        ],
    );
    t.post_webhook("alertmanager", &t.acme.webhook_token, firing)
        .await;
    t.post_webhook(
        "alertmanager",
        &t.acme.webhook_token,
        alertmanager_payload(
            "resolved",
            &[("E", "search", "critical", "2026-11-22T05:00:00Z")],
        ),
    )
    .await;
    t.settle(Projection::Signals).await;
    let titles = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["labels"]["alertname"].as_str().unwrap().to_owned())
            .collect()
    };

    let first = json(t.get("/v1/signals?limit=2", &t.acme.viewer_jwt).await).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = json(
        t.get(
            &format!("/v1/signals?limit=2&cursor={cursor}"),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    let last = json(
        t.get(
            &format!(
                "/v1/signals?limit=2&cursor={}",
                second["next_cursor"].as_str().unwrap()
            ),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;

    assert_eq!(titles(&first), ["E", "D"]);
    assert_eq!(titles(&second), ["C", "B"]);
    assert_eq!(titles(&last), ["A"]);
    assert!(last.get("next_cursor").is_none());
    let q = |query: &str| {
        let path = format!("/v1/signals?{query}");
        let t = &t;
        async move { t.get(&path, &t.acme.viewer_jwt).await }
    };
    assert_eq!(
        titles(&json(q("severity=critical&status=firing").await).await),
        ["C", "A"]
    );
    assert_eq!(titles(&json(q("service=checkout").await).await), ["B", "A"]);
    assert_eq!(titles(&json(q("status=resolved").await).await), ["E"]);
    assert_eq!(
        titles(&json(q("since=2026-11-22T02:00:00Z&until=2026-11-22T04:00:00Z").await).await),
        ["C", "B"]
    );
    assert_eq!(
        titles(&json(q("source=grafana").await).await),
        Vec::<String>::new()
    );
    for bad in [
        "status=burning",
        "severity=huge",
        "limit=0",
        "limit=501",
        "cursor=abc",
        "since=yesterday",
        "tenant=globex",
    ] {
        let response = q(bad).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
}

#[tokio::test]
async fn the_read_api_refuses_missing_forged_and_expired_tokens() {
    let t = TestApp::spawn().await;
    let alice = t
        .ctx()
        .store
        .find_user(&mut t.ctx().store.begin().await.unwrap(), "acme", "alice")
        .await
        .unwrap()
        .unwrap();
    let forged = copilot_runtime::auth::Jwt::hs256(&[1u8; 32], "copilot", "copilot-api")
        .unwrap()
        .issue(
            "m",
            "acme",
            None,
            copilot_events::Role::Admin,
            Duration::from_secs(60),
        )
        .unwrap();
    let expired = t
        .app
        .as_ref()
        .unwrap()
        .jwt
        .issue(
            "alice",
            "acme",
            alice.incarnation(),
            copilot_events::Role::Admin,
            Duration::ZERO,
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;

    assert_eq!(
        t.http
            .get(format!("{}/v1/signals", t.url))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(t.get("/v1/signals", &forged).await.status(), 401);
    assert_eq!(t.get("/v1/signals", "not.a.jwt").await.status(), 401);
    let strict_expired = {
        // The API allows 30 s of clock skew, so an expired token is one from well before that.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({"sub":"m","tenant":"acme","role":"admin","iss":"copilot","aud":"copilot-api","iat":now-120,"exp":now-60});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(copilot_e2e::JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(t.get("/v1/signals", &strict_expired).await.status(), 401);
    assert_eq!(
        t.get("/v1/signals", &expired).await.status(),
        200,
        "within the leeway"
    );
}

#[tokio::test]
async fn a_poison_event_is_parked_and_the_events_behind_it_are_projected() {
    let t = TestApp::spawn().await;
    let js = &t.ctx().js;
    // Read before the poison is published: the projector may park it at once.
    let parked_before = copilot_runtime::metrics::Metrics::global()
        .events_dead_lettered_total
        .with_label_values(&["signals"])
        .get();
    js.publish("signals.acme.alertmanager", "not an envelope".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let wrong_tenant = copilot_events::Envelope::new(
        "globex",
        &copilot_events::TenantCreated {
            slug: "globex".into(),
            name: "x".into(),
            created_by: "x".into(),
        },
        chrono::Utc::now(),
        Default::default(),
    );
    js.publish("signals.acme.alertmanager", wrong_tenant.to_bytes().into())
        .await
        .unwrap()
        .await
        .unwrap();

    let response = t
        .post_webhook(
            "alertmanager",
            &t.acme.webhook_token,
            fixture("alertmanager-v4-firing-2alerts-oncall.json"),
        )
        .await;
    assert_eq!(response.status(), 202);
    t.settle(Projection::Signals).await;

    assert_eq!(t.ctx().store.signal_totals("acme").await.unwrap(), (2, 2));
    assert_eq!(
        t.ctx().store.count_dead_letters("signals").await.unwrap(),
        2
    );
    assert_eq!(t.stream_messages(subjects::DEADLETTERS).await, 2);
    use futures::TryStreamExt as _;
    let dlq = t.ctx().js.get_stream(subjects::DEADLETTERS).await.unwrap();
    let by_subject: Vec<(String, usize)> = dlq
        .info_with_subjects("deadletters.>")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        by_subject,
        [("deadletters.acme.projector-signals".to_owned(), 2)],
        "parked under the tenant of the subject they were read on, whatever the envelope claims"
    );
    let parked_after = copilot_runtime::metrics::Metrics::global()
        .events_dead_lettered_total
        .with_label_values(&["signals"])
        .get();
    assert!(parked_after >= parked_before + 2);
}

#[tokio::test]
async fn the_request_id_travels_from_the_webhook_into_the_event_and_the_row() {
    let t = TestApp::spawn().await;
    let mut sub = t.ctx().nats.subscribe("signals.acme.>").await.unwrap();

    let response = t
        .http
        .post(format!("{}/v1/webhooks/alertmanager", t.url))
        .bearer_auth(&t.acme.webhook_token)
        .header("content-type", "application/json")
        .header("x-request-id", "req-e2e-42")
        .body(fixture("alertmanager-v4-firing-1alert-alerta.json"))
        .send()
        .await
        .unwrap();
    let generated = t.get("/healthz", "").await;

    assert_eq!(response.headers()["x-request-id"], "req-e2e-42");
    assert!(
        !generated.headers()["x-request-id"].is_empty(),
        "an id is generated when none is sent"
    );
    use futures::StreamExt as _;
    let message = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        message
            .headers
            .as_ref()
            .unwrap()
            .get(subjects::HEADER_REQUEST_ID)
            .unwrap()
            .as_str(),
        "req-e2e-42"
    );
    let envelope = copilot_events::Envelope::from_slice(&message.payload).unwrap();
    assert_eq!(envelope.request_id.as_deref(), Some("req-e2e-42"));
    t.settle(Projection::Signals).await;
    let page = json(t.get("/v1/signals", &t.acme.viewer_jwt).await).await;
    let id: uuid::Uuid = page["items"][0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        t.ctx()
            .store
            .signal_request_id("acme", id)
            .await
            .unwrap()
            .as_deref(),
        Some("req-e2e-42")
    );
}

#[tokio::test]
async fn the_openapi_document_is_served_without_credentials_as_committed() {
    let t = TestApp::spawn().await;

    let response = t
        .http
        .get(format!("{}/v1/openapi.json", t.url))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(copilot_e2e::workspace_root().join("schemas/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        served, committed,
        "the document served is the one in schemas/"
    );
    assert_eq!(served["openapi"], "3.1.0");
}

#[tokio::test]
async fn metrics_count_requests_appends_and_projections_by_route_and_stream() {
    let t = TestApp::spawn().await;
    t.post_webhook(
        "alertmanager",
        &t.acme.webhook_token,
        fixture("alertmanager-v4-firing-2alerts-oncall.json"),
    )
    .await;
    t.settle(Projection::Signals).await;

    let text = t
        .http
        .get(format!("{}/metrics", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    for expected in [
        r#"http_requests_total{method="POST",route="/v1/webhooks/alertmanager",service="gateway",status="202"}"#,
        r#"http_request_duration_seconds_bucket{method="POST",route="/v1/webhooks/alertmanager""#,
        "http_requests_in_flight",
        r#"events_appended_total{outcome="ok",stream="SIGNALS"}"#,
        r#"events_projected_total{projection="signals"}"#,
        r#"consumer_pending_messages{consumer="projector-signals"}"#,
    ] {
        assert!(text.contains(expected), "metrics lack {expected}:\n{text}");
    }
}

#[tokio::test]
async fn creating_a_tenant_twice_is_refused_and_streams_apply_is_idempotent() {
    let t = TestApp::spawn().await;

    let tenant = copilot_commands::NewTenant {
        slug: "acme",
        name: Some("Acme"),
        admin_email: None,
    };
    let again =
        copilot_commands::create_tenant(&t.ctx().js, tenant, "test", Default::default()).await;
    let report = copilot_runtime::nats::provision(&t.ctx().js).await.unwrap();

    assert!(matches!(
        again,
        Err(copilot_commands::CommandError::TenantExists(_))
    ));
    assert!(
        report
            .iter()
            .all(|(_, applied)| *applied == copilot_runtime::nats::Applied::Unchanged),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_webhook_with_more_alerts_than_acks_in_flight_is_accepted_whole() {
    let t = TestApp::spawn_with(Services::All, |s| {
        s.http.max_body_bytes = 32 * 1024 * 1024;
        s.nats.publish_timeout_ms = 20_000;
    })
    .await;
    let names: Vec<String> = (0..20_000).map(|i| format!("Storm{i}")).collect();
    let alerts: Vec<(&str, &str, &str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), "storm", "warning", "2026-11-22T08:00:00Z"))
        .collect();

    let response = t
        .post_webhook(
            "alertmanager",
            &t.acme.webhook_token,
            alertmanager_payload("firing", &alerts),
        )
        .await;

    assert_eq!(response.status(), 202);
    assert_eq!(json(response).await["accepted"], 20_000);
    t.settle(Projection::Signals).await;
    assert_eq!(
        t.ctx().store.signal_totals("acme").await.unwrap(),
        (20_000, 20_000)
    );
}

#[tokio::test]
async fn an_alert_too_large_for_the_event_store_is_refused_with_413_not_retried() {
    let t = TestApp::spawn().await;
    let max_payload = t.ctx().nats.server_info().max_payload;
    let mut body: Value = serde_json::from_slice(&alertmanager_payload(
        "firing",
        &[
            ("Small", "svc", "warning", "2026-11-22T08:00:00Z"),
            ("Huge", "svc", "warning", "2026-11-22T08:00:00Z"),
        ],
    ))
    .unwrap();
    body["alerts"][1]["annotations"]["description"] = "x".repeat(max_payload).into();
    let before = t.stream_messages(subjects::SIGNALS).await;

    let response = t
        .post_webhook(
            "alertmanager",
            &t.acme.webhook_token,
            serde_json::to_vec(&body).unwrap(),
        )
        .await;

    assert_eq!(response.status(), 413);
    assert!(
        json(response).await["detail"]
            .as_str()
            .unwrap()
            .contains("alert 1")
    );
    assert_eq!(
        t.stream_messages(subjects::SIGNALS).await,
        before,
        "not even the small alert"
    );
}

#[tokio::test]
async fn an_event_the_database_refuses_is_parked_and_the_events_around_it_are_applied() {
    let t = TestApp::spawn_with(Services::HttpOnly, |_| {}).await;
    copilot_projector::catch_up(t.ctx(), Projection::Tenants, Duration::from_secs(10))
        .await
        .unwrap();
    let body = fixture("alertmanager-v4-firing-2alerts-oncall.json");
    let mut signals = copilot_gateway_parse(&body);
    // The gateway refuses NUL characters; an event appended by anything else may still carry one,
    // and Postgres refuses it in a text column.
    signals[0].title = "nul\0byte".into();
    let js = &t.ctx().js;
    for signal in &signals {
        let envelope =
            copilot_events::Envelope::new("acme", signal, chrono::Utc::now(), Default::default());
        js.publish("signals.acme.alertmanager", envelope.to_bytes().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Whether the two share a batch or not, the database refuses the poisoned one and only it.
    copilot_projector::catch_up(t.ctx(), Projection::Signals, Duration::from_secs(20))
        .await
        .unwrap();

    assert_eq!(t.ctx().store.signal_totals("acme").await.unwrap(), (1, 1));
    let reasons = t.ctx().store.dead_letter_reasons("signals").await.unwrap();
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].starts_with("refused by the database"),
        "{reasons:?}"
    );
}

fn copilot_gateway_parse(body: &[u8]) -> Vec<copilot_events::SignalReceived> {
    copilot_gateway::parse::parse(copilot_events::SignalSource::Alertmanager, body).unwrap()
}

#[tokio::test]
async fn copilot_up_keeps_the_default_tenants_token_and_replaces_it_once_revoked() {
    let t = TestApp::spawn().await;
    let data_dir = tempfile::tempdir().unwrap();

    let first = copilot::cli::default_tenant_token(t.ctx(), data_dir.path())
        .await
        .unwrap();
    let again = copilot::cli::default_tenant_token(t.ctx(), data_dir.path())
        .await
        .unwrap();
    let owner = t
        .ctx()
        .store
        .find_token(&copilot_runtime::auth::hash_token(&first))
        .await
        .unwrap()
        .expect("the token is recorded");
    t.revoke_webhook_token("default", owner.token_id).await;
    let replaced = copilot::cli::default_tenant_token(t.ctx(), data_dir.path())
        .await
        .unwrap();

    assert_eq!(first, again, "a restart prints the same token");
    assert_ne!(replaced, first);
    let body = fixture("alertmanager-v4-firing-1alert-alerta.json");
    assert_eq!(
        t.post_webhook("alertmanager", &first, body.clone())
            .await
            .status(),
        401
    );
    assert_eq!(
        t.post_webhook("alertmanager", &replaced, body)
            .await
            .status(),
        202
    );
}

/// Has Postgres end every session on database `name`, as a restart would, waiting until each is
/// gone; returns how many it ended. From a connection to another database, so never its own.
async fn end_sessions(name: &str) -> i64 {
    let admin = sqlx::PgPool::connect(&copilot_e2e::admin_database_url())
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
          WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(&admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn after_postgres_ends_every_session_reads_intake_and_projection_recover() {
    // Arrange: a running system that has projected a webhook and served a read.
    let t = TestApp::spawn().await;
    t.post_webhook(
        "alertmanager",
        &t.acme.webhook_token,
        fixture("alertmanager-v4-firing-1alert-alerta.json"),
    )
    .await;
    t.settle(Projection::Signals).await;
    assert_eq!(t.get("/v1/signals", &t.acme.viewer_jwt).await.status(), 200);

    // Act: Postgres ends every session of the system's database, as a restart would, right
    // after reads used every pooled connection (so none is checked before its next use); then
    // readers and a sender go on, retrying as clients do.
    let reads =
        || futures::future::join_all((0..8).map(|_| t.get("/v1/signals", &t.acme.viewer_jwt)));
    reads().await;
    let ended = end_sessions(&t.db.name).await;
    let failed_reads = std::sync::Mutex::new(Vec::new());
    for response in reads().await {
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = response.headers().get("retry-after").cloned();
            failed_reads.lock().unwrap().push((status, retry_after));
        }
    }
    wait_until(Duration::from_secs(10), || async {
        let response = t.get("/v1/signals", &t.acme.viewer_jwt).await;
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = response.headers().get("retry-after").cloned();
            failed_reads.lock().unwrap().push((status, retry_after));
        }
        status == 200
    })
    .await;
    let failed_reads = failed_reads.into_inner().unwrap();
    wait_until(Duration::from_secs(10), || async {
        t.post_webhook(
            "alertmanager",
            &t.acme.webhook_token,
            fixture("alertmanager-v4-firing-2alerts-oncall.json"),
        )
        .await
        .status()
            == 202
    })
    .await;

    // Assert: at most one failed read per pooled connection, each a 503 telling the client to
    // retry (not a 500), and the new alerts reach their rows.
    assert!(ended > 0, "the system had sessions to end");
    assert!(
        !failed_reads.is_empty(),
        "reads on connections Postgres had ended must fail (else this checks nothing)"
    );
    assert!(
        failed_reads.len() <= 8,
        "{} reads failed; the pool holds at most 8 connections, each failing at most once",
        failed_reads.len()
    );
    for (status, retry_after) in &failed_reads {
        assert_eq!(*status, 503, "{failed_reads:?}");
        assert!(retry_after.is_some(), "{failed_reads:?}");
    }
    wait_until(Duration::from_secs(20), || async {
        t.ctx()
            .store
            .signal_totals("acme")
            .await
            .ok()
            .map(|(rows, _)| rows)
            == Some(3)
    })
    .await;
}
