//! Workers over HTTP, as an external worker in any language speaks to the copilot: worker tokens,
//! register, claim (long poll), report, heartbeat, complete and fail; the `tasks`, `task_logs`
//! and `workers` read models behind the listings, the log followed as server-sent events, worker
//! tokens kept within their tenant, the native worker draining, and a rebuild of the read models
//! equal to the live ones.

use std::time::Duration;

use copilot_e2e::{TestApp, poll};
use copilot_events::Role;
use copilot_projector::Projection;
use copilot_store::ReadModel;
use serde_json::{Value, json};

/// A worker token of `tenant`, issued by its admin `alice` through the API.
async fn worker_token(app: &TestApp, tenant: &str) -> (String, String) {
    let admin = app.user_jwt(tenant, "alice", Role::Admin).await;
    let issued = app
        .http
        .post(format!("{}/v1/worker-tokens", app.url))
        .bearer_auth(&admin)
        .json(&json!({"name": "ci-runner"}))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201, "an admin issues a worker token");
    let body: Value = issued.json().await.unwrap();
    (
        body["worker_token"].as_str().unwrap().to_owned(),
        body["token_id"].as_str().unwrap().to_owned(),
    )
}

/// `POST path` with a bearer token and a JSON body.
async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.http
        .post(format!("{}{path}", app.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `DELETE path` with a bearer token.
async fn delete(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.http
        .delete(format!("{}{path}", app.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `GET path` with a bearer token, as JSON.
async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    app.get(path, token).await.json().await.unwrap()
}

/// Registers a worker of `kinds` with a worker token; its id.
async fn register(app: &TestApp, token: &str, kinds: &[&str]) -> String {
    let registered = post(
        app,
        "/v1/workers/register",
        token,
        json!({"name": "runner-1", "kinds": kinds, "capacity": 2}),
    )
    .await;
    assert_eq!(registered.status(), 201);
    let body: Value = registered.json().await.unwrap();
    assert!(body["lease_secs"].as_u64().unwrap() > body["heartbeat_secs"].as_u64().unwrap());
    body["worker_id"].as_str().unwrap().to_owned()
}

/// `POST /v1/workers/claim` for `worker`, waiting up to `wait_secs`.
async fn claim_task(app: &TestApp, token: &str, worker: &str, wait_secs: u32) -> reqwest::Response {
    post(
        app,
        "/v1/workers/claim",
        token,
        json!({"worker_id": worker, "wait_secs": wait_secs}),
    )
    .await
}

/// Creates a task as engineer `bob` of `tenant` over HTTP; its id.
async fn create(app: &TestApp, tenant: &str, body: Value) -> String {
    let bob = app.user_jwt(tenant, "bob", Role::Engineer).await;
    let created = post(app, "/v1/tasks", &bob, body).await;
    assert_eq!(created.status(), 201);
    let task: Value = created.json().await.unwrap();
    task["id"].as_str().unwrap().to_owned()
}

/// The native worker serving acme, draining for `drain_secs` once the token is cancelled.
fn native_worker(
    app: &TestApp,
    drain_secs: u64,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let serve = copilot::worker::serve(
        app.ctx().clone(),
        copilot::worker::WorkerArgs {
            tenants: vec!["acme".into()],
            drain_secs,
            ..Default::default()
        },
        stop.clone(),
    );
    let worker = tokio::spawn(async move { serve.await.expect("the worker runs and drains") });
    (stop, worker)
}

/// Acme's task `id` once it has succeeded or failed.
async fn ended(app: &TestApp, id: &str, within: Duration) -> Value {
    poll(within, || async {
        let task = get_json(app, &format!("/v1/tasks/{id}"), &app.acme.viewer_jwt).await;
        (task["status"] == "succeeded" || task["status"] == "failed").then_some(task)
    })
    .await
}

/// Reads a server-sent-event stream to its end: each event's name and data.
async fn sse_events(mut response: reqwest::Response) -> Vec<(String, Value)> {
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim().to_owned())
            };
            Some((field("event")?, serde_json::from_str(&field("data")?).ok()?))
        })
        .collect()
}

