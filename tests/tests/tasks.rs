//! Tasks and workers against real NATS: the lifecycle, leases, retries, timeouts, cancel, late
//! outcomes and priority, through the task commands the API and the native worker share.

use std::time::Duration;

use copilot_commands::{
    NewTask, cancel_task, claim_next, create_task, finish_task, heartbeat_task, load_task,
    report_task, tasks::HeartbeatAnswer, tasks::TaskStatus,
};
use copilot_e2e::TestApp;
use copilot_events::{Headers, Role};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(2);
const LEASE: Duration = Duration::from_secs(30);

fn snapshot(priority: u8, max_attempts: u32, timeout_secs: u32) -> NewTask {
    NewTask {
        kind: "promql.snapshot".into(),
        input: json!({"query": "up"}),
        priority,
        timeout_secs,
        max_attempts,
        incident_id: None,
    }
}

fn kinds() -> Vec<String> {
    vec!["promql.snapshot".into(), "hypotheses.refresh".into()]
}

#[tokio::test]
async fn a_task_is_created_claimed_once_reports_progress_and_completes() {
    let app = TestApp::spawn().await;
    let js = &app.ctx().js;
    let id = create_task(js, "acme", "u1", snapshot(5, 3, 60), Headers::default())
        .await
        .unwrap();
    let worker = Uuid::now_v7();

    let claim = claim_next(js, "acme", worker, &kinds(), WAIT, LEASE)
        .await
        .unwrap()
        .expect("the task is claimed");
    let second = claim_next(
        js,
        "acme",
        Uuid::now_v7(),
        &kinds(),
        Duration::from_millis(300),
        LEASE,
    )
    .await
    .unwrap();
    report_task(
        js,
        "acme",
        worker,
        id,
        1,
        Some((50, Some("half".into()))),
        vec!["line 1".into()],
    )
    .await
    .unwrap();
    let beat = heartbeat_task(js, "acme", worker, id, 1, &claim.lease)
        .await
        .unwrap();
    let done = finish_task(
        js,
        "acme",
        worker,
        id,
        1,
        &claim.lease,
        Ok(json!({"series": 3})),
    )
    .await
    .unwrap();

    assert_eq!(claim.task.id, id);
    assert_eq!(claim.input, json!({"query": "up"}));
    assert!(second.is_none(), "a claimed task is not claimed twice");
    assert_eq!(beat, HeartbeatAnswer::Continue);
    assert!(done);
    let (task, _, _) = load_task(js, "acme", id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.attempt, 1);
}

