//! Every read model rebuilt from the streams equals the live one, and every table of the
//! database is either a read model (so compared) or says why it is not, so a new table cannot be
//! left out of the comparison.

use std::time::Duration;

use copilot_e2e::{TestApp, poll};
use copilot_events::Role;
use copilot_projector::Projection;
use copilot_store::{NOT_READ_MODELS, ReadModel};
use serde_json::{Value, json};

#[tokio::test]
async fn every_table_is_a_read_model_compared_on_rebuild_or_says_why_it_is_not() {
    // Arrange: a database with every migration applied.
    let t = TestApp::spawn().await;

    // Act
    let tables = t.ctx().store.tables().await.unwrap();

    // Assert
    let models: Vec<&str> = ReadModel::ALL.iter().map(|m| m.table()).collect();
    let others: Vec<&str> = NOT_READ_MODELS.iter().map(|(t, _)| *t).collect();
    for table in &tables {
        assert!(
            models.contains(&table.as_str()) != others.contains(&table.as_str()),
            "table {table} must be exactly one of: a ReadModel (compared after a rebuild), or in NOT_READ_MODELS with why"
        );
    }
    for named in models.iter().chain(&others) {
        assert!(
            tables.iter().any(|t| t == named),
            "{named} is listed but no migration makes it"
        );
    }
}

/// Read models another rebuild test fills (with a model, or a worker speaking the protocol);
/// here they are compared too, but may be empty.
const FILLED_ELSEWHERE: [ReadModel; 3] = [
    ReadModel::UsageEvents,
    ReadModel::TaskLogs,
    ReadModel::Workers,
];

#[tokio::test]
async fn every_read_model_rebuilt_from_the_streams_equals_the_live_one() {
    // Arrange: a system that has done a bit of everything people and alerts do.
    let mut t = TestApp::spawn_with(copilot::app::Services::All, |s| {
        s.hypothesis.settle_ms = 100;
    })
    .await;
    let admin = t.user_jwt("acme", "alice", Role::Admin).await;
    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut request = t
            .http
            .request(method.clone(), format!("{}{path}", t.url))
            .bearer_auth(&admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "{method} {path}: {status} {body}");
            body
        }
    };
    send(
        reqwest::Method::POST,
        "/v1/admin/tenants/acme/users".into(),
        Some(
            json!({"user_id": "sam", "email": "sam@acme.test", "display_name": "Sam",
                    "role": "engineer", "slack_user_id": "U1"}),
        ),
    )
    .await;
    for setting in ["correlation", "retention"] {
        let current = send(
            reqwest::Method::GET,
            format!("/v1/settings/{setting}"),
            None,
        )
        .await;
        send(
            reqwest::Method::PUT,
            format!("/v1/settings/{setting}"),
            Some(current),
        )
        .await;
    }
    send(
        reqwest::Method::PUT,
        "/v1/settings/integrations".into(),
        Some(json!({"prometheus_url": "http://127.0.0.1:9"})),
    )
    .await;
    send(
        reqwest::Method::POST,
        "/v1/worker-tokens".into(),
        Some(json!({"name": "ci"})),
    )
    .await;
    t.fire(&t.acme, "HighErrorRate", "checkout").await;
    let proposal = poll(Duration::from_secs(30), || async {
        let page: Value = t
            .get("/v1/incidents", &t.acme.viewer_jwt)
            .await
            .json()
            .await
            .unwrap();
        let id = page["items"][0]["id"].as_str()?.to_owned();
        let h: Value = t
            .get(
                &format!("/v1/incidents/{id}/hypotheses"),
                &t.acme.viewer_jwt,
            )
            .await
            .json()
            .await
            .unwrap();
        let hid = h["items"][0]["hypotheses"][0]["id"].as_str()?.to_owned();
        Some((id, hid))
    })
    .await;
    let (id, hid) = proposal;
    send(
        reqwest::Method::POST,
        format!("/v1/incidents/{id}/notes"),
        Some(json!({"text": "rolled back"})),
    )
    .await;
    send(
        reqwest::Method::POST,
        format!("/v1/incidents/{id}/hypotheses/{hid}/verdict"),
        Some(json!({"verdict": "refuted"})),
    )
    .await;
    let task = send(
        reqwest::Method::POST,
        "/v1/tasks".into(),
        Some(json!({"kind": "echo", "input": {}})),
    )
    .await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    send(
        reqwest::Method::DELETE,
        format!("/v1/tasks/{task_id}"),
        None,
    )
    .await;
    for projection in Projection::ALL {
        t.settle(projection).await;
    }
    t.app.take().unwrap().stop().await;
    let live_store = copilot_store::Store::connect(&t.db.url, 2).await.unwrap();
    let mut live = Vec::new();
    for model in ReadModel::ALL {
        live.push(live_store.checksum(model).await.unwrap());
    }

    // Act: a fresh database, every projection rebuilt from the streams.
    let (_rebuilt_db, rebuilt) = copilot_e2e::rebuild_target(&t.nats).await;
    let mut empty = Vec::new();
    for model in ReadModel::ALL {
        empty.push(rebuilt.store.checksum(model).await.unwrap());
    }
    for projection in Projection::ALL {
        copilot_projector::catch_up(&rebuilt, projection, Duration::from_secs(30))
            .await
            .unwrap();
    }

    // Assert: each table holds rows (but those filled elsewhere), and equals its rebuild.
    let mut differ = Vec::new();
    for ((model, live), empty) in ReadModel::ALL.into_iter().zip(live).zip(empty) {
        if !FILLED_ELSEWHERE.iter().any(|m| m.table() == model.table()) {
            assert_ne!(live, empty, "{model:?} holds rows");
        }
        if rebuilt.store.checksum(model).await.unwrap() != live {
            differ.push(model);
        }
    }
    assert!(differ.is_empty(), "rebuilt differently: {differ:?}");
}
