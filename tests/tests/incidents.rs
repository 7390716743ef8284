//! Incidents end to end: webhooks through the correlator into incidents, the lifecycle commands
//! and the incident read APIs, against a real nats-server and Postgres per test.

use std::time::Duration;

use copilot::app::Services;
use copilot_e2e::{TestApp, alertmanager_payload, wait_until};
use copilot_events::{Role, subjects};
use copilot_projector::Projection;
use copilot_store::ReadModel;
use serde_json::{Value, json};

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

/// Waits until the correlator has decided every signal appended so far and the projector has
/// applied every decision.
async fn settle_incidents(t: &TestApp) {
    let target = t.stream_last_seq(subjects::SIGNALS).await;
    wait_until(Duration::from_secs(30), || async {
        t.ctx()
            .store
            .read_checkpoint("correlator-signals")
            .await
            .unwrap()
            >= target
    })
    .await;
    t.settle(Projection::Incidents).await;
}

async fn admin(t: &TestApp, tenant: &str) -> String {
    t.user_jwt(tenant, "alice", Role::Admin).await
}

async fn engineer(t: &TestApp, tenant: &str) -> String {
    t.user_jwt(tenant, "bob", Role::Engineer).await
}

async fn send(
    t: &TestApp,
    method: reqwest::Method,
    path: &str,
    jwt: &str,
    body: Value,
) -> reqwest::Response {
    t.http
        .request(method, format!("{}{path}", t.url))
        .bearer_auth(jwt)
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

/// Sets a tenant's correlation rules through the API and waits until they are in force.
async fn set_rules(t: &TestApp, tenant: &str, rules: Value) {
    let response = send(
        t,
        reqwest::Method::PUT,
        "/v1/settings/correlation",
        &admin(t, tenant).await,
        rules,
    )
    .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    t.settle(Projection::Tenants).await;
}

async fn post_alerts(t: &TestApp, status: &str, alerts: &[(&str, &str, &str, &str)]) {
    let response = t
        .post_webhook(
            "alertmanager",
            &t.acme.webhook_token,
            alertmanager_payload(status, alerts),
        )
        .await;
    assert_eq!(response.status(), 202);
}

/// Appends the events a webhook would, straight to SIGNALS with fresh message ids: copies that
/// arrive after the stream's duplicate window, which only the correlator can recognise.
async fn append_past_the_window(t: &TestApp, status: &str, alerts: &[(&str, &str, &str, &str)]) {
    let body = alertmanager_payload(status, alerts);
    for signal in
        copilot_gateway::parse::parse(copilot_events::SignalSource::Alertmanager, &body).unwrap()
    {
        let envelope =
            copilot_events::Envelope::new("acme", &signal, chrono::Utc::now(), Default::default());
        t.ctx()
            .js
            .send_publish(
                subjects::signal("acme", "alertmanager"),
                async_nats::jetstream::message::PublishMessage::build()
                    .payload(envelope.to_bytes().into())
                    .message_id(uuid::Uuid::now_v7().to_string()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn incidents(t: &TestApp, query: &str) -> Vec<Value> {
    let page = json_of(
        t.get(&format!("/v1/incidents?{query}"), &t.acme.viewer_jwt)
            .await,
    )
    .await;
    page["items"].as_array().expect("items").clone()
}

#[tokio::test]
async fn a_storm_of_1000_alerts_across_20_services_becomes_20_incidents_that_explain_their_signals()
{
    let t = TestApp::spawn().await;
    let names: Vec<String> = (0..50).map(|i| format!("Alert{i}")).collect();
    let services: Vec<String> = (0..20).map(|i| format!("svc{i:02}")).collect();

    for service in &services {
        let alerts: Vec<(&str, &str, &str, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let severity = if i == 7 { "critical" } else { "warning" };
                (
                    name.as_str(),
                    service.as_str(),
                    severity,
                    "2026-11-22T08:00:00Z",
                )
            })
            .collect();
        post_alerts(&t, "firing", &alerts).await;
    }
    settle_incidents(&t).await;

    let all = incidents(&t, "limit=100").await;
    assert_eq!(all.len(), 20);
    for incident in &all {
        assert_eq!(incident["signal_count"], 50);
        assert_eq!(incident["firing_count"], 50);
        assert_eq!(incident["state"], "detected");
        assert_eq!(
            incident["severity"], "critical",
            "the highest of its firing signals"
        );
    }
    let one = incidents(&t, "service=svc07").await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["key"], "service=svc07");
    let detail = json_of(
        t.get(
            &format!("/v1/incidents/{}", one[0]["id"].as_str().unwrap()),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    let signals = detail["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 50);
    assert!(
        signals[0]["explanation"]
            .as_str()
            .unwrap()
            .contains("opened the incident")
    );
    assert!(
        signals[1]["explanation"]
            .as_str()
            .unwrap()
            .contains("same key service=svc07"),
        "{}",
        signals[1]["explanation"]
    );
    let stats = json_of(
        t.get(
            "/v1/stats?since=2026-01-01T00:00:00Z&until=2030-01-01T00:00:00Z",
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    assert_eq!(stats["incidents"], 20);
    assert_eq!(stats["noise_reduction"], 50.0);
    assert_eq!(stats["open_by_severity"]["critical"], 20);
}

#[tokio::test]
async fn ha_duplicates_and_out_of_order_resolves_end_in_the_right_state() {
    let t = TestApp::spawn().await;
    set_rules(&t, "acme", json!({"resolve_grace_secs": 0})).await;

    // Resolved before it was ever seen firing, then the late firing copy: no incident.
    post_alerts(
        &t,
        "resolved",
        &[("Late", "ghost", "critical", "2026-11-22T08:00:00Z")],
    )
    .await;
    post_alerts(
        &t,
        "firing",
        &[("Late", "ghost", "critical", "2026-11-22T08:00:00Z")],
    )
    .await;
    // Firing twice (two HA replicas, the copy arriving with another group), resolved, then a
    // stale firing with the same startsAt: one incident, one signal, resolved. The stream's
    // duplicate window would drop exact copies, so copies are also appended past it.
    post_alerts(
        &t,
        "firing",
        &[("Down", "web", "error", "2026-11-22T08:00:00Z")],
    )
    .await;
    append_past_the_window(
        &t,
        "firing",
        &[("Down", "web", "error", "2026-11-22T08:00:00Z")],
    )
    .await;
    post_alerts(
        &t,
        "firing",
        &[
            ("Down", "web", "error", "2026-11-22T08:00:00Z"),
            ("Slow", "web", "warning", "2026-11-22T08:01:00Z"),
        ],
    )
    .await;
    post_alerts(
        &t,
        "resolved",
        &[
            ("Down", "web", "error", "2026-11-22T08:00:00Z"),
            ("Slow", "web", "warning", "2026-11-22T08:01:00Z"),
        ],
    )
    .await;
    post_alerts(
        &t,
        "firing",
        &[("Down", "web", "error", "2026-11-22T08:00:00Z")],
    )
    .await;
    append_past_the_window(
        &t,
        "firing",
        &[("Down", "web", "error", "2026-11-22T08:00:00Z")],
    )
    .await;
    settle_incidents(&t).await;

    assert!(incidents(&t, "service=ghost").await.is_empty());
    let web = incidents(&t, "service=web").await;
    assert_eq!(web.len(), 1);
    assert_eq!(web[0]["signal_count"], 2);
    assert_eq!(web[0]["firing_count"], 0);
    assert_eq!(web[0]["state"], "resolved");
    assert!(web[0]["resolved_at"].is_string());
}

#[tokio::test]
async fn a_signal_after_resolve_reopens_inside_the_window_and_opens_a_new_incident_after_it() {
    let t = TestApp::spawn().await;
    set_rules(
        &t,
        "acme",
        json!({"resolve_grace_secs": 0, "reopen_window_secs": 3600}),
    )
    .await;
    let first = ("Down", "api", "critical", "2026-11-22T08:00:00Z");
    post_alerts(&t, "firing", &[first]).await;
    post_alerts(&t, "resolved", &[first]).await; // endsAt 10:00 (the helper's)

    // 10:20 is inside the hour after the resolve: the same incident reopens.
    post_alerts(
        &t,
        "firing",
        &[("Down", "api", "critical", "2026-11-22T10:20:00Z")],
    )
    .await;
    settle_incidents(&t).await;
    let api = incidents(&t, "service=api").await;
    assert_eq!(api.len(), 1);
    assert_eq!(api[0]["reopen_count"], 1);
    assert_eq!(api[0]["state"], "detected");
    assert_eq!(api[0]["signal_count"], 2);

    // Resolved again; 13:00 is outside the window: a new incident.
    post_alerts(
        &t,
        "resolved",
        &[("Down", "api", "critical", "2026-11-22T10:20:00Z")],
    )
    .await;
    post_alerts(
        &t,
        "firing",
        &[("Down", "api", "critical", "2026-11-22T13:00:00Z")],
    )
    .await;
    settle_incidents(&t).await;
    let api = incidents(&t, "service=api&sort=oldest").await;
    assert_eq!(api.len(), 2);
    assert_eq!(api[0]["state"], "resolved");
    assert_eq!(api[1]["state"], "detected");
    assert_eq!(api[1]["signal_count"], 1);
    let timeline = json_of(
        t.get(
            &format!("/v1/incidents/{}/timeline", api[0]["id"].as_str().unwrap()),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    let types: Vec<&str> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "IncidentOpened",
            "SignalAttached",
            "SignalResolved",
            "IncidentResolved",
            "IncidentReopened",
            "SignalAttached",
            "SignalResolved",
            "IncidentResolved"
        ]
    );
}

#[tokio::test]
async fn the_threshold_rule_opens_an_incident_only_at_the_nth_signal_within_the_window() {
    let t = TestApp::spawn().await;
    set_rules(&t, "acme", json!({"min_signals": 3, "window_secs": 600})).await;

    post_alerts(
        &t,
        "firing",
        &[("A", "db", "warning", "2026-11-22T08:00:00Z")],
    )
    .await;
    // 20 minutes later: the first one has left the 10-minute window.
    post_alerts(
        &t,
        "firing",
        &[("B", "db", "warning", "2026-11-22T08:20:00Z")],
    )
    .await;
    post_alerts(
        &t,
        "firing",
        &[("C", "db", "error", "2026-11-22T08:21:00Z")],
    )
    .await;
    settle_incidents(&t).await;
    assert!(
        incidents(&t, "service=db").await.is_empty(),
        "two signals in the window are not enough"
    );

    post_alerts(
        &t,
        "firing",
        &[("D", "db", "warning", "2026-11-22T08:22:00Z")],
    )
    .await;
    settle_incidents(&t).await;
    let db = incidents(&t, "service=db").await;
    assert_eq!(db.len(), 1);
    assert_eq!(db[0]["signal_count"], 3);
    assert_eq!(db[0]["severity"], "error");
    assert!(db[0]["rule"].as_str().unwrap().contains("once 3 signals"));
}

#[tokio::test]
async fn lifecycle_commands_check_roles_transitions_versions_and_tenants() {
    let t = TestApp::spawn().await;
    post_alerts(
        &t,
        "firing",
        &[("Down", "pay", "critical", "2026-11-22T08:00:00Z")],
    )
    .await;
    settle_incidents(&t).await;
    let incident = &incidents(&t, "service=pay").await[0];
    let id = incident["id"].as_str().unwrap().to_owned();
    let version = incident["version"].as_u64().unwrap();
    let path = |what: &str| format!("/v1/incidents/{id}/{what}");
    let bob = engineer(&t, "acme").await;

    // A viewer may not act; another tenant sees nothing.
    let viewer = send(
        &t,
        reqwest::Method::POST,
        &path("transitions"),
        &t.acme.viewer_jwt,
        json!({"to": "acknowledged"}),
    )
    .await;
    assert_eq!(viewer.status(), 403);
    let foreign = send(
        &t,
        reqwest::Method::POST,
        &path("transitions"),
        &engineer(&t, "globex").await,
        json!({"to": "acknowledged"}),
    )
    .await;
    assert_eq!(foreign.status(), 404);
    assert_eq!(
        t.get(&format!("/v1/incidents/{id}"), &t.globex.viewer_jwt)
            .await
            .status(),
        404
    );
    assert_eq!(
        t.get(&path("timeline"), &t.globex.viewer_jwt)
            .await
            .status(),
        404
    );

    // Acknowledge, pinned to the version read.
    let ack = t
        .http
        .post(format!("{}{}", t.url, path("transitions")))
        .bearer_auth(&bob)
        .header("if-match", format!("\"{version}\""))
        .header("x-request-id", "ack-req-1")
        .json(&json!({"to": "acknowledged", "note": "looking"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 202);
    // The same pinned version again is stale now.
    let stale = t
        .http
        .post(format!("{}{}", t.url, path("transitions")))
        .bearer_auth(&bob)
        .header("if-match", version.to_string())
        .json(&json!({"to": "investigating"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    t.settle(Projection::Incidents).await;

    // A transition the state does not allow names the allowed ones.
    let learned = send(
        &t,
        reqwest::Method::POST,
        &path("transitions"),
        &bob,
        json!({"to": "learned"}),
    )
    .await;
    assert_eq!(learned.status(), 409);
    let problem = json_of(learned).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("investigating, mitigated, resolved"),
        "{problem}"
    );
    let bad = send(
        &t,
        reqwest::Method::POST,
        &path("transitions"),
        &bob,
        json!({"to": "closed"}),
    )
    .await;
    assert_eq!(bad.status(), 422);

    for (what, body) in [
        ("assign", json!({"assignee": "bob@example.com"})),
        ("notes", json!({"text": "rolled back deploy 42"})),
        ("transitions", json!({"to": "mitigated"})),
        ("transitions", json!({"to": "resolved"})),
    ] {
        let r = send(&t, reqwest::Method::POST, &path(what), &bob, body).await;
        assert_eq!(r.status(), 202, "{what}: {}", r.text().await.unwrap());
    }
    t.settle(Projection::Incidents).await;

    let detail = json_of(
        t.get(&format!("/v1/incidents/{id}"), &t.acme.viewer_jwt)
            .await,
    )
    .await;
    assert_eq!(detail["state"], "resolved");
    assert_eq!(detail["assignee"], "bob@example.com");
    assert_eq!(detail["notes"][0]["text"], "rolled back deploy 42");
    assert!(detail["acknowledged_at"].is_string());
    assert!(detail["mitigated_at"].is_string());
    assert!(detail["resolved_at"].is_string());
    let timeline = json_of(t.get(&path("timeline"), &t.acme.viewer_jwt).await).await;
    let ack_entry = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "IncidentTransitioned")
        .unwrap()
        .clone();
    assert_eq!(ack_entry["actor"], "bob");
    assert_eq!(ack_entry["request_id"], "ack-req-1");
    assert_eq!(ack_entry["payload"]["to"], "acknowledged");
    // Every command of the incident is in the tenant's audit log, with who, which request, and
    // from where; the correlator's own decisions are not commands and are not there.
    let audit = json_of(
        t.get(
            &format!("/v1/audit?target=incident:{id}"),
            &admin(&t, "acme").await,
        )
        .await,
    )
    .await;
    let commands = audit["items"].as_array().unwrap();
    let actions: Vec<&str> = commands
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "IncidentResolved",
            "IncidentTransitioned",
            "IncidentNoteAdded",
            "IncidentAssigned",
            "IncidentTransitioned"
        ],
        "newest first: {audit}"
    );
    assert!(
        commands
            .iter()
            .all(|e| e["actor"] == "bob" && e["source_addr"] == "127.0.0.1")
    );
    assert_eq!(commands[4]["request_id"], "ack-req-1");

    // A hand-resolved incident is reopened by its key's next alert within the window.
    post_alerts(
        &t,
        "firing",
        &[("Down2", "pay", "critical", "2026-11-22T08:30:00Z")],
    )
    .await;
    settle_incidents(&t).await;
    let pay = incidents(&t, "service=pay").await;
    assert_eq!(pay.len(), 1);
    assert_eq!(pay[0]["state"], "detected");
    assert_eq!(pay[0]["reopen_count"], 1);
}

#[tokio::test]
async fn the_incident_list_filters_searches_sorts_and_pages() {
    let t = TestApp::spawn().await;
    for (i, service) in ["alpha", "beta", "gamma", "delta", "epsilon"]
        .iter()
        .enumerate()
    {
        let severity = if i % 2 == 0 { "critical" } else { "info" };
        let starts = format!("2026-11-22T0{i}:00:00Z");
        post_alerts(
            &t,
            "firing",
            &[("HighErrorRate", service, severity, starts.as_str())],
        )
        .await;
    }
    settle_incidents(&t).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("/v1/incidents?limit=2&sort=severity&cursor={c}"),
            None => "/v1/incidents?limit=2&sort=severity".to_owned(),
        };
        let page = json_of(t.get(&query, &t.acme.viewer_jwt).await).await;
        for item in page["items"].as_array().unwrap() {
            seen.push((
                item["severity"].as_str().unwrap().to_owned(),
                item["service"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(seen[..3].iter().all(|(s, _)| s == "critical"));
    assert!(seen[3..].iter().all(|(s, _)| s == "info"));

    assert_eq!(incidents(&t, "severity=info").await.len(), 2);
    assert_eq!(incidents(&t, "q=gamma").await.len(), 1);
    assert_eq!(incidents(&t, "label=service%3Ddelta").await.len(), 1);
    assert_eq!(incidents(&t, "open=false").await.len(), 0);
    for bad in [
        "state=closed",
        "sort=random",
        "label=nolabel",
        "cursor=zzz",
        "limit=0",
        "bogus=1",
    ] {
        let r = t
            .get(&format!("/v1/incidents?{bad}"), &t.acme.viewer_jwt)
            .await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    // globex sees none of acme's incidents.
    let page = json_of(t.get("/v1/incidents", &t.globex.viewer_jwt).await).await;
    assert!(page["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_correlator_crash_between_append_and_commit_redecides_the_same_events_once() {
    // A first system whose correlator crashes after every append, before its commit.
    let t = TestApp::spawn_with(Services::All, |s| {
        s.faults.correlator_crash_after_append = true
    })
    .await;
    post_alerts(
        &t,
        "firing",
        &[
            ("A", "crash", "warning", "2026-11-22T08:00:00Z"),
            ("B", "crash", "critical", "2026-11-22T08:00:00Z"),
        ],
    )
    .await;
    wait_until(Duration::from_secs(20), || async {
        t.stream_messages(subjects::INCIDENTS).await >= 3
    })
    .await;
    // Let it crash and re-append at least once more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        t.ctx()
            .store
            .read_checkpoint("correlator-signals")
            .await
            .unwrap(),
        0
    );
    let copilot_e2e::TestApp { app, nats, db, .. } = t;
    app.unwrap().stop().await;

    // Restarted without the fault, on the same NATS and database.
    let settings = copilot_e2e::settings(&nats, &db);
    let app = copilot::app::App::start(settings, Services::All)
        .await
        .unwrap();
    let ctx = app.ctx.clone();
    let target = copilot_runtime::nats::stream_state(&ctx.js, subjects::SIGNALS)
        .await
        .unwrap()
        .last_sequence;
    wait_until(Duration::from_secs(20), || async {
        ctx.store
            .read_checkpoint("correlator-signals")
            .await
            .unwrap()
            >= target
    })
    .await;
    copilot_projector::catch_up(&ctx, Projection::Incidents, Duration::from_secs(20))
        .await
        .unwrap();

    let state = copilot_runtime::nats::stream_state(&ctx.js, subjects::INCIDENTS)
        .await
        .unwrap();
    assert_eq!(
        state.messages, 3,
        "one IncidentOpened and two SignalAttached, each once"
    );
    assert_eq!(ctx.store.incident_totals("acme").await.unwrap(), (1, 2));

    // A copy of a decision that outlived the duplicate window (another Nats-Msg-Id) is known
    // by its envelope id and skipped by the projector.
    let first = ctx
        .js
        .get_stream(subjects::INCIDENTS)
        .await
        .unwrap()
        .get_raw_message(2)
        .await
        .unwrap();
    ctx.js
        .send_publish(
            first.subject.to_string(),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(first.payload.clone())
                .message_id("after-the-window"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    copilot_projector::catch_up(&ctx, Projection::Incidents, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(ctx.store.incident_totals("acme").await.unwrap(), (1, 2));
    let incident = ctx
        .store
        .list_incidents(
            &mut ctx.store.begin().await.unwrap(),
            "acme",
            &Default::default(),
            Default::default(),
            None,
            1,
        )
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        ctx.store
            .incident_timeline(&mut ctx.store.begin().await.unwrap(), "acme", incident.id)
            .await
            .unwrap()
            .len(),
        3,
        "the copy is not in the timeline"
    );
    // The skipped copy still moved the incident's version: a command goes through.
    let jwt = copilot_e2e::user_jwt(&app, "acme", "bob", Role::Engineer).await;
    let ack = reqwest::Client::new()
        .post(format!(
            "{}/v1/incidents/{}/transitions",
            app.url(),
            incident.id
        ))
        .bearer_auth(jwt)
        .json(&json!({"to": "acknowledged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn the_grace_timer_resolves_an_incident_whose_alerts_all_resolved() {
    let t = TestApp::spawn_with(Services::All, |s| s.correlator.tick_ms = 100).await;
    set_rules(&t, "acme", json!({"resolve_grace_secs": 300})).await;
    let alert = ("Down", "cart", "critical", "2026-11-22T08:00:00Z");
    post_alerts(&t, "firing", &[alert]).await;
    // endsAt 10:00 (the helper's): the grace ran out at 10:05, long ago.
    post_alerts(&t, "resolved", &[alert]).await;
    settle_incidents(&t).await;

    wait_until(Duration::from_secs(10), || async {
        let cart = incidents(&t, "service=cart").await;
        cart.len() == 1 && cart[0]["state"] == "resolved"
    })
    .await;
}

#[tokio::test]
async fn an_alert_after_the_grace_reopens_whether_or_not_the_timer_ran_first() {
    // The timer never runs here: the alert itself must find the grace over.
    let t = TestApp::spawn_with(Services::All, |s| s.correlator.tick_ms = 3_600_000).await;
    set_rules(
        &t,
        "acme",
        json!({"resolve_grace_secs": 300, "window_secs": 600}),
    )
    .await;
    let first = ("Down", "queue", "critical", "2026-11-22T08:00:00Z");
    post_alerts(&t, "firing", &[first]).await;
    post_alerts(&t, "resolved", &[first]).await; // ends 10:00, grace until 10:05
    post_alerts(
        &t,
        "firing",
        &[("Down", "queue", "critical", "2026-11-22T10:20:00Z")],
    )
    .await;
    settle_incidents(&t).await;

    let queue = incidents(&t, "service=queue").await;
    assert_eq!(queue.len(), 1, "reopened, not a second incident");
    assert_eq!(queue[0]["reopen_count"], 1);
    let timeline = json_of(
        t.get(
            &format!(
                "/v1/incidents/{}/timeline",
                queue[0]["id"].as_str().unwrap()
            ),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    let types: Vec<&str> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "IncidentOpened",
            "SignalAttached",
            "SignalResolved",
            "IncidentResolved",
            "IncidentReopened",
            "SignalAttached"
        ]
    );
}

#[tokio::test]
async fn the_incident_read_models_rebuilt_from_the_streams_equal_the_live_ones() {
    let mut t = TestApp::spawn().await;
    set_rules(&t, "acme", json!({"resolve_grace_secs": 0})).await;
    for i in 0..5 {
        let service = format!("svc{i}");
        post_alerts(
            &t,
            "firing",
            &[
                ("A", service.as_str(), "warning", "2026-11-22T08:00:00Z"),
                ("B", service.as_str(), "error", "2026-11-22T08:00:00Z"),
            ],
        )
        .await;
    }
    post_alerts(
        &t,
        "resolved",
        &[
            ("A", "svc0", "warning", "2026-11-22T08:00:00Z"),
            ("B", "svc0", "error", "2026-11-22T08:00:00Z"),
        ],
    )
    .await;
    settle_incidents(&t).await;
    let id = incidents(&t, "service=svc1").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = send(
        &t,
        reqwest::Method::POST,
        &format!("/v1/incidents/{id}/notes"),
        &engineer(&t, "acme").await,
        json!({"text": "n"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    t.settle(Projection::Incidents).await;
    let mut live = Vec::new();
    for table in ReadModel::INCIDENTS {
        live.push(t.ctx().store.checksum(table).await.unwrap());
    }
    t.app.take().unwrap().stop().await;

    let (_rebuilt_db, rebuilt) = copilot_e2e::rebuild_target(&t.nats).await;
    copilot_projector::catch_up(&rebuilt, Projection::Incidents, Duration::from_secs(30))
        .await
        .unwrap();

    let mut again = Vec::new();
    for table in ReadModel::INCIDENTS {
        again.push(rebuilt.store.checksum(table).await.unwrap());
    }
    assert_eq!(again, live);
}

#[tokio::test]
async fn every_upstream_fixture_ends_in_the_incidents_its_labels_call_for() {
    let t = TestApp::spawn().await;
    for name in [
        "alertmanager-v3-legacy-numeric-groupkey-alerta.json",
        "alertmanager-v4-firing-1alert-alerta.json",
        "alertmanager-v4-firing-1alert-minimal-msteams.json",
        "alertmanager-v4-firing-2alerts-oncall.json",
    ] {
        let r = t
            .post_webhook(
                "alertmanager",
                &t.acme.webhook_token,
                copilot_e2e::fixture(name),
            )
            .await;
        assert_eq!(r.status(), 202, "{name}");
    }
    for name in [
        "grafana-v1-firing-1alert-alerting-test.json",
        "grafana-v1-firing-1alert-grafana12-keep.json",
        "grafana-v1-firing-2alerts-docs.json",
    ] {
        let r = t
            .post_webhook("grafana", &t.acme.webhook_token, copilot_e2e::fixture(name))
            .await;
        assert_eq!(r.status(), 202, "{name}");
    }
    settle_incidents(&t).await;

    let mut got: Vec<(String, i64)> = incidents(&t, "limit=100")
        .await
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_owned(),
                i["signal_count"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let mut expected = vec![
        // the default chain: service, then job…
        ("service=System".to_owned(), 1),
        ("job=docker_nodes".to_owned(), 1),
        ("job=node".to_owned(), 2), // OnCall's two InstanceDown alerts, one incident
        // …else the notification's group key
        ("group={}:{alertname=thing_dead}".to_owned(), 1),
        ("group=alertname".to_owned(), 1),
        ("group=webhook-c4edaaf9f9f839b0-1777986297".to_owned(), 1),
        ("group={}:{}".to_owned(), 2), // Grafana's docs example: two alerts 5 minutes apart
    ];
    expected.sort();
    assert_eq!(got, expected);
}