#[tokio::test]
async fn a_worker_that_stops_heartbeating_loses_its_task_and_its_late_completion_is_refused() {
    let app = TestApp::spawn().await;
    let js = &app.ctx().js;
    let lease = Duration::from_secs(1);
    let id = create_task(js, "acme", "u1", snapshot(5, 3, 60), Headers::default())
        .await
        .unwrap();
    let (dead, alive) = (Uuid::now_v7(), Uuid::now_v7());
    let first = claim_next(js, "acme", dead, &kinds(), WAIT, lease)
        .await
        .unwrap()
        .unwrap();

    // The first worker goes silent; after the lease (and the first retry's backoff) the task
    // is delivered to the other one.
    let second = claim_next(js, "acme", alive, &kinds(), Duration::from_secs(10), lease)
        .await
        .unwrap()
        .expect("the task comes back after the lease");
    let late = finish_task(js, "acme", dead, id, 1, &first.lease, Ok(json!("late")))
        .await
        .unwrap();
    let done = finish_task(js, "acme", alive, id, 2, &second.lease, Ok(json!("ok")))
        .await
        .unwrap();

    assert_eq!(second.task.attempt, 2);
    assert!(!late, "the late completion is refused");
    assert!(done);
    let (task, _, _) = load_task(js, "acme", id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Succeeded);
    assert_eq!(task.reasons.len(), 1);
    assert!(
        task.reasons[0].contains("lease of worker"),
        "{:?}",
        task.reasons
    );
    let refused = app.stream_messages(copilot_events::subjects::TASKS).await;
    assert!(
        refused >= 7,
        "created, claimed, expired, failed, retried, claimed, refused, completed"
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_until_max_attempts_keeping_every_reason() {
    let app = TestApp::spawn().await;
    let js = &app.ctx().js;
    let id = create_task(js, "acme", "u1", snapshot(5, 2, 60), Headers::default())
        .await
        .unwrap();
    let worker = Uuid::now_v7();

    for attempt in 1..=2 {
        let claim = claim_next(js, "acme", worker, &kinds(), Duration::from_secs(8), LEASE)
            .await
            .unwrap()
            .expect("each attempt is claimed");
        assert_eq!(claim.task.attempt, attempt);
        let reported = finish_task(
            js,
            "acme",
            worker,
            id,
            attempt,
            &claim.lease,
            Err(format!("prometheus unreachable ({attempt})")),
        )
        .await
        .unwrap();
        assert!(reported);
    }

    let (task, _, _) = load_task(js, "acme", id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(
        task.reasons,
        ["prometheus unreachable (1)", "prometheus unreachable (2)"]
    );
    let again = claim_next(
        js,
        "acme",
        worker,
        &kinds(),
        Duration::from_millis(300),
        LEASE,
    )
    .await
    .unwrap();
    assert!(again.is_none(), "a failed task is not run again");
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails_on_its_next_heartbeat() {
    let app = TestApp::spawn().await;
    let js = &app.ctx().js;
    let id = create_task(js, "acme", "u1", snapshot(5, 1, 1), Headers::default())
        .await
        .unwrap();
    let worker = Uuid::now_v7();
    let claim = claim_next(js, "acme", worker, &kinds(), WAIT, LEASE)
        .await
        .unwrap()
        .unwrap();

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let beat = heartbeat_task(js, "acme", worker, id, 1, &claim.lease)
        .await
        .unwrap();

    assert_eq!(beat, HeartbeatAnswer::Lost);
    let (task, _, _) = load_task(js, "acme", id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task.reasons[0].contains("timed out after 1s"));
}

#[tokio::test]
async fn cancel_ends_a_queued_task_and_reaches_a_running_one_on_its_heartbeat() {
    let app = TestApp::spawn().await;
    let js = &app.ctx().js;
    let queued = create_task(js, "acme", "u1", snapshot(1, 3, 60), Headers::default())
        .await
        .unwrap();
    let running = create_task(js, "acme", "u1", snapshot(9, 3, 60), Headers::default())
        .await
        .unwrap();
    let worker = Uuid::now_v7();
    let claim = claim_next(js, "acme", worker, &kinds(), WAIT, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.task.id, running, "the higher priority runs first");

    cancel_task(js, "acme", queued, "u1", Headers::default())
        .await
        .unwrap();
    cancel_task(js, "acme", running, "u1", Headers::default())
        .await
        .unwrap();
    let beat = heartbeat_task(js, "acme", worker, running, 1, &claim.lease)
        .await
        .unwrap();
    let late = finish_task(js, "acme", worker, running, 1, &claim.lease, Ok(json!(1)))
        .await
        .unwrap();
    let next = claim_next(
        js,
        "acme",
        worker,
        &kinds(),
        Duration::from_millis(300),
        LEASE,
    )
    .await
    .unwrap();

    assert_eq!(beat, HeartbeatAnswer::Cancel);
    assert!(!late);
    assert!(next.is_none(), "a cancelled queued task is never claimed");
    for id in [queued, running] {
        let (task, _, _) = load_task(js, "acme", id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Cancelled);
    }
}

#[tokio::test]
async fn tasks_are_claimed_highest_priority_first_and_an_unknown_kind_is_refused() {
    let app = TestApp::spawn().await;
    let js = &app.ctx().js;
    let mut ids = Vec::new();
    for priority in [2, 7, 0, 9] {
        ids.push((
            priority,
            create_task(
                js,
                "acme",
                "u1",
                snapshot(priority, 1, 60),
                Headers::default(),
            )
            .await
            .unwrap(),
        ));
    }
    let mut unknown = snapshot(1, 1, 60);
    unknown.kind = "rm.rf".into();

    let refused = create_task(js, "acme", "u1", unknown, Headers::default()).await;
    let worker = Uuid::now_v7();
    let mut order = Vec::new();
    for _ in 0..4 {
        let claim = claim_next(js, "acme", worker, &kinds(), WAIT, LEASE)
            .await
            .unwrap()
            .unwrap();
        order.push(ids.iter().find(|(_, id)| *id == claim.task.id).unwrap().0);
    }

    assert!(refused.unwrap_err().to_string().starts_with("kind:"));
    assert_eq!(order, [9, 7, 2, 0]);
}

#[tokio::test]
async fn tasks_are_created_read_and_cancelled_over_http_by_role_and_only_within_their_tenant() {
    let app = TestApp::spawn().await;
    let engineer = app.user_jwt("acme", "eng", Role::Engineer).await;
    let viewer = app.user_jwt("acme", "view", Role::Viewer).await;
    let other = app.user_jwt("globex", "eng", Role::Engineer).await;
    let post = |jwt: String, body: serde_json::Value| {
        app.http
            .post(format!("{}/v1/tasks", app.url))
            .bearer_auth(jwt)
            .json(&body)
            .send()
    };

    let created = post(
        engineer.clone(),
        json!({"kind": "promql.snapshot", "input": {"query": "up"}, "priority": 7}),
    )
    .await
    .unwrap();
    let by_viewer = post(viewer.clone(), json!({"kind": "promql.snapshot"}))
        .await
        .unwrap();
    let unknown = post(engineer.clone(), json!({"kind": "rm.rf"}))
        .await
        .unwrap();
    let bad_priority = post(
        engineer.clone(),
        json!({"kind": "promql.snapshot", "priority": 10}),
    )
    .await
    .unwrap();

    assert_eq!(created.status(), 201);
    let task: serde_json::Value = created.json().await.unwrap();
    assert_eq!(task["status"], "queued");
    assert_eq!(task["priority"], 7);
    assert_eq!(by_viewer.status(), 403);
    assert_eq!(unknown.status(), 422);
    assert!(unknown.text().await.unwrap().contains("kind"));
    assert_eq!(bad_priority.status(), 422);
    assert!(bad_priority.text().await.unwrap().contains("priority"));
    let id = task["id"].as_str().unwrap();
    let seen = app.get(&format!("/v1/tasks/{id}"), &viewer).await;
    assert_eq!(seen.status(), 200);
    let elsewhere = app.get(&format!("/v1/tasks/{id}"), &other).await;
    assert_eq!(elsewhere.status(), 404, "another tenant's task is a 404");
    let cancel = |jwt: String| {
        app.http
            .delete(format!("{}/v1/tasks/{id}", app.url))
            .bearer_auth(jwt)
            .send()
    };
    assert_eq!(cancel(other).await.unwrap().status(), 404);
    let cancelled = cancel(engineer.clone()).await.unwrap();
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        cancelled.json::<serde_json::Value>().await.unwrap()["status"],
        "cancelled"
    );
    assert_eq!(
        cancel(engineer).await.unwrap().status(),
        409,
        "an ended task cannot be cancelled"
    );
}

#[tokio::test]
async fn ten_workers_run_a_hundred_tasks_with_none_run_twice_at_once_and_none_lost() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    let app = TestApp::spawn().await;
    let js = app.ctx().js.clone();
    let mut ids = HashSet::new();
    for _ in 0..100 {
        ids.insert(
            create_task(&js, "acme", "u1", snapshot(5, 1, 60), Headers::default())
                .await
                .unwrap(),
        );
    }
    let running: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let finished: Arc<Mutex<Vec<Uuid>>> = Arc::default();

    let mut workers = Vec::new();
    for _ in 0..10 {
        let (js, running, finished) = (js.clone(), running.clone(), finished.clone());
        workers.push(tokio::spawn(async move {
            let worker = Uuid::now_v7();
            while let Some(claim) = claim_next(
                &js,
                "acme",
                worker,
                &kinds(),
                Duration::from_millis(500),
                LEASE,
            )
            .await
            .unwrap()
            {
                let id = claim.task.id;
                assert!(
                    running.lock().unwrap().insert(id),
                    "task {id} claimed while running"
                );
                let done = finish_task(&js, "acme", worker, id, 1, &claim.lease, Ok(json!(1)))
                    .await
                    .unwrap();
                assert!(done);
                running.lock().unwrap().remove(&id);
                finished.lock().unwrap().push(id);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }

    let finished = finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 100, "every task ran exactly once");
    assert_eq!(finished.into_iter().collect::<HashSet<_>>(), ids);
}
