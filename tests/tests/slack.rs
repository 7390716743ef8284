//! Slack: signed slash commands and buttons through the real routes against real NATS and
//! Postgres, with a real HTTP server in the test standing in for Slack's `response_url`s.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use copilot::app::Services;
use copilot_e2e::{TestApp, alertmanager_payload, fixture, poll};
use copilot_events::Role;
use copilot_projector::Projection;
use serde_json::{Value, json};

const TEAM: &str = "T1DC2JH3J";
const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// Slack's side of `response_url`: keeps every message posted to it.
struct FakeSlack {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
}

impl FakeSlack {
    async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route(
                "/commands/{team}/{id}/{token}",
                post(
                    |State(r): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                        r.lock().unwrap().push(body);
                        "ok"
                    },
                ),
            )
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, received }
    }

    fn prefix(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn response_url(&self) -> String {
        format!("http://{}/commands/{TEAM}/1/abc", self.addr)
    }

    async fn next(&self, seen: usize) -> Value {
        poll(Duration::from_secs(10), || async {
            self.received.lock().unwrap().get(seen).cloned()
        })
        .await
    }
}

/// Acme's Slack workspace, its signing secret stored as a tenant secret, and people linked:
/// `U2CERLKJA` an engineer (sam), `UVIEWER` a viewer (vic).
async fn slack_tenant(t: &TestApp) {
    let admin = t.user_jwt("acme", "ada", Role::Admin).await;
    let put = |path: &str, body: Value| {
        let request = t
            .http
            .put(format!("{}{path}", t.url))
            .bearer_auth(&admin)
            .json(&body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        put(
            "/v1/settings/secrets/slack-signing",
            json!({"value": SECRET})
        )
        .await,
        200
    );
    let integrations = json!({"slack": {"team_id": TEAM, "signing_secret": "slack-signing"}});
    assert!(matches!(
        put("/v1/settings/integrations", integrations).await,
        200 | 202
    ));
    for (user, role, slack) in [
        ("sam", "engineer", "U2CERLKJA"),
        ("vic", "viewer", "UVIEWER"),
    ] {
        let r = t
            .http
            .post(format!("{}/v1/admin/tenants/acme/users", t.url))
            .bearer_auth(&admin)
            .json(
                &json!({"user_id": user, "email": format!("{user}@acme.test"),
                          "display_name": user, "role": role, "slack_user_id": slack}),
            )
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(status.is_success(), "{status} {}", r.text().await.unwrap());
        t.settle(Projection::Tenants).await;
    }
    t.settle(Projection::Tenants).await;
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A slash-command body as Slack sends it.
fn command_body(user: &str, text: &str, response_url: &str) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "legacy-verification-token")
        .append_pair("team_id", TEAM)
        .append_pair("team_domain", "acme")
        .append_pair("channel_id", "C1")
        .append_pair("user_id", user)
        .append_pair("command", "/copilot")
        .append_pair("text", text)
        .append_pair("response_url", response_url)
        .finish()
        .into_bytes()
}