#[tokio::test]
async fn an_external_worker_runs_a_task_over_http_and_people_read_its_record_log_and_worker() {
    // Arrange: a worker token, a registered worker, a queued task.
    let app = TestApp::spawn().await;
    let viewer = app.acme.viewer_jwt.clone();
    let (token, _) = worker_token(&app, "acme").await;
    let worker = register(&app, &token, &["echo"]).await;
    let empty = claim_task(&app, &token, &worker, 0).await;
    let id = create(
        &app,
        "acme",
        json!({"kind": "echo", "input": {"say": "hi"}, "priority": 6}),
    )
    .await;

    // Act: claim, follow the log, report, heartbeat, complete.
    let claimed = claim_task(&app, &token, &worker, 5).await;
    assert_eq!(claimed.status(), 200);
    let claim: Value = claimed.json().await.unwrap();
    let lease = claim["lease"].as_str().unwrap().to_owned();
    let follow = app
        .http
        .get(format!("{}/v1/tasks/{id}/logs?follow=true", app.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    let followed = tokio::spawn(sse_events(follow));
    let reported = post(
        &app,
        &format!("/v1/tasks/{id}/report"),
        &token,
        json!({"worker_id": worker, "attempt": 1, "percent": 40, "message": "halfway", "lines": ["one", "two"]}),
    )
    .await;
    let beat = post(
        &app,
        "/v1/workers/heartbeat",
        &token,
        json!({"worker_id": worker, "tasks": [{"task_id": id, "attempt": 1, "lease": lease}]}),
    )
    .await;
    let beat: Value = beat.json().await.unwrap();
    app.settle(Projection::Tasks).await;
    let workers = get_json(&app, "/v1/workers", &viewer).await;
    let running = get_json(&app, &format!("/v1/tasks/{id}"), &viewer).await;
    let completed = post(
        &app,
        &format!("/v1/tasks/{id}/complete"),
        &token,
        json!({"worker_id": worker, "attempt": 1, "lease": lease, "result": {"said": "hi"}}),
    )
    .await;
    let events = tokio::time::timeout(Duration::from_secs(20), followed)
        .await
        .expect("the followed log ends when the task ends")
        .unwrap();

    // Assert
    assert_eq!(empty.status(), 204, "nothing to claim is a 204");
    assert_eq!(claim["task_id"], id.as_str());
    assert_eq!(claim["kind"], "echo");
    assert_eq!(claim["attempt"], 1);
    assert_eq!(claim["input"], json!({"say": "hi"}));
    assert_eq!(reported.status(), 202);
    assert_eq!(beat["tasks"][0]["action"], "continue");
    assert_eq!(workers[0]["id"], worker.as_str());
    assert_eq!(workers[0]["status"], "online");
    assert_eq!(workers[0]["kinds"], json!(["echo"]));
    assert_eq!(workers[0]["holding"], json!([id]));
    assert_eq!(running["status"], "running");
    assert_eq!(running["progress"], 40);
    assert_eq!(running["progress_message"], "halfway");
    assert_eq!(running["worker_id"], worker.as_str());
    assert_eq!(completed.status(), 200);
    let lines: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "line")
        .map(|(_, data)| data["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["one", "two"]);
    assert_eq!(
        events.last().unwrap(),
        &("end".to_owned(), json!({"status": "succeeded"}))
    );
    app.settle(Projection::Tasks).await;
    let done = get_json(&app, &format!("/v1/tasks/{id}"), &viewer).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"said": "hi"}));
    let log = get_json(&app, &format!("/v1/tasks/{id}/logs"), &viewer).await;
    assert_eq!(log["lines"][1]["line"], "two");
    assert_eq!(log["status"], "succeeded");
    let after: Value = app
        .get(
            &format!(
                "/v1/tasks/{id}/logs?after={}",
                log["lines"][0]["cursor"].as_str().unwrap()
            ),
            &viewer,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after["lines"].as_array().unwrap().len(), 1, "{after}");
}

