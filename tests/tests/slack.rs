//! Slack: signed slash commands and buttons through the real routes against real NATS and
//! Postgres, with a real HTTP server in the test standing in for Slack's `response_url`s.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use copilot::app::Services;
use copilot_e2e::{TestApp, alertmanager_payload, fixture, poll, wait_until};
use copilot_events::Role;
use copilot_projector::Projection;
use serde_json::{Value, json};

const TEAM: &str = "T1DC2JH3J";
const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// Slack's side: `response_url`s, keeping every message posted to them, and the Web API
/// (`chat.postMessage`, `chat.update`) as Slack speaks it, keeping every call. A token other
/// than a `xoxb-good…` one is refused (`invalid_auth`); `rate_limit(n)` answers the next `n`
/// calls 429 with `Retry-After: 1`.
struct FakeSlack {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    api: Arc<Mutex<WebApi>>,
}

#[derive(Default)]
struct WebApi {
    calls: Vec<ApiCall>,
    rate_limit: u32,
    next_ts: u64,
    /// Messages whose `chat.update` is answered `message_not_found` (deleted in Slack).
    deleted: Vec<String>,
}

#[derive(Clone, Debug)]
struct ApiCall {
    method: String,
    token: String,
    body: Value,
    at: std::time::Instant,
    answered: u16,
    /// The `ts` a post was given.
    ts: Option<String>,
}