async fn signed(
    t: &TestApp,
    path: &str,
    body: Vec<u8>,
    secret: &str,
    at: i64,
) -> reqwest::Response {
    let signature = copilot_slack::verify::sign(secret.as_bytes(), at, &body);
    t.http
        .post(format!("{}{path}", t.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", at.to_string())
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn command(t: &TestApp, user: &str, text: &str, slack: &FakeSlack) -> Value {
    let r = signed(
        t,
        "/v1/slack/commands",
        command_body(user, text, &slack.response_url()),
        SECRET,
        now(),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn open_incident(t: &TestApp, service: &str) -> String {
    let r = t
        .post_webhook(
            "alertmanager",
            &t.acme.webhook_token,
            alertmanager_payload(
                "firing",
                &[("HighErrorRate", service, "critical", "2026-11-22T08:00:00Z")],
            ),
        )
        .await;
    assert_eq!(r.status(), 202);
    poll(Duration::from_secs(20), || async {
        let page: Value = t
            .get(
                &format!("/v1/incidents?service={service}"),
                &t.acme.viewer_jwt,
            )
            .await
            .json()
            .await
            .unwrap();
        page["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await
}

async fn incident(t: &TestApp, id: &str) -> Value {
    t.get(&format!("/v1/incidents/{id}"), &t.acme.viewer_jwt)
        .await
        .json()
        .await
        .unwrap()
}

async fn spawn() -> (TestApp, FakeSlack) {
    let slack = FakeSlack::start().await;
    let prefix = slack.prefix();
    let t = TestApp::spawn_with(Services::All, move |s| {
        s.slack.slack_response_url_prefix = prefix
    })
    .await;
    slack_tenant(&t).await;
    (t, slack)
}

#[tokio::test]
async fn only_requests_signed_by_the_tenants_workspace_are_answered() {
    let (t, slack) = spawn().await;
    let body = command_body("U2CERLKJA", "help", &slack.response_url());
    let mut altered = body.clone();
    *altered.last_mut().unwrap() ^= 1;
    let status = |r: reqwest::Response| r.status().as_u16();

    let good = status(signed(&t, "/v1/slack/commands", body.clone(), SECRET, now()).await);
    let stale = status(signed(&t, "/v1/slack/commands", body.clone(), SECRET, now() - 301).await);
    let wrong_secret = status(
        signed(
            &t,
            "/v1/slack/commands",
            body.clone(),
            "not-the-secret",
            now(),
        )
        .await,
    );
    let signature = copilot_slack::verify::sign(SECRET.as_bytes(), now(), &body);
    let one_byte = t
        .http
        .post(format!("{}/v1/slack/commands", t.url))
        .header("x-slack-request-timestamp", now().to_string())
        .header("x-slack-signature", signature)
        .body(altered)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let unsigned = t
        .http
        .post(format!("{}/v1/slack/commands", t.url))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    // The upstream bodies: one from a workspace no tenant names (its own secret signs it), and an
    // Enterprise Grid body whose team and enterprise no tenant names either.
    let upstream = status(
        signed(
            &t,
            "/v1/slack/commands",
            fixture("slack-slash-command-body-enterprise.txt"),
            SECRET,
            now(),
        )
        .await,
    );
    let mut foreign = fixture("slack-slash-command-body.txt");
    foreign = String::from_utf8(foreign)
        .unwrap()
        .replace(TEAM, "T0OTHER")
        .into_bytes();
    let unknown_workspace = status(signed(&t, "/v1/slack/commands", foreign, SECRET, now()).await);

    assert_eq!(good, 200);
    assert_eq!(
        [
            stale,
            wrong_secret,
            one_byte,
            unsigned,
            upstream,
            unknown_workspace
        ],
        [401; 6]
    );
}

#[tokio::test]
async fn the_upstream_slash_command_body_is_answered_when_its_workspace_is_the_tenants() {
    let (t, _slack) = spawn().await;

    // slackapi's body, verbatim, signed now: its workspace is acme's, its user is sam.
    let r = signed(
        &t,
        "/v1/slack/commands",
        fixture("slack-slash-command-body.txt"),
        SECRET,
        now(),
    )
    .await;

    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["response_type"], "ephemeral");
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("incidents [open|all]")
    );
}

#[tokio::test]
async fn an_unlinked_slack_user_is_told_how_to_link_and_a_viewer_cannot_acknowledge() {
    let (t, slack) = spawn().await;
    let id = open_incident(&t, "checkout").await;

    let stranger = command(&t, "UNOBODY", "incidents", &slack).await;
    let viewer = command(&t, "UVIEWER", &format!("ack {}", &id[..8]), &slack).await;

    assert_eq!(stranger["response_type"], "ephemeral");
    assert!(stranger["text"].as_str().unwrap().contains("slack_user_id"));
    assert!(
        viewer["text"]
            .as_str()
            .unwrap()
            .contains("needs the engineer role")
    );
    assert_eq!(incident(&t, &id).await["state"], "detected");
}

#[tokio::test]
async fn slash_commands_run_the_same_commands_as_the_api_as_the_linked_user() {
    let (t, slack) = spawn().await;
    let id = open_incident(&t, "checkout").await;
    let short = &id[..8];

    let listed = command(&t, "U2CERLKJA", "incidents", &slack).await;
    let shown = command(&t, "U2CERLKJA", &format!("incident {short}"), &slack).await;
    let acked = command(&t, "U2CERLKJA", &format!("ack {short}"), &slack).await;
    let investigating = command(&t, "U2CERLKJA", &format!("investigate {short}"), &slack).await;
    let assigned = command(
        &t,
        "U2CERLKJA",
        &format!("assign {short} <@U2CERLKJA|sam>"),
        &slack,
    )
    .await;
    let noted = command(
        &t,
        "U2CERLKJA",
        &format!("note {short} rolled back the deploy"),
        &slack,
    )
    .await;
    let resolved = command(&t, "U2CERLKJA", &format!("resolve {short} fixed"), &slack).await;
    let again = command(&t, "U2CERLKJA", &format!("ack {short}"), &slack).await;
    let unknown = command(&t, "U2CERLKJA", "ack ffff0000", &slack).await;
    let asked = command(&t, "U2CERLKJA", "ask has checkout failed before?", &slack).await;
    t.settle(Projection::Incidents).await;

    assert!(listed["text"].as_str().unwrap().contains(short));
    assert_eq!(shown["response_type"], "in_channel");
    assert!(shown["blocks"].as_array().unwrap().len() >= 2);
    for (answer, state) in [
        (&acked, "acknowledged"),
        (&investigating, "investigating"),
        (&resolved, "resolved"),
    ] {
        assert_eq!(answer["response_type"], "in_channel");
        assert!(answer["text"].as_str().unwrap().contains(state), "{answer}");
    }
    assert_eq!(assigned["response_type"], "in_channel");
    assert_eq!(noted["response_type"], "in_channel");
    assert_eq!(again["response_type"], "ephemeral", "{again}");
    assert_eq!(unknown["response_type"], "ephemeral");
    assert!(asked["text"].as_str().unwrap().contains("not available"));
    let detail = incident(&t, &id).await;
    assert_eq!(detail["state"], "resolved");
    assert_eq!(detail["assignee"], "sam");
    assert_eq!(detail["notes"][0]["text"], "rolled back the deploy");
    let timeline: Value = t
        .get(&format!("/v1/incidents/{id}/timeline"), &t.acme.viewer_jwt)
        .await
        .json()
        .await
        .unwrap();
    let by_slack: Vec<&str> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == format!("slack:{TEAM}/U2CERLKJA"))
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        by_slack,
        [
            "IncidentTransitioned",
            "IncidentTransitioned",
            "IncidentAssigned",
            "IncidentNoteAdded",
            "IncidentResolved"
        ]
    );
}

/// A button click as Slack posts it: `payload=` and the block action.
fn click_body(user: &str, action_id: &str, value: &str, response_url: &str) -> Vec<u8> {
    let payload = json!({
        "type": "block_actions",
        "team": {"id": TEAM, "domain": "acme"},
        "user": {"id": user, "team_id": TEAM},
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": action_id, "block_id": "incident", "value": value}],
    });
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
        .into_bytes()
}

#[tokio::test]
async fn a_button_runs_its_command_and_replaces_the_message_in_place_or_says_why_not() {
    let (t, slack) = spawn().await;
    let id = open_incident(&t, "checkout").await;
    let click = |user: &'static str, action: &'static str| {
        let body = click_body(user, action, &id, &slack.response_url());
        let t = &t;
        async move {
            signed(t, "/v1/slack/interactions", body, SECRET, now())
                .await
                .status()
                .as_u16()
        }
    };

    assert_eq!(click("U2CERLKJA", "ack").await, 200);
    let replaced = slack.next(0).await;
    assert_eq!(click("U2CERLKJA", "assign_me").await, 200);
    let assigned = slack.next(1).await;
    assert_eq!(click("U2CERLKJA", "resolve").await, 200);
    slack.next(2).await;
    assert_eq!(click("U2CERLKJA", "ack").await, 200);
    let refused = slack.next(3).await;
    assert_eq!(click("UVIEWER", "investigate").await, 200);
    let viewer = slack.next(4).await;
    let elsewhere = FakeSlack::start().await;
    let forged = click_body("U2CERLKJA", "resolve", &id, &elsewhere.response_url());
    assert_eq!(
        signed(&t, "/v1/slack/interactions", forged, SECRET, now())
            .await
            .status(),
        200
    );

    assert_eq!(replaced["replace_original"], true);
    assert!(replaced["text"].as_str().unwrap().contains("acknowledged"));
    assert!(
        assigned["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("assignee sam")
    );
    assert_eq!(refused["replace_original"], false);
    assert_eq!(refused["response_type"], "ephemeral");
    assert_eq!(viewer["response_type"], "ephemeral");
    assert!(viewer["text"].as_str().unwrap().contains("engineer role"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        elsewhere.received.lock().unwrap().is_empty(),
        "a response_url outside the prefix is never called"
    );
    let detail = incident(&t, &id).await;
    assert_eq!(detail["state"], "resolved");
    assert_eq!(detail["assignee"], "sam");
}

#[test]
fn the_manifest_points_slack_at_the_public_url() {
    let manifest = copilot_slack::manifest("acme", "https://copilot.example.com/");

    assert_eq!(
        manifest["features"]["slash_commands"][0]["url"],
        "https://copilot.example.com/v1/slack/commands"
    );
    assert_eq!(
        manifest["settings"]["interactivity"]["request_url"],
        "https://copilot.example.com/v1/slack/interactions"
    );
    assert_eq!(
        manifest["features"]["slash_commands"][0]["command"],
        "/copilot"
    );
    let scopes = manifest["oauth_config"]["scopes"]["bot"]
        .as_array()
        .unwrap();
    assert!(scopes.contains(&json!("commands")) && scopes.contains(&json!("chat:write")));
}

#[tokio::test]
async fn an_enterprise_grid_request_finds_its_tenant_by_the_enterprise_id() {
    let (t, _slack) = spawn().await;
    let admin = t.user_jwt("globex", "gina", Role::Admin).await;
    for (path, body) in [
        (
            "/v1/settings/secrets/grid-signing",
            json!({"value": "grid-secret"}),
        ),
        (
            "/v1/settings/integrations",
            json!({"slack": {"team_id": "E111", "signing_secret": "grid-signing"}}),
        ),
    ] {
        let r = t
            .http
            .put(format!("{}{path}", t.url))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    t.settle(Projection::Tenants).await;

    // bolt-js's Enterprise Grid body, verbatim: team T111 of enterprise E111, user W111.
    let body = fixture("slack-slash-command-body-enterprise.txt");
    let as_grid = signed(&t, "/v1/slack/commands", body.clone(), "grid-secret", now()).await;
    let with_acmes_secret = signed(&t, "/v1/slack/commands", body, SECRET, now()).await;

    assert_eq!(as_grid.status(), 200);
    let answer: Value = as_grid.json().await.unwrap();
    assert!(
        answer["text"].as_str().unwrap().contains("\"globex\""),
        "{answer}"
    );
    assert_eq!(with_acmes_secret.status(), 401);
}