#[tokio::test]
async fn the_task_listing_filters_by_status_kind_incident_and_time_and_pages_with_a_cursor() {
    // Arrange: three echo tasks, one of them cancelled, and a snapshot for an incident.
    let app = TestApp::spawn().await;
    let viewer = app.acme.viewer_jwt.clone();
    let bob = app.user_jwt("acme", "bob", Role::Engineer).await;
    let incident = uuid::Uuid::now_v7();
    let mut echoes = Vec::new();
    for n in 0..3 {
        echoes.push(create(&app, "acme", json!({"kind": "echo", "input": {"n": n}})).await);
    }
    let snapshot = create(
        &app,
        "acme",
        json!({"kind": "promql.snapshot", "incident_id": incident}),
    )
    .await;
    let cancelled = delete(&app, &format!("/v1/tasks/{}", echoes[0]), &bob).await;
    assert_eq!(cancelled.status(), 200);
    create(&app, "globex", json!({"kind": "echo"})).await;
    app.settle(Projection::Tasks).await;
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = |query: &str| {
        let (app, viewer) = (&app, &viewer);
        let path = format!("/v1/tasks{query}");
        async move {
            let response = app.get(&path, viewer).await;
            assert_eq!(response.status(), 200, "{path}");
            response.json::<Value>().await.unwrap()
        }
    };

    // Act
    let all = list("").await;
    let echo_queued = list("?kind=echo&status=queued").await;
    let of_incident = list(&format!("?incident_id={incident}")).await;
    let first_page = list("?limit=2").await;
    let cursor = first_page["next_cursor"].as_str().unwrap().to_owned();
    let second_page = list(&format!("?limit=2&cursor={cursor}")).await;
    let future = list("?since=2999-01-01T00:00:00Z").await;
    let bad_status = app.get("/v1/tasks?status=done", &viewer).await;

    // Assert: newest first, acme's only.
    let newest_first: Vec<String> = [snapshot.clone()]
        .into_iter()
        .chain(echoes.iter().rev().cloned())
        .collect();
    assert_eq!(ids(&all), newest_first);
    assert_eq!(ids(&echo_queued), [echoes[2].clone(), echoes[1].clone()]);
    assert_eq!(ids(&of_incident), [snapshot]);
    assert_eq!(
        [ids(&first_page), ids(&second_page)].concat(),
        newest_first,
        "two pages cover the listing once"
    );
    assert!(second_page.get("next_cursor").is_none());
    assert!(ids(&future).is_empty());
    assert_eq!(bad_status.status(), 400);
    let admin = app.user_jwt("acme", "alice", Role::Admin).await;
    let audit = get_json(&app, "/v1/audit?target=task:", &admin).await;
    let recorded: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["target"] == format!("task:{}", echoes[0]))
        .map(|row| {
            (
                row["action"].as_str().unwrap(),
                row["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        recorded,
        [("TaskCancelled", "bob"), ("TaskCreated", "bob")],
        "people's task commands are in the audit log, newest first"
    );
}

#[tokio::test]
async fn a_worker_token_works_only_for_its_tenant_only_on_worker_routes_and_not_once_revoked() {
    // Arrange: acme's task claimed by acme's worker; globex's worker token.
    let app = TestApp::spawn().await;
    let (acme_token, acme_token_id) = worker_token(&app, "acme").await;
    let (globex_token, _) = worker_token(&app, "globex").await;
    let acme_worker = register(&app, &acme_token, &["echo"]).await;
    let globex_worker = register(&app, &globex_token, &["echo"]).await;
    let id = create(&app, "acme", json!({"kind": "echo"})).await;
    let claim: Value = claim_task(&app, &acme_token, &acme_worker, 5)
        .await
        .json()
        .await
        .unwrap();
    let lease = claim["lease"].as_str().unwrap().to_owned();

    // Act: globex's token tries acme's task, lease and worker; a JWT tries a worker route; a
    // worker token tries a person's route.
    let outcome = json!({"worker_id": acme_worker, "attempt": 1, "lease": lease, "result": 1});
    let cross_complete = post(
        &app,
        &format!("/v1/tasks/{id}/complete"),
        &globex_token,
        outcome.clone(),
    )
    .await;
    let cross_beat = post(
        &app,
        "/v1/workers/heartbeat",
        &globex_token,
        json!({"worker_id": acme_worker, "tasks": []}),
    )
    .await;
    let cross_claim = claim_task(&app, &globex_token, &globex_worker, 1).await;
    let cross_report = post(
        &app,
        &format!("/v1/tasks/{id}/report"),
        &globex_token,
        json!({"worker_id": globex_worker, "attempt": 1, "lines": ["injected"]}),
    )
    .await;
    let jwt_on_worker_route = post(
        &app,
        "/v1/workers/claim",
        &app.user_jwt("acme", "alice", Role::Admin).await,
        json!({"worker_id": acme_worker}),
    )
    .await;
    let token_on_person_route = app.get("/v1/tasks", &acme_token).await;
    let admin = app.user_jwt("acme", "alice", Role::Admin).await;
    let revoked = delete(&app, &format!("/v1/worker-tokens/{acme_token_id}"), &admin).await;
    let after_revoke = post(
        &app,
        &format!("/v1/tasks/{id}/complete"),
        &acme_token,
        outcome,
    )
    .await;
    app.settle(Projection::Tasks).await;
    let task = get_json(&app, &format!("/v1/tasks/{id}"), &app.acme.viewer_jwt).await;
    let log = get_json(&app, &format!("/v1/tasks/{id}/logs"), &app.acme.viewer_jwt).await;
    let listed = get_json(&app, "/v1/worker-tokens", &admin).await;

    // Assert: nothing of acme's moved.
    assert!(
        matches!(cross_complete.status().as_u16(), 404 | 422),
        "another tenant's task: {}",
        cross_complete.status()
    );
    assert_eq!(
        cross_beat.status(),
        404,
        "another tenant's worker is unknown"
    );
    assert_eq!(
        cross_claim.status(),
        204,
        "globex's worker sees none of acme's tasks"
    );
    assert_eq!(
        cross_report.status(),
        404,
        "another tenant's task is unknown"
    );
    assert_eq!(jwt_on_worker_route.status(), 403);
    assert_eq!(token_on_person_route.status(), 401);
    assert_eq!(revoked.status(), 204);
    assert_eq!(after_revoke.status(), 401, "a revoked token stops at once");
    assert_eq!(task["status"], "running");
    assert!(log["lines"].as_array().unwrap().is_empty());
    assert!(listed[0]["revoked_at"].is_string());
    assert!(listed[0].get("token_hash").is_none() && listed[0].get("worker_token").is_none());
}

#[tokio::test]
async fn the_native_worker_runs_tasks_and_on_shutdown_hands_back_what_it_cannot_finish() {
    // Arrange: the native worker serving acme, a quick task and one that outlasts the drain.
    let app = TestApp::spawn().await;
    let viewer = app.acme.viewer_jwt.clone();
    let (stop, worker) = native_worker(&app, 1);
    let quick = create(
        &app,
        "acme",
        json!({"kind": "echo", "input": {"sleep_ms": 10}}),
    )
    .await;
    let slow = create(
        &app,
        "acme",
        json!({"kind": "echo", "input": {"sleep_ms": 600000}, "max_attempts": 1}),
    )
    .await;
    let status = |id: String| {
        let (app, viewer) = (&app, &viewer);
        async move { get_json(app, &format!("/v1/tasks/{id}"), viewer).await }
    };
    let done = poll(Duration::from_secs(20), || async {
        let t = status(quick.clone()).await;
        (t["status"] == "succeeded").then_some(t)
    })
    .await;
    poll(Duration::from_secs(20), || async {
        (status(slow.clone()).await["status"] == "running").then_some(())
    })
    .await;

    // Act: Ctrl-C.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .expect("the worker drains within its drain time")
        .unwrap();
    app.settle(Projection::Tasks).await;

    // Assert: the quick task's echo is its result; the slow one, handed back, is queued again
    // for another worker with its only attempt still to run; the worker is offline.
    assert_eq!(done["result"], json!({"sleep_ms": 10}));
    let slow = status(slow).await;
    assert_eq!(slow["status"], "queued", "{slow}");
    assert_eq!(
        slow["attempt"], 0,
        "the handed-back attempt does not count: {slow}"
    );
    assert_eq!(slow["reasons"], json!([]), "{slow}");
    assert!(slow["worker_id"].is_null(), "{slow}");
    let workers = get_json(&app, "/v1/workers", &viewer).await;
    assert_eq!(workers[0]["status"], "offline");
    assert_eq!(workers[0]["gone_reason"], "drained");
}

#[tokio::test]
async fn the_task_read_models_rebuilt_from_the_stream_equal_the_live_ones() {
    // Arrange: a lifecycle with every kind of task and worker event.
    let app = TestApp::spawn().await;
    let (token, token_id) = worker_token(&app, "acme").await;
    worker_token(&app, "globex").await;
    let worker = register(&app, &token, &["echo"]).await;
    let kept = create(&app, "acme", json!({"kind": "echo", "max_attempts": 2})).await;
    let cancelled = create(&app, "acme", json!({"kind": "echo", "priority": 0})).await;
    let claim: Value = claim_task(&app, &token, &worker, 5)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(claim["task_id"], kept.as_str());
    let lease = claim["lease"].as_str().unwrap();
    post(
        &app,
        &format!("/v1/tasks/{kept}/report"),
        &token,
        json!({"worker_id": worker, "attempt": 1, "percent": 10, "lines": ["a", "b"]}),
    )
    .await;
    post(
        &app,
        "/v1/workers/heartbeat",
        &token,
        json!({"worker_id": worker, "tasks": [{"task_id": kept, "attempt": 1, "lease": lease}]}),
    )
    .await;
    let released = post(
        &app,
        &format!("/v1/tasks/{kept}/release"),
        &token,
        json!({"worker_id": worker, "attempt": 1, "lease": lease}),
    )
    .await;
    assert_eq!(released.status(), 200);
    let claim: Value = claim_task(&app, &token, &worker, 5)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        claim["attempt"], 1,
        "a released attempt runs again under its number"
    );
    let stale: Value = post(
        &app,
        "/v1/workers/heartbeat",
        &token,
        json!({"worker_id": worker, "tasks": [{"task_id": kept, "attempt": 1, "lease": lease}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        stale["tasks"][0]["action"], "lost",
        "the released run's lease no longer answers, though worker and attempt are the same"
    );
    let lease = claim["lease"].as_str().unwrap();
    let failed = post(
        &app,
        &format!("/v1/tasks/{kept}/fail"),
        &token,
        json!({"worker_id": worker, "attempt": 1, "lease": lease, "reason": "boom"}),
    )
    .await;
    assert_eq!(failed.status(), 200);
    let bob = app.user_jwt("acme", "bob", Role::Engineer).await;
    delete(&app, &format!("/v1/tasks/{cancelled}"), &bob).await;
    let admin = app.user_jwt("acme", "alice", Role::Admin).await;
    delete(&app, &format!("/v1/worker-tokens/{token_id}"), &admin).await;
    let (token, _) = worker_token(&app, "acme").await;
    let gone = post(
        &app,
        "/v1/workers/gone",
        &token,
        json!({"worker_id": worker}),
    )
    .await;
    assert_eq!(gone.status(), 204);
    app.settle(Projection::Tasks).await;
    app.settle(Projection::Tenants).await;
    let models = [
        ReadModel::Tasks,
        ReadModel::TaskLogs,
        ReadModel::Workers,
        ReadModel::WorkerTokens,
    ];
    let mut live = Vec::new();
    for model in models {
        live.push(app.ctx().store.checksum(model).await.unwrap());
    }

    // Act: a fresh database, rebuilt from the streams.
    let (_rebuilt_db, rebuilt) = copilot_e2e::rebuild_target(&app.nats).await;
    let mut empty = Vec::new();
    for model in models {
        empty.push(rebuilt.store.checksum(model).await.unwrap());
    }
    for projection in [Projection::Tenants, Projection::Tasks] {
        copilot_projector::catch_up(&rebuilt, projection, Duration::from_secs(30))
            .await
            .unwrap();
    }

    // Assert
    for ((model, live), empty) in models.into_iter().zip(live).zip(empty) {
        assert_ne!(live, empty, "{model:?} holds rows");
        assert_eq!(
            rebuilt.store.checksum(model).await.unwrap(),
            live,
            "{model:?} rebuilt differs"
        );
    }
}

#[tokio::test]
async fn the_native_worker_takes_a_prometheus_snapshot_of_an_incident_from_the_tenants_prometheus()
{
    // Arrange: a real Prometheus scraping a service whose errors rise, as acme's Prometheus; an
    // incident of that service; the native worker.
    let (target, _server) = crate::hypotheses::rising_errors_target().await;
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
    );
    let Some(prometheus) = copilot_e2e::prometheus::Prometheus::start(&config).await else {
        return;
    };
    let app = TestApp::spawn().await;
    let admin = app.user_jwt("acme", "alice", Role::Admin).await;
    let set = app
        .http
        .put(format!("{}/v1/settings/integrations", app.url))
        .bearer_auth(&admin)
        .json(&json!({"prometheus_url": prometheus.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 202);
    let starts_at = (chrono::Utc::now() - chrono::Duration::seconds(30)).to_rfc3339();
    let sent = app
        .post_webhook(
            "alertmanager",
            &app.acme.webhook_token,
            copilot_e2e::alertmanager_payload(
                "firing",
                &[("HighErrorRate", "checkout", "critical", &starts_at)],
            ),
        )
        .await;
    assert_eq!(sent.status(), 202);
    let incident = copilot_e2e::poll_json(&app, "/v1/incidents", |page| {
        page["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    // An instant selector: Prometheus answers it at every step of the snapshot's 35-minute
    // range once it holds one sample, though it has been running for seconds only.
    let templates = vec![copilot_hypothesis::metrics::QueryTemplate {
        name: "errors".into(),
        query: r#"sum(http_requests_total{service="{service}",code=~"5.."})"#.into(),
    }];
    // Prometheus has scraped the target.
    poll(Duration::from_secs(30), || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = chrono::Utc::now();
        let found = copilot_hypothesis::metrics::fetch(
            &prometheus.url,
            None,
            &templates,
            &["checkout".to_owned()],
            now - chrono::Duration::seconds(30),
            now,
            Duration::from_secs(2),
        )
        .await;
        (!found.is_empty()).then_some(())
    })
    .await;
    let (stop, worker) = native_worker(&app, 30);

    // Act
    let id = create(
        &app,
        "acme",
        json!({"kind": "promql.snapshot", "incident_id": incident, "input": {"queries": templates.iter().map(|t| json!({"name": t.name, "query": t.query})).collect::<Vec<_>>()}}),
    )
    .await;
    let task = ended(&app, &id, Duration::from_secs(30)).await;
    stop.cancel();
    worker.await.unwrap();

    // Assert: the snapshot names the incident's service and the query's series.
    assert_eq!(task["status"], "succeeded", "{task}");
    let metrics = task["result"]["metrics"].as_array().unwrap();
    let errors = metrics
        .iter()
        .find(|m| m["name"] == "errors")
        .unwrap_or_else(|| panic!("no errors series in {task}"));
    assert_eq!(errors["service"], "checkout");
    assert_eq!(task["result"]["incident_id"], incident.as_str());
    // The hypothesis service's evidence holds the snapshot, with no live Prometheus to ask.
    let evidence = copilot_hypothesis::gather(app.ctx(), "acme", incident.parse().unwrap(), None)
        .await
        .unwrap()
        .expect("the incident has evidence");
    assert!(
        evidence
            .metrics
            .iter()
            .any(|m| m.name == "errors" && m.service == "checkout"),
        "the snapshot is metric evidence"
    );
}

#[tokio::test]
async fn a_hypotheses_refresh_task_gets_an_incident_a_new_proposal_before_its_interval_is_up() {
    // Arrange: an incident with its first proposal; a minimum interval of an hour between runs.
    let app = TestApp::spawn_with(
        copilot::app::Services::All,
        crate::hypotheses::fast_hypotheses(3600),
    )
    .await;
    crate::hypotheses::post(
        &app,
        &[(
            "HTTP5xxRateHigh",
            "checkout",
            "critical",
            "2026-11-22T08:02:00Z",
        )],
    )
    .await;
    let detail = crate::hypotheses::incident_with_hypotheses(&app, "checkout").await;
    let incident = detail["id"].as_str().unwrap().to_owned();
    let first = detail["hypotheses_proposal"]["proposal_id"].clone();
    let (stop, worker) = native_worker(&app, 30);

    // Act
    let id = create(
        &app,
        "acme",
        json!({"kind": "hypotheses.refresh", "incident_id": incident, "timeout_secs": 30}),
    )
    .await;
    let task = ended(&app, &id, Duration::from_secs(45)).await;
    stop.cancel();
    worker.await.unwrap();

    // Assert: the task names the new proposal, which the incident now shows.
    assert_eq!(task["status"], "succeeded", "{task}");
    let proposal = task["result"]["proposal_id"].clone();
    assert!(
        proposal.is_string() && proposal != first,
        "{task} after {first}"
    );
    let now = get_json(
        &app,
        &format!("/v1/incidents/{incident}"),
        &app.acme.viewer_jwt,
    )
    .await;
    assert_eq!(now["hypotheses_proposal"]["proposal_id"], proposal);
}

#[tokio::test]
async fn a_worker_cannot_answer_for_one_task_with_the_lease_of_another() {
    // Arrange: one worker holding two tasks of its tenant.
    let app = TestApp::spawn().await;
    let (token, _) = worker_token(&app, "acme").await;
    let worker = register(&app, &token, &["echo"]).await;
    let first = create(&app, "acme", json!({"kind": "echo", "priority": 9})).await;
    let second = create(&app, "acme", json!({"kind": "echo", "priority": 1})).await;
    let mut leases = Vec::new();
    for expected in [&first, &second] {
        let claim: Value = claim_task(&app, &token, &worker, 5)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(&claim["task_id"], expected.as_str());
        leases.push(claim["lease"].as_str().unwrap().to_owned());
    }
    let outcome =
        |lease: &str| json!({"worker_id": worker, "attempt": 1, "lease": lease, "result": 1});

    // Act: the first task answered with the second's lease, then with its own.
    let crossed = post(
        &app,
        &format!("/v1/tasks/{first}/complete"),
        &token,
        outcome(&leases[1]),
    )
    .await;
    let beat: Value = post(
        &app,
        "/v1/workers/heartbeat",
        &token,
        json!({"worker_id": worker, "tasks": [{"task_id": first, "attempt": 1, "lease": leases[1]}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let own = post(
        &app,
        &format!("/v1/tasks/{first}/complete"),
        &token,
        outcome(&leases[0]),
    )
    .await;
    let other = post(
        &app,
        &format!("/v1/tasks/{second}/complete"),
        &token,
        outcome(&leases[1]),
    )
    .await;

    // Assert
    assert_eq!(crossed.status(), 422, "another task's lease is refused");
    assert!(crossed.text().await.unwrap().contains("lease"));
    assert_eq!(
        beat["tasks"][0]["action"], "lost",
        "nothing is extended with it"
    );
    assert_eq!(own.status(), 200);
    assert_eq!(other.status(), 200);
}