async fn web_api(
    State(api): State<Arc<Mutex<WebApi>>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    let mut api = api.lock().unwrap();
    let mut call = ApiCall {
        method: method.clone(),
        token: token.clone(),
        body: body.clone(),
        at: std::time::Instant::now(),
        answered: 200,
        ts: None,
    };
    if api.rate_limit > 0 {
        api.rate_limit -= 1;
        call.answered = 429;
        api.calls.push(call);
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response();
    }
    if method == "chat.update" && api.deleted.iter().any(|ts| body["ts"] == ts.as_str()) {
        api.calls.push(call);
        return Json(json!({"ok": false, "error": "message_not_found"})).into_response();
    }
    if !token.starts_with("xoxb-good") {
        api.calls.push(call);
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    api.next_ts += 1;
    let ts = format!("1765000000.{:06}", api.next_ts);
    call.ts = Some(ts.clone());
    api.calls.push(call);
    match method.as_str() {
        "chat.postMessage" => {
            Json(json!({"ok": true, "channel": body["channel"], "ts": ts, "message": body}))
        }
        "chat.update" => Json(json!({"ok": true, "channel": body["channel"], "ts": body["ts"]})),
        _ => Json(json!({"ok": false, "error": "unknown_method"})),
    }
    .into_response()
}

impl FakeSlack {
    async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let api = Arc::new(Mutex::new(WebApi::default()));
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
            .with_state(received.clone())
            .merge(
                Router::new()
                    .route("/api/{method}", post(web_api))
                    .with_state(api.clone()),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            received,
            api,
        }
    }

    fn prefix(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
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

    fn rate_limit(&self, calls: u32) {
        self.api.lock().unwrap().rate_limit = calls;
    }

    fn delete_message(&self, ts: &str) {
        self.api.lock().unwrap().deleted.push(ts.to_owned());
    }

    /// The Web API calls that were answered (not rate limited) with `token`.
    fn calls(&self, token: &str) -> Vec<ApiCall> {
        self.api
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.token == token && c.answered == 200)
            .cloned()
            .collect()
    }

    /// The posts with `token`: summaries (no `thread_ts`) and thread replies.
    fn posts(&self, token: &str) -> (Vec<Value>, Vec<Value>) {
        self.calls(token)
            .into_iter()
            .filter(|c| c.method == "chat.postMessage")
            .map(|c| c.body)
            .partition(|b| b["thread_ts"].is_null())
    }

    fn updates(&self, token: &str) -> Vec<Value> {
        self.calls(token)
            .into_iter()
            .filter(|c| c.method == "chat.update")
            .map(|c| c.body)
            .collect()
    }

    /// Waits until `check` holds of the calls made with `token`.
    async fn wait_for(&self, token: &str, what: &str, check: impl Fn(&[ApiCall]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let calls = self.calls(token);
            if check(&calls) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; calls: {:#?}",
                calls
                    .iter()
                    .map(|c| (&c.method, &c.body["thread_ts"], &c.body["text"]))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Acme's Slack workspace, its signing secret stored as a tenant secret, and people linked:
/// `U2CERLKJA` an engineer (sam), `UVIEWER` a viewer (vic).
async fn slack_tenant(t: &TestApp) {
    let admin = t.user_jwt("acme", "ada", Role::Admin).await;
    put_all(
        t,
        &admin,
        [
            (
                "/v1/settings/secrets/slack-signing",
                json!({"value": SECRET}),
            ),
            (
                "/v1/settings/integrations",
                json!({"slack": {"team_id": TEAM, "signing_secret": "slack-signing"}}),
            ),
        ],
    )
    .await;
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
    t.fire(&t.acme, "HighErrorRate", service).await;
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

/// The incident's timeline, as a viewer reads it.
async fn timeline(t: &TestApp, id: &str) -> Value {
    t.get(&format!("/v1/incidents/{id}/timeline"), &t.acme.viewer_jwt)
        .await
        .json()
        .await
        .unwrap()
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
    let timeline = timeline(&t, &id).await;
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
    put_all(
        &t,
        &admin,
        [
            (
                "/v1/settings/secrets/grid-signing",
                json!({"value": "grid-secret"}),
            ),
            (
                "/v1/settings/integrations",
                json!({"slack": {"team_id": "E111", "signing_secret": "grid-signing"}}),
            ),
        ],
    )
    .await;

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

const GOOD_TOKEN: &str = "xoxb-good-acme";
const CHANNEL: &str = "C0INCIDENTS";

/// Has `tenant`'s Slack post its incidents to [`CHANNEL`] with bot token `token` (a tenant
/// secret), its workspace `team` signing with `signing`.
async fn notify(t: &TestApp, tenant: &str, team: &str, signing: &str, token: &str, quiet: bool) {
    let admin = t.user_jwt(tenant, "ada", Role::Admin).await;
    put_all(
        t,
        &admin,
        [
            (
                "/v1/settings/secrets/slack-signing",
                json!({"value": signing}),
            ),
            ("/v1/settings/secrets/slack-bot", json!({"value": token})),
            (
                "/v1/settings/integrations",
                json!({"slack": {"team_id": team, "signing_secret": "slack-signing",
                                 "channel": CHANNEL, "bot_token_secret": "slack-bot", "quiet": quiet}}),
            ),
        ],
    )
    .await;
}

/// PUTs each body at its path as `admin`, each answered 2xx, then waits for the tenants
/// projection.
async fn put_all<const N: usize>(t: &TestApp, admin: &str, bodies: [(&str, Value); N]) {
    for (path, body) in bodies {
        let r = t
            .http
            .put(format!("{}{path}", t.url))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    t.settle(Projection::Tenants).await;
}

/// Everything running, Slack's Web API and `response_url`s the fake's, acme notifying.
async fn spawn_notifying(quiet: bool) -> (TestApp, FakeSlack) {
    let slack = FakeSlack::start().await;
    let (prefix, api) = (slack.prefix(), slack.api_url());
    let t = TestApp::spawn_with(Services::All, move |s| {
        s.slack.slack_response_url_prefix = prefix;
        s.slack.slack_api_url = api;
    })
    .await;
    slack_tenant(&t).await;
    notify(&t, "acme", TEAM, SECRET, GOOD_TOKEN, quiet).await;
    (t, slack)
}

/// POSTs `body` to one of the incident's routes as sam, an engineer; it must succeed.
async fn as_sam(t: &TestApp, id: &str, route: &str, body: Value) {
    let engineer = t.user_jwt("acme", "sam", Role::Engineer).await;
    let r = t
        .http
        .post(format!("{}/v1/incidents/{id}/{route}", t.url))
        .bearer_auth(&engineer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{route}: {}", r.status());
}

async fn transition(t: &TestApp, id: &str, to: &str) {
    as_sam(t, id, "transitions", json!({"to": to})).await;
}

async fn add_note(t: &TestApp, id: &str, text: &str) {
    as_sam(t, id, "notes", json!({"text": text})).await;
}

fn text_of(message: &Value) -> String {
    let blocks = message["blocks"].as_array().into_iter().flatten();
    blocks
        .filter_map(|b| b["text"]["text"].as_str())
        .chain(message["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn an_incident_gets_one_summary_in_the_channel_its_changes_in_the_thread_and_the_summary_updated_in_place()
 {
    let (t, slack) = spawn_notifying(false).await;

    let id = open_incident(&t, "checkout").await;
    slack
        .wait_for(GOOD_TOKEN, "the summary", |c| {
            c.iter().any(|c| c.method == "chat.postMessage")
        })
        .await;
    transition(&t, &id, "acknowledged").await;
    let more = alertmanager_payload(
        "firing",
        &[
            ("Latency", "checkout", "warning", "2026-11-22T08:01:00Z"),
            ("Saturation", "checkout", "warning", "2026-11-22T08:01:00Z"),
            ("Errors5xx", "checkout", "critical", "2026-11-22T08:01:00Z"),
        ],
    );
    assert_eq!(
        t.post_webhook("alertmanager", &t.acme.webhook_token, more)
            .await
            .status(),
        202
    );
    add_note(&t, &id, "rolling back 4.2.1").await;
    slack
        .wait_for(GOOD_TOKEN, "the note in the thread", |c| {
            c.iter().any(|c| {
                c.body["thread_ts"].is_string() && text_of(&c.body).contains("rolling back")
            })
        })
        .await;
    slack
        .wait_for(GOOD_TOKEN, "the summary showing 4 signals", |c| {
            c.iter()
                .any(|c| c.method == "chat.update" && text_of(&c.body).contains("4 signals"))
        })
        .await;

    let (summaries, replies) = slack.posts(GOOD_TOKEN);
    assert_eq!(summaries.len(), 1, "one summary: {summaries:#?}");
    let summary = &summaries[0];
    assert_eq!(summary["channel"], CHANNEL);
    assert!(text_of(summary).contains("HighErrorRate"));
    let actions: Vec<&str> = summary["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["elements"].as_array().into_iter().flatten())
        .filter_map(|e| e["action_id"].as_str())
        .collect();
    assert_eq!(actions, ["ack", "investigate", "resolve", "assign_me"]);
    let thread: Vec<String> = replies.iter().map(text_of).collect();
    let told = thread.join("\n");
    assert!(told.contains("acknowledged by sam"), "{told}");
    assert!(told.contains("rolling back 4.2.1"), "{told}");
    // Three signals joined: told in at most as many replies, however the rounds fell.
    let joined: usize = thread
        .iter()
        .filter_map(|r| {
            let at = r.find(" signal")?;
            r[..at].rsplit(' ').next()?.parse::<usize>().ok()
        })
        .sum();
    assert_eq!(joined, 3, "{told}");
    let first_ts = "1765000000.000001";
    assert!(replies.iter().all(|r| r["thread_ts"] == first_ts));
    assert!(
        slack
            .updates(GOOD_TOKEN)
            .iter()
            .all(|u| u["ts"] == first_ts)
    );
    let timeline = timeline(&t, &id).await;
    let posted: Vec<&Value> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "SlackMessagePosted")
        .collect();
    assert_eq!(posted.len(), 1 + replies.len(), "{timeline:#}");
    assert_eq!(posted[0]["actor"], "system:slack");
}

/// Waits until the notifier has taken and acknowledged everything in INCIDENTS.
async fn notifier_idle(t: &TestApp) {
    let ctx = t.ctx().clone();
    wait_until(Duration::from_secs(30), || {
        let ctx = ctx.clone();
        async move {
            let mut consumer = ctx
                .js
                .get_stream(copilot_events::subjects::INCIDENTS)
                .await
                .unwrap()
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("slack-notifier")
                .await
                .unwrap();
            let info = consumer.info().await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == 0
        }
    })
    .await;
}

#[tokio::test]
async fn the_notifier_posts_nothing_twice_across_a_restart_and_a_replay_of_the_whole_stream() {
    // Arrange: an incident posted and acknowledged, its thread told.
    let (mut t, slack) = spawn_notifying(false).await;
    let id = open_incident(&t, "checkout").await;
    slack
        .wait_for(GOOD_TOKEN, "the summary", |c| {
            c.iter().any(|c| c.method == "chat.postMessage")
        })
        .await;
    transition(&t, &id, "acknowledged").await;
    slack
        .wait_for(GOOD_TOKEN, "the acknowledgement in the thread", |c| {
            c.iter()
                .any(|c| text_of(&c.body).contains("acknowledged by"))
        })
        .await;
    notifier_idle(&t).await;
    let before = slack.posts(GOOD_TOKEN);

    // Act: stop; make the notifier's consumer deliver the whole stream again (a replay, and
    // every redelivery at once); start again on the same NATS and database.
    let app = t.app.take().unwrap();
    let settings = (*app.ctx.settings).clone();
    app.stop().await;
    let js = async_nats::jetstream::new(async_nats::connect(t.nats.url()).await.unwrap());
    let stream = js
        .get_stream(copilot_events::subjects::INCIDENTS)
        .await
        .unwrap();
    stream.delete_consumer("slack-notifier").await.unwrap();
    let (_, mut config) = copilot_runtime::nats::consumer_definition("slack-notifier").unwrap();
    config.deliver_policy = async_nats::jetstream::consumer::DeliverPolicy::All;
    stream.create_consumer(config).await.unwrap();
    let app = copilot::app::App::start(settings, Services::All)
        .await
        .unwrap();
    t.url = app.url();
    t.app = Some(app);
    notifier_idle(&t).await;
    let after_replay = slack.posts(GOOD_TOKEN);
    add_note(&t, &id, "after the restart").await;
    slack
        .wait_for(GOOD_TOKEN, "the note told after the restart", |c| {
            c.iter()
                .any(|c| text_of(&c.body).contains("after the restart"))
        })
        .await;

    // Assert: the replay posted nothing; the restarted notifier still tells what is new, once.
    assert_eq!(before.0.len(), 1);
    assert_eq!(after_replay.0.len(), before.0.len(), "no second summary");
    assert_eq!(
        after_replay.1.len(),
        before.1.len(),
        "no thread reply told twice"
    );
    let (summaries, replies) = slack.posts(GOOD_TOKEN);
    assert_eq!(summaries.len(), 1);
    assert_eq!(replies.len(), before.1.len() + 1);
}

#[tokio::test]
async fn quiet_mode_keeps_only_the_summary_updated_in_place() {
    let (t, slack) = spawn_notifying(true).await;

    let id = open_incident(&t, "checkout").await;
    slack
        .wait_for(GOOD_TOKEN, "the summary", |c| {
            c.iter().any(|c| c.method == "chat.postMessage")
        })
        .await;
    transition(&t, &id, "acknowledged").await;
    add_note(&t, &id, "quietly noted").await;
    slack
        .wait_for(GOOD_TOKEN, "the summary updated to acknowledged", |c| {
            c.iter()
                .any(|c| c.method == "chat.update" && text_of(&c.body).contains("acknowledged"))
        })
        .await;
    notifier_idle(&t).await;

    let (summaries, replies) = slack.posts(GOOD_TOKEN);
    assert_eq!(summaries.len(), 1);
    assert!(replies.is_empty(), "no thread chatter: {replies:#?}");
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_and_a_tenant_with_a_broken_token_holds_up_no_other() {
    // Arrange: globex's workspace answers invalid_auth to its token; Slack rate limits the
    // first call it gets.
    let (t, slack) = spawn_notifying(false).await;
    notify(
        &t,
        "globex",
        "T0GLOBEX",
        "globex-signing",
        "xoxb-revoked",
        false,
    )
    .await;
    slack.rate_limit(1);

    // Act: an incident for each.
    let acme_incident = open_incident(&t, "checkout").await;
    t.fire(&t.globex, "DiskFull", "ledger").await;
    slack
        .wait_for(GOOD_TOKEN, "acme's summary", |c| {
            c.iter().any(|c| c.method == "chat.postMessage")
        })
        .await;
    slack
        .wait_for("xoxb-revoked", "globex's refused post", |c| !c.is_empty())
        .await;
    transition(&t, &acme_incident, "acknowledged").await;
    slack
        .wait_for(GOOD_TOKEN, "acme's thread going on", |c| {
            c.iter()
                .any(|c| text_of(&c.body).contains("acknowledged by"))
        })
        .await;

    // Assert: the 429 was waited out as asked, globex's failure is its own and shown.
    let calls = slack.api.lock().unwrap().calls.clone();
    let limited = calls.iter().position(|c| c.answered == 429).unwrap();
    let retried = calls[limited + 1..]
        .iter()
        .find(|c| c.token == calls[limited].token)
        .expect("the rate-limited call is made again");
    assert!(retried.at - calls[limited].at >= Duration::from_millis(950));
    let status = |tenant: &'static str| {
        let t = &t;
        async move {
            let admin = t.user_jwt(tenant, "ada", Role::Admin).await;
            let v: Value = t
                .get("/v1/settings/integrations", &admin)
                .await
                .json()
                .await
                .unwrap();
            v
        }
    };
    let globex = status("globex").await;
    assert_eq!(globex["status"]["slack"]["working"], false, "{globex:#}");
    assert_eq!(
        globex["status"]["slack"]["last_error"],
        "chat.postMessage: invalid_auth"
    );
    assert!(globex["status"]["slack"]["last_error_at"].is_string());
    let acme = status("acme").await;
    assert_eq!(acme["status"]["slack"]["working"], true, "{acme:#}");
    assert!(acme["status"]["slack"]["last_ok_at"].is_string());
    assert_eq!(acme["slack"]["channel"], CHANNEL);
    // What GET answers can be sent back as it is.
    let admin = t.user_jwt("acme", "ada", Role::Admin).await;
    let put = t
        .http
        .put(format!("{}/v1/settings/integrations", t.url))
        .bearer_auth(&admin)
        .json(&acme)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("slack_calls_total{method=\"chat.postMessage\",outcome=\"invalid_auth\"}")
    );
    assert!(
        metrics
            .contains("slack_calls_total{method=\"chat.postMessage\",outcome=\"ratelimited\"} 1")
    );
}

#[tokio::test]
async fn a_slack_user_links_their_account_with_a_one_time_code() {
    // Arrange: lin is an engineer of acme with no Slack account linked.
    let (t, slack) = spawn().await;
    let admin = t.user_jwt("acme", "ada", Role::Admin).await;
    let r = t
        .http
        .post(format!("{}/v1/admin/tenants/acme/users", t.url))
        .bearer_auth(&admin)
        .json(&json!({"user_id": "lin", "email": "lin@acme.test", "display_name": "Lin", "role": "engineer"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    t.settle(Projection::Tenants).await;
    let lin = t.user_jwt("acme", "lin", Role::Engineer).await;
    let vic = t.user_jwt("acme", "vic", Role::Viewer).await;
    let link = |jwt: String, body: Value| {
        let t = &t;
        async move {
            let r = t
                .http
                .post(format!("{}/v1/slack/link", t.url))
                .bearer_auth(jwt)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Act
    let unlinked = command(&t, "ULIN", "incidents", &slack).await;
    let answer = command(&t, "ULIN", "link", &slack).await;
    let text = answer["text"].as_str().unwrap();
    let code = text.split('`').nth(1).unwrap().to_owned();
    let last = if code.ends_with('0') { "1" } else { "0" };
    let altered = format!("{}{last}", &code[..code.len() - 1]);
    let refused_altered = link(lin.clone(), json!({"code": altered})).await;
    let refused_for_another = link(vic.clone(), json!({"code": code, "user_id": "lin"})).await;
    let linked = link(lin.clone(), json!({"code": code})).await;
    t.settle(Projection::Tenants).await;
    let taken = link(vic, json!({"code": code})).await;
    let listed = command(&t, "ULIN", "incidents", &slack).await;

    // Assert
    assert!(unlinked["text"].as_str().unwrap().contains("/copilot link"));
    assert_eq!(answer["response_type"], "ephemeral");
    assert_eq!(refused_altered.0, 422, "{:?}", refused_altered.1);
    assert_eq!(refused_for_another.0, 403);
    assert_eq!(linked.0, 200, "{:?}", linked.1);
    assert_eq!(linked.1["slack_user_id"], "ULIN");
    assert_eq!(taken.0, 409, "{:?}", taken.1);
    assert!(
        !listed["text"].as_str().unwrap().contains("not linked"),
        "{listed}"
    );
    let audit: Value = t.get("/v1/audit", &admin).await.json().await.unwrap();
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "lin" && e["action"] == "UserUpdated"),
        "{audit:#}"
    );
}

#[tokio::test]
async fn a_summary_deleted_in_slack_does_not_keep_another_incident_untold() {
    // Arrange: two incidents posted; someone deleted the first one's summary in Slack.
    let (t, slack) = spawn_notifying(false).await;
    let checkout = open_incident(&t, "checkout").await;
    let payments = open_incident(&t, "payments").await;
    slack
        .wait_for(GOOD_TOKEN, "both summaries", |c| {
            c.iter().filter(|c| c.method == "chat.postMessage").count() == 2
        })
        .await;
    let ts_of = |service: &str| {
        slack
            .calls(GOOD_TOKEN)
            .into_iter()
            .find(|c| c.method == "chat.postMessage" && text_of(&c.body).contains(service))
            .and_then(|c| c.ts)
            .unwrap()
    };
    slack.delete_message(&ts_of("checkout"));

    // Act: both acknowledged at once, so they are told in one round.
    tokio::join!(
        transition(&t, &checkout, "acknowledged"),
        transition(&t, &payments, "acknowledged")
    );

    // Assert: payments' summary is updated though checkout's update was refused, and the
    // refusal is the tenant's last Slack error.
    let payments_ts = ts_of("payments");
    slack
        .wait_for(GOOD_TOKEN, "payments' summary updated", |c| {
            c.iter().any(|c| {
                c.method == "chat.update"
                    && c.body["ts"] == payments_ts.as_str()
                    && text_of(&c.body).contains("acknowledged")
            })
        })
        .await;
    let admin = t.user_jwt("acme", "ada", Role::Admin).await;
    let status: Value = poll(Duration::from_secs(10), || async {
        let v: Value = t
            .get("/v1/settings/integrations", &admin)
            .await
            .json()
            .await
            .unwrap();
        (v["status"]["slack"]["last_error"] == "chat.update: message_not_found").then_some(v)
    })
    .await;
    assert_eq!(status["status"]["slack"]["errors_total"], 1, "{status:#}");
}
