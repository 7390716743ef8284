//! Tenants, people and trust end to end: the role table walked route by route, users and their
//! tokens, suspension, webhook token rotation, the audit log, row-level security and rate
//! limits, against a real nats-server and Postgres per test.

use std::time::Duration;

use copilot::app::Services;
use copilot_api::{Access, POLICY};
use copilot_e2e::{TestApp, alertmanager_payload, workspace_root};
use copilot_events::{Role, subjects};
use reqwest::Method;
use serde_json::{Value, json};

const HOUR: Duration = Duration::from_secs(3600);

fn platform(t: &TestApp) -> String {
    t.app
        .as_ref()
        .unwrap()
        .jwt
        .issue_platform("ops", HOUR)
        .unwrap()
}

async fn send(
    t: &TestApp,
    method: Method,
    path: &str,
    jwt: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = t
        .http
        .request(method, format!("{}{path}", t.url))
        .bearer_auth(jwt)
        .header("x-request-id", "req-trust-1");
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request sent")
}

async fn get_json(t: &TestApp, path: &str, jwt: &str) -> Value {
    send(t, Method::GET, path, jwt, None)
        .await
        .json()
        .await
        .expect("a JSON body")
}

fn firing(service: &str) -> Vec<u8> {
    alertmanager_payload(
        "firing",
        &[("HighErrorRate", service, "critical", "2026-11-22T09:00:00Z")],
    )
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_policy_table_says() {
    // Arrange: one caller per role, and the README's copy of the table.
    let t = TestApp::spawn().await;
    let callers = [
        ("viewer", t.user_jwt("acme", "tester", Role::Viewer).await),
        ("engineer", t.user_jwt("acme", "bob", Role::Engineer).await),
        ("admin", t.user_jwt("acme", "alice", Role::Admin).await),
        ("platform", platform(&t)),
    ];
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let mut walked = 0;

    for (method, route, access) in POLICY {
        let path = route
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{hid}", "nope")
            .replace("{slug}", "acme")
            .replace("{token_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{user_id}", "nobody")
            .replace("{name}", "nope");
        let body = (*method != Method::GET && *method != Method::DELETE).then(|| json!({}));
        for (who, jwt) in &callers {
            // Act
            let status = send(&t, method.clone(), &path, jwt, body.clone())
                .await
                .status()
                .as_u16();
            walked += 1;

            // Assert
            let allowed = match (access, *who) {
                (Access::Tenant(_), "platform") => false,
                (Access::Tenant(role), who) => {
                    let mine: Role = who.parse().unwrap();
                    mine >= *role
                }
                (Access::Platform, who) => who == "platform",
                (Access::PlatformOrTenantAdmin, who) => who == "platform" || who == "admin",
                // Worker routes take a worker token; no JWT of any role is enough.
                (Access::Worker, _) => false,
            };
            if allowed {
                // A 2xx, or the route's own 4xx for an empty body or an id that names nothing;
                // never a refusal of the caller, never a failure of the copilot's.
                assert!(
                    (200..500).contains(&status) && status != 401 && status != 403,
                    "{who} may {method} {route}, yet got {status}"
                );
            } else {
                assert_eq!(status, 403, "{who} may not {method} {route}");
            }
        }
        let who = match access {
            Access::Tenant(Role::Admin) => "admin".to_owned(),
            Access::Tenant(role) => format!("{role:?}+").to_lowercase(),
            Access::Platform => "platform".to_owned(),
            Access::PlatformOrTenantAdmin => "platform, or the tenant's admin".to_owned(),
            Access::Worker => "worker token".to_owned(),
        };
        let row = format!("| `{method}` | `{route}` | {who} |");
        assert!(
            readme.lines().any(|l| l == row),
            "the README's role table lacks {row}"
        );
    }
    assert_eq!(walked, POLICY.len() * callers.len());
}

#[tokio::test]
async fn a_removed_user_s_token_stops_working_and_a_demoted_user_s_token_does_less() {
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    let bob = t.user_jwt("acme", "bob", Role::Engineer).await;
    let eve = t.user_jwt("acme", "eve", Role::Engineer).await;
    assert_eq!(
        send(&t, Method::GET, "/v1/me", &bob, None).await.status(),
        200
    );

    let removed = send(
        &t,
        Method::DELETE,
        "/v1/admin/tenants/acme/users/bob",
        &alice,
        None,
    )
    .await;
    let demoted = send(
        &t,
        Method::PATCH,
        "/v1/admin/tenants/acme/users/eve",
        &alice,
        Some(json!({"role": "viewer"})),
    )
    .await;

    assert_eq!(removed.status(), 204);
    assert_eq!(demoted.status(), 200);
    assert_eq!(
        send(&t, Method::GET, "/v1/me", &bob, None).await.status(),
        401
    );
    let me: Value = get_json(&t, "/v1/me", &eve).await;
    assert_eq!(me["role"], "viewer", "the user's role caps the token's");
    let note = send(
        &t,
        Method::POST,
        &format!("/v1/incidents/{}/notes", uuid::Uuid::now_v7()),
        &eve,
        Some(json!({"text": "hi"})),
    )
    .await;
    assert_eq!(note.status(), 403);
    // The last admin cannot be removed, so a tenant cannot lock itself out.
    let first_admin = send(
        &t,
        Method::DELETE,
        "/v1/admin/tenants/acme/users/admin",
        &alice,
        None,
    )
    .await;
    let last = send(
        &t,
        Method::DELETE,
        "/v1/admin/tenants/acme/users/alice",
        &alice,
        None,
    )
    .await;
    assert_eq!(first_admin.status(), 204);
    assert_eq!(last.status(), 409);
}

#[tokio::test]
async fn a_token_naming_another_tenant_or_a_stranger_is_refused() {
    let t = TestApp::spawn().await;
    let jwt = &t.app.as_ref().unwrap().jwt;
    // A real user of acme, with a token that claims globex: no such user there.
    t.user_jwt("acme", "carol", Role::Admin).await;
    let wrong_tenant = jwt
        .issue("carol", "globex", None, Role::Admin, HOUR)
        .unwrap();
    let stranger = jwt
        .issue("mallory", "acme", None, Role::Admin, HOUR)
        .unwrap();

    for token in [&wrong_tenant, &stranger] {
        assert_eq!(
            send(&t, Method::GET, "/v1/signals", token, None)
                .await
                .status(),
            401
        );
    }
    // A tenant admin administers only its own tenant: another's is not found.
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    assert_eq!(
        send(
            &t,
            Method::GET,
            "/v1/admin/tenants/globex/users",
            &alice,
            None
        )
        .await
        .status(),
        404
    );
}

#[tokio::test]
async fn a_suspended_tenant_s_webhooks_get_403_and_append_nothing_until_it_is_resumed() {
    let t = TestApp::spawn().await;
    let ops = platform(&t);
    let before = t.stream_messages(subjects::SIGNALS).await;

    let suspended = send(
        &t,
        Method::POST,
        "/v1/admin/tenants/acme/suspend",
        &ops,
        Some(json!({"reason": "unpaid invoice"})),
    )
    .await;
    let view: Value = suspended.json().await.unwrap();
    let refused = t
        .post_webhook("alertmanager", &t.acme.webhook_token, firing("checkout"))
        .await;
    let refused_status = refused.status();
    let refused_body: Value = refused.json().await.unwrap();
    let others = t
        .post_webhook("alertmanager", &t.globex.webhook_token, firing("checkout"))
        .await;

    assert_eq!(view["suspend_reason"], "unpaid invoice");
    assert_eq!(refused_status, 403);
    assert!(
        refused_body["detail"]
            .as_str()
            .unwrap()
            .contains("suspended")
    );
    assert_eq!(others.status(), 202, "other tenants are untouched");
    assert_eq!(t.stream_messages(subjects::SIGNALS).await, before + 1);

    let resumed = send(
        &t,
        Method::POST,
        "/v1/admin/tenants/acme/resume",
        &ops,
        None,
    )
    .await;
    assert_eq!(resumed.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await; // the gateway's token cache
    let accepted = t
        .post_webhook("alertmanager", &t.acme.webhook_token, firing("checkout"))
        .await;
    assert_eq!(accepted.status(), 202);
    let list: Value = get_json(&t, "/v1/admin/tenants", &ops).await;
    let slugs: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["acme", "globex"]);
}

#[tokio::test]
async fn a_rotated_token_keeps_working_through_its_grace_and_then_stops() {
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    let old = t.acme.webhook_token.clone();

    let rotated: Value = send(
        &t,
        Method::POST,
        &format!("/v1/admin/tenants/acme/tokens/{}/rotate", t.acme.token_id),
        &alice,
        Some(json!({"grace_seconds": 4})),
    )
    .await
    .json()
    .await
    .unwrap();
    let new = rotated["webhook_token"].as_str().unwrap().to_owned();
    let listed: Value = get_json(&t, "/v1/admin/tenants/acme/tokens", &alice).await;

    // Both work during the grace.
    for token in [&old, &new] {
        assert_eq!(
            t.post_webhook("alertmanager", token, firing("a"))
                .await
                .status(),
            202
        );
    }
    let tokens = listed["items"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t["active"] == true));
    assert!(
        tokens
            .iter()
            .all(|t| t.get("token_hash").is_none() && t["prefix"].as_str().unwrap().len() == 12),
        "a listing shows prefixes, never hashes: {listed}"
    );
    assert_eq!(rotated["replaces"]["token_id"], t.acme.token_id.to_string());

    // After the grace (and the gateway's one-second cache) only the new one does.
    let ends: chrono::DateTime<chrono::Utc> = rotated["replaces"]["revoked_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = (ends - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(1200)).await;
    assert_eq!(
        t.post_webhook("alertmanager", &old, firing("b"))
            .await
            .status(),
        401
    );
    assert_eq!(
        t.post_webhook("alertmanager", &new, firing("b"))
            .await
            .status(),
        202
    );

    let revoked = send(
        &t,
        Method::POST,
        &format!(
            "/v1/admin/tenants/acme/tokens/{}/revoke",
            rotated["token_id"].as_str().unwrap()
        ),
        &alice,
        None,
    )
    .await;
    assert_eq!(revoked.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        t.post_webhook("alertmanager", &new, firing("c"))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn the_audit_log_records_every_command_with_its_actor_request_and_address() {
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;

    send(
        &t,
        Method::POST,
        "/v1/admin/tenants/acme/users",
        &alice,
        Some(json!({
            "user_id": "dave", "email": "dave@acme.test", "display_name": "Dave", "role": "engineer"
        })),
    )
    .await;
    send(
        &t,
        Method::PUT,
        "/v1/settings/retention",
        &alice,
        Some(json!({"signals_days": 30, "incidents_days": 400})),
    )
    .await;
    send(
        &t,
        Method::POST,
        "/v1/admin/tenants/acme/tokens",
        &alice,
        None,
    )
    .await;
    t.settle(copilot_projector::Projection::Tenants).await;
    let page: Value = get_json(&t, "/v1/audit?actor=alice", &alice).await;
    let first: Value = get_json(&t, "/v1/audit?limit=1", &alice).await;
    let next: Value = send(
        &t,
        Method::GET,
        &format!(
            "/v1/audit?limit=1&cursor={}",
            first["next_cursor"].as_str().unwrap()
        ),
        &alice,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let users: Value = get_json(&t, "/v1/audit?target=user:", &alice).await;
    let viewer = send(&t, Method::GET, "/v1/audit", &t.acme.viewer_jwt, None).await;
    let globex_admin = t.user_jwt("globex", "alice", Role::Admin).await;
    let foreign: Value = get_json(&t, "/v1/audit?actor=alice", &globex_admin).await;

    let items = page["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["WebhookTokenIssued", "TenantRetentionSet", "UserAdded"],
        "newest first"
    );
    for entry in items {
        assert_eq!(entry["request_id"], "req-trust-1");
        assert_eq!(entry["source_addr"], "127.0.0.1");
        assert!(
            entry["details"].get("token_hash").is_none(),
            "no hashes in the audit log"
        );
    }
    assert_eq!(items[2]["target"], "user:dave");
    assert_eq!(items[1]["details"]["retention"]["signals_days"], 30);
    assert_ne!(first["items"][0]["event_id"], next["items"][0]["event_id"]);
    assert!(
        users["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["target"].as_str().unwrap().starts_with("user:"))
    );
    assert!(!users["items"].as_array().unwrap().is_empty());
    assert_eq!(viewer.status(), 403);
    assert!(
        foreign["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["target"] != "user:dave"),
        "globex's audit log holds none of acme's commands"
    );
}

#[tokio::test]
async fn row_level_security_hides_other_tenants_rows_from_a_query_that_forgets_its_filter() {
    let t = TestApp::spawn().await;
    for (tenant, token) in [
        ("acme", &t.acme.webhook_token),
        ("globex", &t.globex.webhook_token),
    ] {
        let r = t.post_webhook("alertmanager", token, firing(tenant)).await;
        assert_eq!(r.status(), 202);
    }
    t.settle(copilot_projector::Projection::Signals).await;
    let store = &t.ctx().store;

    let mut tx = store.begin_tenant("acme").await.unwrap();
    let tenants: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant FROM signals")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let tokens: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant FROM webhook_tokens")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let slugs: Vec<String> = sqlx::query_scalar("SELECT slug FROM tenants")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let users: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tenant FROM users")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    let mut unscoped = store.begin().await.unwrap();
    let all: i64 = sqlx::query_scalar("SELECT count(DISTINCT tenant) FROM signals")
        .fetch_one(&mut *unscoped)
        .await
        .unwrap();

    assert_eq!(tenants, ["acme"]);
    assert_eq!(tokens, ["acme"]);
    assert_eq!(slugs, ["acme"]);
    assert_eq!(users, ["acme"]);
    assert_eq!(
        all, 2,
        "the services that work across tenants still see both"
    );

    // The full-text search function (which runs as the owner, for the index) finds only the
    // transaction's tenant's incidents, and nothing outside a tenant transaction.
    let search = "SELECT i.tenant FROM incidents i WHERE i.id IN (SELECT copilot_incident_search('higherrorrate'))";
    let found = copilot_e2e::poll(Duration::from_secs(20), || async {
        let mut tx = store.begin_tenant("acme").await.unwrap();
        let tenants: Vec<String> = sqlx::query_scalar(search)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        (!tenants.is_empty()).then_some(tenants)
    })
    .await;
    let mut unscoped = store.begin().await.unwrap();
    let outside: Vec<String> = sqlx::query_scalar(search)
        .fetch_all(&mut *unscoped)
        .await
        .unwrap();
    assert_eq!(found, ["acme"]);
    assert!(outside.is_empty(), "{outside:?}");
}

#[tokio::test]
async fn a_tenant_over_its_rate_limit_gets_429_with_retry_after_and_others_do_not() {
    let t = TestApp::spawn_with(Services::HttpOnly, |s| {
        s.limits.webhook_rate_per_sec = 1;
        s.limits.webhook_burst = 3;
        s.limits.api_rate_per_sec = 1;
        s.limits.api_burst = 3;
    })
    .await;

    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = t
            .post_webhook(
                "alertmanager",
                &t.acme.webhook_token,
                firing(&format!("s{i}")),
            )
            .await;
        statuses.push((r.status().as_u16(), r.headers().get("retry-after").cloned()));
    }
    let others = t
        .post_webhook("alertmanager", &t.globex.webhook_token, firing("x"))
        .await;
    let mut api = Vec::new();
    for _ in 0..6 {
        api.push(
            t.get("/v1/signals", &t.acme.viewer_jwt)
                .await
                .status()
                .as_u16(),
        );
    }
    let metrics = t.get("/metrics", "").await.text().await.unwrap();

    // The burst passes; past it, at 1/s, some are refused (how many depends on the machine's pace).
    assert!(statuses[..3].iter().all(|(s, _)| *s == 202), "{statuses:?}");
    let refused: Vec<_> = statuses[3..].iter().filter(|(s, _)| *s == 429).collect();
    assert!(!refused.is_empty(), "{statuses:?}");
    assert!(refused.iter().all(|(_, retry)| {
        retry
            .as_ref()
            .is_some_and(|v| v.to_str().unwrap().parse::<u64>().unwrap() >= 1)
    }));
    assert_eq!(others.status(), 202, "other tenants have their own bucket");
    assert!(api[..3].iter().all(|s| *s == 200), "{api:?}");
    assert!(api[3..].contains(&429), "{api:?}");
    let counted = |scope: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("rate_limited_total{{scope=\"{scope}\"}} ")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(counted("webhooks"), refused.len() as u64, "{metrics}");
    assert!(counted("api") >= 1);
}

#[tokio::test]
async fn settings_are_validated_on_write_and_secrets_are_named_never_stored() {
    let t = TestApp::spawn_with(Services::All, |s| {
        s.tenancy.tenant_env_allow = Some("acme=ACME_SLACK_SIGNING_SECRET".into());
    })
    .await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    let legacy = json!({"slack": {"team_id": "T0123ABCD", "signing_secret_env": "ACME_SLACK_SIGNING_SECRET"}});
    let put = |body: Value| {
        send(
            &t,
            Method::PUT,
            "/v1/settings/integrations",
            &alice,
            Some(body),
        )
    };

    let allowed_variable = put(legacy.clone()).await;
    let other_variable =
        put(json!({"slack": {"team_id": "T0123ABCD", "signing_secret_env": "COPILOT_JWT_SECRET"}}))
            .await;
    let unknown_secret =
        put(json!({"slack": {"team_id": "T0123ABCD", "signing_secret": "slack-signing"}})).await;
    let pasted_value = put(
        json!({"slack": {"team_id": "T0123ABCD", "signing_secret": "8f742231b10e8888abcd99yyyzzz85a5"}}),
    )
    .await;
    let bad_team = put(json!({"slack": {"team_id": "nope", "signing_secret": "x"}})).await;
    let bad_retention = send(
        &t,
        Method::PUT,
        "/v1/settings/retention",
        &alice,
        Some(json!({"signals_days": 0, "incidents_days": 10})),
    )
    .await;
    t.settle(copilot_projector::Projection::Tenants).await;
    let read: Value = get_json(&t, "/v1/settings/integrations", &alice).await;
    let retention: Value = get_json(&t, "/v1/settings/retention", &alice).await;

    assert_eq!(allowed_variable.status(), 202, "the operator allows it");
    assert_eq!(other_variable.status(), 422, "the operator does not");
    assert_eq!(
        unknown_secret.status(),
        422,
        "a secret must be stored first"
    );
    assert_eq!(pasted_value.status(), 422, "a value is not a secret's name");
    assert_eq!(bad_team.status(), 422);
    assert_eq!(bad_retention.status(), 422);
    assert_eq!(read["slack"], legacy["slack"]);
    assert_eq!(
        retention,
        json!({"signals_days": 90, "incidents_days": 365}),
        "defaults until set"
    );
}

#[tokio::test]
async fn a_tenant_secret_is_written_once_and_never_read_back_by_anyone() {
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    let value = "sk-live-ACME-0123456789abcdef";
    let path = "/v1/settings/secrets/openai";

    let first: Value = send(&t, Method::PUT, path, &alice, Some(json!({"value": value})))
        .await
        .json()
        .await
        .unwrap();
    let second: Value = send(
        &t,
        Method::PUT,
        path,
        &alice,
        Some(json!({"value": "sk-2"})),
    )
    .await
    .json()
    .await
    .unwrap();
    let viewer = send(
        &t,
        Method::GET,
        "/v1/settings/secrets",
        &t.acme.viewer_jwt,
        None,
    )
    .await;
    let bad_name = send(
        &t,
        Method::PUT,
        "/v1/settings/secrets/Bad%20Name",
        &alice,
        Some(json!({"value": "x"})),
    )
    .await;
    let control = send(
        &t,
        Method::PUT,
        path,
        &alice,
        Some(json!({"value": "a\u{1b}b"})),
    )
    .await;
    t.settle(copilot_projector::Projection::Tenants).await;
    let listed = get_json(&t, "/v1/settings/secrets", &alice).await;
    let foreign = get_json(
        &t,
        "/v1/settings/secrets",
        &t.user_jwt("globex", "alice", Role::Admin).await,
    )
    .await;
    let audit = get_json(&t, "/v1/audit?actor=alice", &alice).await;
    let stream = t.ctx().js.get_stream("TENANTS").await.unwrap();
    let mut events = String::new();
    for seq in 1..=t.stream_last_seq("TENANTS").await {
        let message = stream.get_raw_message(seq).await.unwrap();
        events.push_str(&String::from_utf8_lossy(&message.payload));
    }
    let row: (Vec<u8>, String) = sqlx::query_as(
        "SELECT ciphertext, key_id FROM tenant_secrets WHERE tenant = 'acme' AND name = 'openai'",
    )
    .fetch_one(&sqlx::PgPool::connect(&t.db.url).await.unwrap())
    .await
    .unwrap();

    assert_eq!(first["version"], 1);
    assert_eq!(second["version"], 2);
    assert_ne!(first["fingerprint"], second["fingerprint"]);
    assert!(first.get("value").is_none());
    assert_eq!(viewer.status(), 403);
    assert_eq!(bad_name.status(), 422);
    assert_eq!(control.status(), 422);
    assert_eq!(listed["items"][0]["name"], "openai");
    assert_eq!(listed["items"][0]["version"], 2);
    assert_eq!(listed["items"][0]["fingerprint"], second["fingerprint"]);
    assert_eq!(
        foreign["items"],
        json!([]),
        "another tenant sees none of it"
    );
    let secret_entries: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "secret:openai")
        .collect();
    assert_eq!(secret_entries.len(), 2, "{audit}");
    assert!(
        secret_entries
            .iter()
            .all(|e| e["details"].get("fingerprint").is_some()),
        "{audit}"
    );
    for place in [listed.to_string(), audit.to_string(), events] {
        assert!(!place.contains(value) && !place.contains("sk-2"), "{place}");
    }
    assert!(
        !String::from_utf8_lossy(&row.0).contains("sk-2"),
        "sealed at rest"
    );
    assert_eq!(row.1, "test");
}

#[tokio::test]
async fn after_a_key_rotation_rekey_reseals_every_secret_with_the_new_key() {
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    for name in ["openai", "slack"] {
        let r = send(
            &t,
            Method::PUT,
            &format!("/v1/settings/secrets/{name}"),
            &alice,
            Some(json!({"value": format!("{name}-value")})),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let old = copilot_runtime::settings::ExposeSecret::expose_secret(
        t.ctx().settings.tenancy.secrets_key.as_ref().unwrap(),
    )
    .to_owned();
    let new = copilot_runtime::secrets::generate_key("next");
    let mut settings = (*t.ctx().settings).clone();
    settings.tenancy.secrets_key = Some(format!("{new},{old}").into());

    copilot::secrets::run(settings, copilot::cli::SecretsCommand::Rekey)
        .await
        .unwrap();

    let only_new = copilot_runtime::secrets::SecretKeys::parse(&new).unwrap();
    for name in ["openai", "slack"] {
        let row = t
            .ctx()
            .store
            .sealed_secret("acme", name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.key_id, "next");
        let sealed = copilot_runtime::secrets::Sealed {
            key_id: row.key_id,
            nonce: row.nonce,
            ciphertext: row.ciphertext,
        };
        assert_eq!(
            only_new
                .open("acme", name, row.version as u32, &sealed)
                .unwrap(),
            format!("{name}-value")
        );
    }
}

#[tokio::test]
async fn a_removed_user_s_token_never_speaks_for_a_new_user_of_the_same_id() {
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    let add = || {
        send(
            &t,
            Method::POST,
            "/v1/admin/tenants/acme/users",
            &alice,
            Some(
                json!({"user_id": "frank", "email": "frank@acme.test", "display_name": "Frank", "role": "admin"}),
            ),
        )
    };

    // The attack found 4 of 4 tries within one second; try as often, each within one second.
    for attempt in 0..4 {
        assert!(add().await.status().is_success(), "attempt {attempt}");
        let old = t.user_jwt("acme", "frank", Role::Admin).await;
        let removed = send(
            &t,
            Method::DELETE,
            "/v1/admin/tenants/acme/users/frank",
            &alice,
            None,
        )
        .await;
        assert_eq!(removed.status(), 204);
        assert!(add().await.status().is_success());

        let status = send(&t, Method::GET, "/v1/me", &old, None).await.status();
        let fresh = t.user_jwt("acme", "frank", Role::Admin).await;

        assert_eq!(
            status, 401,
            "attempt {attempt}: the old token speaks for the new frank"
        );
        assert_eq!(
            send(&t, Method::GET, "/v1/me", &fresh, None).await.status(),
            200
        );
        send(
            &t,
            Method::DELETE,
            "/v1/admin/tenants/acme/users/frank",
            &alice,
            None,
        )
        .await;
    }
}

#[tokio::test]
async fn system_actors_cannot_be_impersonated_by_users() {
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;

    let mut statuses = Vec::new();
    for id in ["correlator", "cli", "up", "System", "system:correlator"] {
        let r = send(
            &t,
            Method::POST,
            "/v1/admin/tenants/acme/users",
            &alice,
            Some(json!({"user_id": id, "email": format!("x{}@acme.test", statuses.len()), "display_name": "X", "role": "admin"})),
        )
        .await;
        statuses.push(r.status().as_u16());
    }
    t.settle(copilot_projector::Projection::Tenants).await;
    let audit = get_json(&t, "/v1/audit", &alice).await;

    assert_eq!(statuses, [422; 5]);
    // What the system did is recorded as the system: the tenant's creation here.
    let actors: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert!(
        actors
            .iter()
            .all(|a| a.starts_with("system:") || *a == "alice" || *a == "test"),
        "{actors:?}"
    );
}

#[tokio::test]
async fn one_user_s_burst_leaves_the_rest_of_the_tenant_its_share() {
    let t = TestApp::spawn_with(Services::HttpOnly, |s| {
        s.limits.api_rate_per_sec = 2;
        s.limits.api_burst = 20;
        s.limits.api_user_rate_per_sec = 1;
        s.limits.api_user_burst = 5;
    })
    .await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;

    let mut viewer = Vec::new();
    for _ in 0..20 {
        viewer.push(t.get("/v1/me", &t.acme.viewer_jwt).await.status().as_u16());
    }
    let admin = t.get("/v1/me", &alice).await;

    assert!(viewer[..5].iter().all(|s| *s == 200), "{viewer:?}");
    assert!(viewer[5..].contains(&429), "{viewer:?}");
    assert_eq!(admin.status(), 200, "the admin is not locked out");
}

#[tokio::test]
async fn a_source_guessing_credentials_is_slowed_down_and_counted() {
    let t = TestApp::spawn_with(Services::HttpOnly, |s| s.limits.auth_failures_per_min = 3).await;
    let known_before = t
        .post_webhook("alertmanager", &t.acme.webhook_token, firing("x"))
        .await;

    let mut webhooks = Vec::new();
    for i in 0..5 {
        let r = t
            .post_webhook("alertmanager", &format!("cpw_guess{i}"), firing("x"))
            .await;
        webhooks.push(r.status().as_u16());
    }
    let known_now = t
        .post_webhook("alertmanager", &t.acme.webhook_token, firing("x"))
        .await;
    let unknown_now = t
        .post_webhook("alertmanager", &t.globex.webhook_token, firing("x"))
        .await;
    let mut api = Vec::new();
    for i in 0..4 {
        api.push(
            t.get("/v1/me", &format!("not.a.jwt{i}"))
                .await
                .status()
                .as_u16(),
        );
    }
    let good_jwt = t.get("/v1/me", &t.acme.viewer_jwt).await;
    let metrics = t.get("/metrics", "").await.text().await.unwrap();

    assert_eq!(known_before.status(), 202);
    assert_eq!(webhooks[..3], [401, 401, 401]);
    assert_eq!(webhooks[3..], [429, 429]);
    assert_eq!(
        known_now.status(),
        202,
        "a token known good still works from the guesser's address (a shared NAT)"
    );
    assert_eq!(
        unknown_now.status(),
        429,
        "a token not yet seen from a held-back source is not looked up"
    );
    assert!(unknown_now.headers().contains_key("retry-after"));
    assert_eq!(api, [401, 401, 401, 429]);
    assert_eq!(
        good_jwt.status(),
        200,
        "a token that verifies is never held back"
    );
    // The registry is the process's: other tests here fail authentication too, none is held back.
    let counted = |series: &str| copilot_e2e::metric(&metrics, series);
    assert!(
        counted("auth_failures_total{scope=\"webhooks\"}") >= 3,
        "{metrics}"
    );
    assert_eq!(
        counted("rate_limited_total{scope=\"webhooks_auth_failures\"}"),
        3,
        "{metrics}"
    );
}

#[tokio::test]
async fn basic_auth_with_another_tenant_s_name_gets_401_naming_no_tenant() {
    let t = TestApp::spawn().await;
    let ops = platform(&t);
    send(
        &t,
        Method::POST,
        "/v1/admin/tenants/globex/suspend",
        &ops,
        Some(json!({"reason": "audit"})),
    )
    .await;
    t.settle(copilot_projector::Projection::Tenants).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the gateway's token cache

    let r = t
        .http
        .post(format!("{}/v1/webhooks/alertmanager", t.url))
        .basic_auth("acme", Some(&t.globex.webhook_token))
        .header("content-type", "application/json")
        .body(firing("x"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();

    assert_eq!(status, 401);
    assert!(!body.contains("globex"), "{body}");
}

/// An error answer's status and problem detail.
async fn problem(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a problem body");
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn the_cli_and_the_api_give_the_same_answer_to_the_same_bad_input() {
    // Arrange: one admin (the tenant's only one, `admin`, plus alice) and a table of bad inputs.
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    let settings = (*t.ctx().settings).clone();
    let add = |user_id: &str, email: &str, name: &str, slack: Option<&str>| {
        (
            json!({"user_id": user_id, "email": email, "display_name": name, "role": "viewer", "slack_user_id": slack}),
            copilot::cli::UsersCommand::Add {
                tenant: "acme".into(),
                user_id: user_id.into(),
                email: email.into(),
                name: name.into(),
                role: Role::Viewer,
                slack_user_id: slack.map(str::to_owned),
            },
        )
    };
    let table = [
        add("a b", "ab@acme.test", "A B", None),
        add("correlator", "c@acme.test", "C", None),
        add("zoe", "not-an-email", "Zoe", None),
        add("zoe", "zoe@acme.test", " ", None),
        add("zoe", "zoe@acme.test", "Zoe", Some("lowercase")),
        add("alice", "alice2@acme.test", "Alice", None),
        add("zoe", "alice@acme.test", "Zoe", None),
    ];

    for (body, command) in table {
        // Act
        let api = send(
            &t,
            Method::POST,
            "/v1/admin/tenants/acme/users",
            &alice,
            Some(body.clone()),
        )
        .await;
        let (status, detail) = problem(api).await;
        let cli = copilot::admin::users(settings.clone(), command)
            .await
            .unwrap_err();

        // Assert
        assert!([409, 422].contains(&status), "{body}: {status}");
        assert_eq!(cli.to_string(), detail, "{body}");
    }
    // Tenants (the platform's), and secrets.
    let ops = platform(&t);
    for (body, slug, email) in [
        (json!({"slug": "Bad Slug"}), "Bad Slug", None),
        (
            json!({"slug": "newco", "admin_email": "nope"}),
            "newco",
            Some("nope"),
        ),
    ] {
        let api = send(
            &t,
            Method::POST,
            "/v1/admin/tenants",
            &ops,
            Some(body.clone()),
        )
        .await;
        let (status, detail) = problem(api).await;
        let cli = copilot::admin::tenants(
            settings.clone(),
            copilot::cli::TenantsCommand::Create {
                slug: slug.into(),
                name: None,
                admin_email: email.map(str::to_owned),
                json: false,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(status, 422, "{body}");
        assert_eq!(cli.to_string(), detail, "{body}");
    }
    let api = send(
        &t,
        Method::PUT,
        "/v1/settings/secrets/Bad%20Name",
        &alice,
        Some(json!({"value": "v"})),
    )
    .await;
    let (_, detail) = problem(api).await;
    let cli = copilot::secrets::run(
        settings.clone(),
        copilot::cli::SecretsCommand::Set {
            tenant: "acme".into(),
            name: "Bad Name".into(),
            // A variable every process has, as the value; the name is what is wrong.
            from_env: Some("PATH".into()),
            origin: None,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(cli.to_string(), detail);

    let demote_api = send(
        &t,
        Method::PATCH,
        "/v1/admin/tenants/acme/users/alice",
        &alice,
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(demote_api.status(), 200, "another admin (`admin`) remains");
    let last = copilot::admin::users(
        settings.clone(),
        copilot::cli::UsersCommand::Remove {
            tenant: "acme".into(),
            user_id: "admin".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        last.to_string(),
        "this is the tenant's last admin: make another user admin first"
    );
}

#[tokio::test]
async fn two_admins_demoting_each_other_at_once_leave_the_tenant_an_admin() {
    // Arrange: exactly two admins, `admin` (the first) and alice.
    let t = TestApp::spawn().await;
    let alice = t.user_jwt("acme", "alice", Role::Admin).await;
    let body = Some(json!({"role": "viewer"}));
    let (admin_path, alice_path) = (
        "/v1/admin/tenants/acme/users/admin",
        "/v1/admin/tenants/acme/users/alice",
    );

    // Act: both demotions decided on the same people, at once.
    let (first, second) = tokio::join!(
        send(&t, Method::PATCH, admin_path, &alice, body.clone()),
        send(&t, Method::PATCH, alice_path, &alice, body.clone())
    );
    t.settle(copilot_projector::Projection::Tenants).await;
    let people = copilot::admin::users(
        (*t.ctx().settings).clone(),
        copilot::cli::UsersCommand::List {
            tenant: "acme".into(),
        },
    )
    .await;

    // Assert: one won; the other lost the race (409) or saw the last admin (409).
    let statuses = [first.status().as_u16(), second.status().as_u16()];
    assert!(
        statuses.contains(&200) && statuses.contains(&409),
        "{statuses:?}"
    );
    assert!(people.is_ok());
    let mut tx = t.ctx().store.begin().await.unwrap();
    let admins = t
        .ctx()
        .store
        .list_users(&mut tx, "acme")
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.role == "admin")
        .count();
    assert_eq!(admins, 1);
}
