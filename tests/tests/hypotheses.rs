//! Hypotheses: the model engine against a real HTTP server speaking the OpenAI protocol, the
//! built-in engine on the scenario cases, and the hypothesis service end to end (debounce,
//! proposals, history, verdicts, usage) against a real nats-server and Postgres.

use std::time::Duration;

use copilot::app::Services;
use copilot_e2e::{
    TestApp, alertmanager_payload,
    fake_llm::{FakeLlm, Reply},
    poll,
};
use copilot_events::{CauseKind, Role};
use copilot_hypothesis::{Engine, evidence, llm::LlmConfig};
use copilot_projector::Projection;
use serde_json::{Value, json};

fn cases() -> Vec<copilot::eval::Case> {
    copilot::eval::load_cases(&copilot_e2e::workspace_root().join("eval/hypotheses")).unwrap()
}

fn case(name: &str) -> copilot::eval::Case {
    cases().into_iter().find(|c| c.name == name).unwrap()
}

fn llm(server: &FakeLlm, timeout: Duration) -> Engine {
    Engine::Llm(LlmConfig {
        base_url: server.base_url(),
        model: "test-model".into(),
        api_key: Some("test-key".into()),
        timeout,
        egress: None,
        key_error: None,
    })
}

#[tokio::test]
async fn the_model_engine_keeps_cited_hypotheses_and_drops_a_hallucinated_citation() {
    let input = case("rollout-checkout-5xx").input();
    let given = evidence::assemble(&input, 6000);
    let first = given.items[0].id.clone();
    let answer = json!({"inconclusive": false, "hypotheses": [
        {"cause": "rollout", "component": "checkout", "title": "The checkout rollout broke it",
         "confidence": 0.7, "evidence": [first], "reasoning": "rollout right before the 5xx",
         "next_step": "roll back checkout"},
        {"cause": "saturation", "component": "checkout", "title": "CPU ran out",
         "confidence": 0.6, "evidence": ["sig-000000000000"], "reasoning": "made up",
         "next_step": "check CPU"}]});
    let server = FakeLlm::start(Reply::Content(answer.to_string())).await;

    let conclusion =
        copilot_hypothesis::conclude(&llm(&server, Duration::from_secs(5)), &input, 6000).await;

    assert_eq!(conclusion.engine, "llm");
    assert_eq!(conclusion.dropped_for_citations, 1);
    assert_eq!(conclusion.hypotheses.len(), 1);
    assert_eq!(conclusion.hypotheses[0].cause, CauseKind::Rollout);
    assert_eq!(conclusion.hypotheses[0].id, "rollout:checkout");
    assert_eq!(conclusion.usage.prompt_tokens, 812);
    let call = conclusion.call.unwrap();
    assert_eq!((call.outcome, call.usage.completion_tokens), ("ok", 164));
    let request = &server.requests()[0];
    assert_eq!(request["model"], "test-model");
    assert_eq!(request["response_format"]["type"], "json_schema");
    assert!(
        request["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains(&given.items[0].id)
    );
}

#[tokio::test]
async fn a_failing_slow_or_incoherent_model_leaves_the_answer_to_the_built_in_engine() {
    let input = case("rollout-checkout-5xx").input();
    let server = FakeLlm::start(Reply::Status(500)).await;
    for (reply, outcome) in [
        (Reply::Status(404), "error"),
        (Reply::Stall(Duration::from_secs(3)), "timeout"),
        (
            Reply::Content("Sure! The root cause is probably the database.".into()),
            "invalid",
        ),
        (
            Reply::Content(json!({"hypotheses": "none"}).to_string()),
            "invalid",
        ),
    ] {
        server.set(reply);
        let started = std::time::Instant::now();

        let conclusion =
            copilot_hypothesis::conclude(&llm(&server, Duration::from_millis(400)), &input, 6000)
                .await;

        assert_eq!(conclusion.engine, "builtin", "{outcome}");
        assert_eq!(conclusion.call.as_ref().unwrap().outcome, outcome);
        assert!(conclusion.fallback_reason.is_some());
        assert_eq!(conclusion.hypotheses[0].cause, CauseKind::Rollout);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{outcome} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_model_failing_with_5xx_is_retried_within_its_timeout_then_left() {
    let input = case("rollout-checkout-5xx").input();
    let server = FakeLlm::start(Reply::Status(503)).await;

    let conclusion =
        copilot_hypothesis::conclude(&llm(&server, Duration::from_millis(1500)), &input, 6000)
            .await;

    assert_eq!(conclusion.engine, "builtin");
    assert!(matches!(
        conclusion.call.unwrap().outcome,
        "error" | "timeout"
    ));
    assert!(
        server.requests().len() >= 2,
        "async-openai retries server errors"
    );
}

#[tokio::test]
async fn the_built_in_engine_names_the_true_cause_of_the_scenario_cases() {
    let cases = cases();
    assert!(cases.len() >= 15);

    let report = copilot::eval::evaluate(&Engine::Builtin, &cases, 6000).await;

    assert!(
        report.top1_accuracy >= 0.85,
        "top-1 {:.2}",
        report.top1_accuracy
    );
    assert_eq!(report.citation_validity, 1.0);
    for outcome in &report.outcomes {
        let total: f64 = outcome.ranked.iter().map(|(_, c)| c).sum();
        assert!(total <= 1.0, "{}: confidences sum to {total}", outcome.name);
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

pub(crate) async fn post(t: &TestApp, alerts: &[(&str, &str, &str, &str)]) {
    let r = t
        .post_webhook(
            "alertmanager",
            &t.acme.webhook_token,
            alertmanager_payload("firing", alerts),
        )
        .await;
    assert_eq!(r.status(), 202);
}

/// The one incident of `service`, once it has a proposal.
pub(crate) async fn incident_with_hypotheses(t: &TestApp, service: &str) -> Value {
    poll(Duration::from_secs(30), || async {
        let page = json_of(
            t.get(
                &format!("/v1/incidents?service={service}"),
                &t.acme.viewer_jwt,
            )
            .await,
        )
        .await;
        let id = page["items"][0]["id"].as_str()?.to_owned();
        let detail = json_of(
            t.get(&format!("/v1/incidents/{id}"), &t.acme.viewer_jwt)
                .await,
        )
        .await;
        detail["hypotheses_proposal"].is_object().then_some(detail)
    })
    .await
}

/// An engineer's verdict on a hypothesis; the answer's status.
async fn engineer_verdict(t: &TestApp, id: &str, hid: &str, verdict: &str) -> u16 {
    let engineer = t.user_jwt("acme", "bob", Role::Engineer).await;
    t.http
        .post(format!(
            "{}/v1/incidents/{id}/hypotheses/{hid}/verdict",
            t.url
        ))
        .bearer_auth(engineer)
        .json(&json!({"verdict": verdict}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub(crate) fn fast_hypotheses(
    min_interval_secs: u64,
) -> impl FnOnce(&mut copilot_runtime::Settings) {
    move |s| {
        s.hypothesis.settle_ms = 300;
        s.hypothesis.min_interval_secs = min_interval_secs;
    }
}

#[tokio::test]
async fn an_incident_gets_cited_hypotheses_and_analysts_give_verdicts() {
    let t = TestApp::spawn_with(Services::All, fast_hypotheses(60)).await;
    post(
        &t,
        &[(
            "KubeDeploymentGenerationMismatch",
            "checkout",
            "warning",
            "2026-11-22T08:00:00Z",
        )],
    )
    .await;
    post(
        &t,
        &[(
            "HTTP5xxRateHigh",
            "checkout",
            "critical",
            "2026-11-22T08:02:00Z",
        )],
    )
    .await;

    let detail = incident_with_hypotheses(&t, "checkout").await;
    let id = detail["id"].as_str().unwrap().to_owned();
    assert_eq!(detail["hypotheses_proposal"]["engine"], "builtin");
    let top = &detail["hypotheses"][0];
    assert_eq!(top["cause"], "rollout");
    assert!(top["next_step"].as_str().unwrap().len() > 10);
    let history = json_of(
        t.get(
            &format!("/v1/incidents/{id}/hypotheses?history=true"),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    let evidence: Vec<&str> = history["items"][0]["event"]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for cited in top["evidence"].as_array().unwrap() {
        assert!(
            evidence.contains(&cited.as_str().unwrap()),
            "{cited} is in the snapshot"
        );
    }

    let verdict = |jwt: String, hid: &str| {
        let url = format!("{}/v1/incidents/{id}/hypotheses/{hid}/verdict", t.url);
        let http = t.http.clone();
        async move {
            http.post(url)
                .bearer_auth(jwt)
                .json(&json!({"verdict": "confirmed", "note": "rolled back"}))
                .send()
                .await
                .unwrap()
        }
    };
    let engineer = t.user_jwt("acme", "bob", Role::Engineer).await;
    let foreign = t.user_jwt("globex", "eve", Role::Engineer).await;
    assert_eq!(
        verdict(t.acme.viewer_jwt.clone(), "rollout:checkout")
            .await
            .status(),
        403
    );
    assert_eq!(
        verdict(engineer.clone(), "saturation:nothing")
            .await
            .status(),
        404
    );
    assert_eq!(verdict(foreign, "rollout:checkout").await.status(), 404);
    assert_eq!(verdict(engineer, "rollout:checkout").await.status(), 202);
    t.settle(Projection::Incidents).await;
    let detail = json_of(
        t.get(&format!("/v1/incidents/{id}"), &t.acme.viewer_jwt)
            .await,
    )
    .await;
    assert_eq!(detail["hypotheses"][0]["verdict"], "confirmed");
    assert_eq!(detail["hypotheses"][0]["verdict_by"], "bob");
}

#[tokio::test]
async fn an_alert_storm_on_one_incident_costs_one_engine_run_per_interval() {
    let t = TestApp::spawn_with(Services::All, fast_hypotheses(3600)).await;
    // A second instance of the service on the same NATS and database, sharing the work.
    let mut second = copilot_e2e::settings(&t.nats, &t.db);
    fast_hypotheses(3600)(&mut second);
    let second = copilot_runtime::Context::connect(second, "second")
        .await
        .unwrap();
    let stop_second = tokio_util::sync::CancellationToken::new();
    let second_instance = tokio::spawn(copilot_hypothesis::serve(second, stop_second.clone()));
    for batch in 0..10 {
        let names: Vec<String> = (0..20).map(|i| format!("Alert{batch}x{i}")).collect();
        let alerts: Vec<(&str, &str, &str, &str)> = names
            .iter()
            .map(|n| (n.as_str(), "storm", "warning", "2026-11-22T08:00:00Z"))
            .collect();
        post(&t, &alerts).await;
    }
    let detail = incident_with_hypotheses(&t, "storm").await;
    let id: uuid::Uuid = detail["id"].as_str().unwrap().parse().unwrap();
    // More alerts after the run: due again only after the interval (an hour here).
    post(&t, &[("Late", "storm", "critical", "2026-11-22T08:05:00Z")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop_second.cancel();
    second_instance.await.unwrap().unwrap();
    assert_eq!(t.ctx().store.hypothesis_runs("acme", id).await.unwrap(), 1);
    let history = json_of(
        t.get(
            &format!("/v1/incidents/{id}/hypotheses?history=true"),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_later_proposal_supersedes_the_earlier_and_says_what_changed() {
    let t = TestApp::spawn_with(Services::All, fast_hypotheses(1)).await;
    post(
        &t,
        &[(
            "HighErrorRate",
            "search",
            "critical",
            "2026-11-22T08:02:00Z",
        )],
    )
    .await;
    let first = incident_with_hypotheses(&t, "search").await;
    let id = first["id"].as_str().unwrap().to_owned();
    let first_proposal = first["hypotheses_proposal"]["proposal_id"].clone();

    // Saturation evidence that began before the errors.
    post(
        &t,
        &[(
            "CPUThrottlingHigh",
            "search",
            "warning",
            "2026-11-22T08:00:00Z",
        )],
    )
    .await;
    let history = poll(Duration::from_secs(30), || async {
        let history = json_of(
            t.get(
                &format!("/v1/incidents/{id}/hypotheses?history=true"),
                &t.acme.viewer_jwt,
            )
            .await,
        )
        .await;
        (history["items"].as_array().unwrap().len() >= 2).then_some(history)
    })
    .await;

    let newest = &history["items"][0];
    assert_eq!(newest["event"]["supersedes"], first_proposal);
    assert_eq!(newest["hypotheses"][0]["cause"], "saturation");
    let changes = newest["event"]["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["hypothesis_id"] == "saturation:search" && c["change"] == "new"),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c["hypothesis_id"] == "other:search" && c["change"] == "dropped"),
        "{changes:?}"
    );
    let current = json_of(
        t.get(
            &format!("/v1/incidents/{id}/hypotheses"),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    assert_eq!(current["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn model_calls_are_recorded_as_usage_with_tokens_outcome_and_cost() {
    let server = FakeLlm::start(Reply::Status(404)).await;
    let base_url = server.base_url();
    let t = TestApp::spawn_with(Services::All, move |s| {
        s.hypothesis.settle_ms = 300;
        s.hypothesis.llm.base_url = Some(base_url);
        s.hypothesis.llm.model = Some("test-model".into());
        s.hypothesis.llm.timeout_ms = 2000;
        s.hypothesis.llm.price_prompt_per_1k = 0.01;
        s.hypothesis.llm.price_completion_per_1k = 0.03;
    })
    .await;
    // The model fails: the built-in engine answers and the failed call is recorded.
    post(
        &t,
        &[("HighErrorRate", "pay", "critical", "2026-11-22T08:00:00Z")],
    )
    .await;
    let failed = incident_with_hypotheses(&t, "pay").await;
    assert_eq!(failed["hypotheses_proposal"]["engine"], "builtin");

    // The model answers: its proposal is used and its tokens are counted.
    let detail = {
        server.set(Reply::Content(
            json!({"inconclusive": true, "hypotheses": []}).to_string(),
        ));
        post(
            &t,
            &[(
                "HighErrorRate",
                "ledger",
                "critical",
                "2026-11-22T08:00:00Z",
            )],
        )
        .await;
        incident_with_hypotheses(&t, "ledger").await
    };
    assert_eq!(detail["hypotheses_proposal"]["engine"], "llm");
    assert_eq!(detail["hypotheses_proposal"]["inconclusive"], true);
    t.settle(Projection::Telemetry).await;

    let usage = t.ctx().store.usage_by_outcome("acme").await.unwrap();
    assert_eq!(
        usage,
        vec![("error".into(), 1, 0, 0), ("ok".into(), 1, 812, 164)]
    );
    let metrics = t
        .http
        .get(format!("{}/metrics", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("model_calls_total{engine=\"llm\",outcome=\"ok\"}"),
        "{metrics}"
    );
}

/// A scrape target whose 5xx share grows with every scrape.
pub(crate) async fn rising_errors_target() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let scrapes = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = scrapes.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let ok = n * 100;
                let errors = n * n * 2;
                format!(
                    "# TYPE http_requests_total counter\n\
                     http_requests_total{{service=\"checkout\",code=\"200\"}} {ok}\n\
                     http_requests_total{{service=\"checkout\",code=\"500\"}} {errors}\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    )
}

#[tokio::test]
async fn metric_evidence_is_read_from_a_real_prometheus_and_summarised() {
    let (target, _server) = rising_errors_target().await;
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
    );
    let Some(prometheus) = copilot_e2e::prometheus::Prometheus::start(&config).await else {
        return;
    };
    let url = prometheus.url.clone();
    let templates = vec![copilot_hypothesis::metrics::QueryTemplate {
        name: "error_ratio".into(),
        query: r#"sum(rate(http_requests_total{service="{service}",code=~"5.."}[5s])) / sum(rate(http_requests_total{service="{service}"}[5s]))"#.into(),
    }];
    let started = chrono::Utc::now();

    // Wait until Prometheus has scraped enough for a rate, then fetch as the service would.
    let summaries = poll(Duration::from_secs(30), || async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = chrono::Utc::now();
        let found = copilot_hypothesis::metrics::fetch(
            &url,
            None,
            &templates,
            &["checkout".to_owned(), "bad\"name".to_owned()],
            started - chrono::Duration::seconds(30),
            now,
            Duration::from_secs(2),
        )
        .await;
        found
            .first()
            .is_some_and(|s| s.last > s.first && s.max > 0.05)
            .then_some(found)
    })
    .await;
    drop(prometheus);

    assert_eq!(
        summaries.len(),
        1,
        "one service (the unsafe name is not queried)"
    );
    let s = &summaries[0];
    assert_eq!(
        (s.name.as_str(), s.service.as_str()),
        ("error_ratio", "checkout")
    );
    assert!(s.trend() > 0.0 && s.max <= 1.0, "{s:?}");
    assert!(s.query.contains(r#"service="checkout""#));
}

#[tokio::test]
async fn tenant_integrations_pick_the_tenants_model_and_send_it_the_tenants_own_secret() {
    let server = FakeLlm::start(Reply::Content(
        json!({"inconclusive": true, "hypotheses": []}).to_string(),
    ))
    .await;
    let t = TestApp::spawn_with(Services::All, fast_hypotheses(60)).await;
    let admin = t.user_jwt("acme", "alice", Role::Admin).await;
    let put = |jwt: String, body: Value| {
        let (http, url) = (
            t.http.clone(),
            format!("{}/v1/settings/integrations", t.url),
        );
        async move {
            http.put(url)
                .bearer_auth(jwt)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let stored = put_json(
        &t,
        "/v1/settings/secrets/acme-model-key",
        &admin,
        &json!({"value": "sk-acme-only"}),
    )
    .await;
    assert_eq!(stored.status(), 200);
    let settings = json!({"llm": {"base_url": server.base_url(), "model": "acme-model", "api_key_secret": "acme-model-key"}});
    assert_eq!(
        put(t.acme.viewer_jwt.clone(), settings.clone())
            .await
            .status(),
        403
    );
    assert_eq!(
        put(
            admin.clone(),
            json!({"llm": {"base_url": "x", "model": "m"}})
        )
        .await
        .status(),
        422
    );
    assert_eq!(
        put(
            admin.clone(),
            json!({"llm": {"base_url": "http://x/v1", "model": "m", "api_key": "sk-1"}})
        )
        .await
        .status(),
        422
    );
    assert_eq!(put(admin, settings.clone()).await.status(), 202);
    t.settle(Projection::Tenants).await;
    let read = json_of(t.get("/v1/settings/integrations", &t.acme.viewer_jwt).await).await;
    assert_eq!(read["llm"]["model"], "acme-model");
    assert_eq!(read["llm"]["api_key_secret"], "acme-model-key");
    assert!(read["llm"].get("api_key").is_none());
    let other = json_of(
        t.get("/v1/settings/integrations", &t.globex.viewer_jwt)
            .await,
    )
    .await;
    assert_eq!(
        other,
        json!({"prometheus_url": null, "llm": null, "status": {"slack": null}})
    );

    post(
        &t,
        &[("HighErrorRate", "api", "critical", "2026-11-22T08:00:00Z")],
    )
    .await;
    let detail = incident_with_hypotheses(&t, "api").await;

    assert_eq!(detail["hypotheses_proposal"]["engine"], "llm");
    assert_eq!(detail["hypotheses_proposal"]["model"], "acme-model");
    assert_eq!(server.requests()[0]["model"], "acme-model");
    assert_eq!(
        server.authorizations()[0].as_deref(),
        Some("Bearer sk-acme-only")
    );
}

/// `PUT path` with a JSON body, as a tenant's admin would.
async fn put_json(t: &TestApp, path: &str, jwt: &str, body: &Value) -> reqwest::Response {
    t.http
        .put(format!("{}{path}", t.url))
        .bearer_auth(jwt)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Why the current proposal of an incident came from the built-in engine, as any viewer of the
/// tenant reads it.
async fn fallback_reason(t: &TestApp, detail: &Value) -> String {
    let id = detail["id"].as_str().unwrap();
    let proposals = json_of(
        t.get(
            &format!("/v1/incidents/{id}/hypotheses"),
            &t.acme.viewer_jwt,
        )
        .await,
    )
    .await;
    assert!(
        !proposals.to_string().contains("scripted failure"),
        "an upstream body reached the tenant: {proposals}"
    );
    proposals["items"][0]["event"]["fallback_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The incident of an `api` alert of acme, with the proposal made under `integrations`.
async fn proposal_under(t: &TestApp, integrations: Value) -> Value {
    append_integrations(t, "acme", integrations).await;
    post(
        t,
        &[("HighErrorRate", "api", "critical", "2026-11-22T08:00:00Z")],
    )
    .await;
    incident_with_hypotheses(t, "api").await
}

/// Settings of `tenant` appended as they were before tenant secrets, or as if the write-time
/// checks had been passed (a name that resolved elsewhere then): what the hypothesis service
/// does with them is what counts.
async fn append_integrations(t: &TestApp, tenant: &str, integrations: Value) {
    let event = copilot_events::TenantIntegrationsSet {
        integrations: serde_json::from_value(integrations).unwrap(),
        set_by: "alice".into(),
    };
    copilot_commands::append_on(
        &t.ctx().js,
        copilot_events::subjects::tenant(tenant),
        tenant,
        &event,
        Default::default(),
    )
    .await
    .unwrap();
    t.settle(Projection::Tenants).await;
}

#[tokio::test]
async fn a_setting_naming_the_platforms_secret_variable_is_refused_and_never_sends_it() {
    let server = FakeLlm::start(Reply::Content(
        json!({"inconclusive": true, "hypotheses": []}).to_string(),
    ))
    .await;
    let t = TestApp::spawn_with(Services::All, fast_hypotheses(60)).await;
    let admin = t.user_jwt("acme", "alice", Role::Admin).await;
    let before = t.stream_messages("TENANTS").await;

    // The attack: name the platform's JWT secret (or the database URL) as the model's key.
    for variable in ["COPILOT_JWT_SECRET", "DATABASE_URL", "HOME"] {
        let r = put_json(
            &t,
            "/v1/settings/integrations",
            &admin,
            &json!({"llm": {"base_url": server.base_url(), "model": "m", "api_key_env": variable}}),
        )
        .await;
        assert_eq!(r.status(), 422, "{variable}");
        assert!(r.text().await.unwrap().contains("secret"));
    }
    assert_eq!(
        t.stream_messages("TENANTS").await,
        before,
        "nothing appended"
    );

    // A setting from before tenant secrets that names a variable of the copilot's process
    // (HOME is set in every test process) is not honoured either: no key is sent anywhere.
    let detail = proposal_under(
        &t,
        json!({"llm": {"base_url": server.base_url(), "model": "m", "api_key_env": "HOME"}}),
    )
    .await;

    assert_eq!(detail["hypotheses_proposal"]["engine"], "builtin");
    let reason = fallback_reason(&t, &detail).await;
    assert!(reason.contains("does not allow"), "{reason}");
    assert!(server.requests().is_empty(), "the model was not called");
}

#[tokio::test]
async fn tenant_urls_that_reach_the_platforms_network_are_refused_when_written_and_when_called() {
    let server = FakeLlm::start(Reply::Content(
        json!({"inconclusive": true, "hypotheses": []}).to_string(),
    ))
    .await;
    let t = TestApp::spawn_with(Services::All, |s| {
        fast_hypotheses(60)(s);
        // A shared deployment: tenants' URLs reach public addresses only.
        s.tenancy.egress_allow = None;
    })
    .await;
    let admin = t.user_jwt("acme", "alice", Role::Admin).await;
    let nats_port = t.nats.url().rsplit(':').next().unwrap().to_owned();
    let before = t.stream_messages("TENANTS").await;

    for settings in [
        json!({"prometheus_url": format!("http://127.0.0.1:{nats_port}")}),
        json!({"prometheus_url": "http://169.254.169.254/latest/meta-data/"}),
        json!({"prometheus_url": "http://[::1]:9090"}),
        json!({"prometheus_url": "http://2130706433:9090"}),
        json!({"llm": {"base_url": format!("http://localhost:{}/v1", server.addr.port()), "model": "m"}}),
        json!({"llm": {"base_url": "http://10.0.0.7/v1", "model": "m"}}),
    ] {
        let r = put_json(&t, "/v1/settings/integrations", &admin, &settings).await;
        assert_eq!(r.status(), 422, "{settings}");
        assert!(r.text().await.unwrap().contains("internal address"));
    }
    assert_eq!(
        t.stream_messages("TENANTS").await,
        before,
        "nothing appended"
    );

    // At call time too: a name (here `localhost`) that resolves to loopback is not called,
    // whatever it resolved to when the settings were written.
    let detail = proposal_under(&t, json!({"llm": {"base_url": format!("http://localhost:{}/v1", server.addr.port()), "model": "m"}})).await;

    assert_eq!(detail["hypotheses_proposal"]["engine"], "builtin");
    assert_eq!(
        fallback_reason(&t, &detail).await,
        "the model endpoint is an internal address this tenant's settings may not reach (egress policy)"
    );
    assert!(server.requests().is_empty(), "the model was not called");
    let metrics = t.metrics().await;
    assert!(
        copilot_e2e::metric(&metrics, "egress_refused_total") >= 1,
        "{metrics}"
    );
}

#[tokio::test]
async fn what_a_tenants_model_answers_on_failure_never_reaches_the_tenant() {
    // The endpoint's error body says "scripted failure": a URL pointed at an internal service
    // would put that service's answer here.
    let server = FakeLlm::start(Reply::Status(500)).await;
    let t = TestApp::spawn_with(Services::All, fast_hypotheses(60)).await;
    let detail = proposal_under(
        &t,
        json!({"llm": {"base_url": server.base_url(), "model": "m", "timeout_ms": 1000}}),
    )
    .await;

    let reason = fallback_reason(&t, &detail).await;
    assert!(!server.requests().is_empty(), "the model was called");
    assert!(
        reason == "the model endpoint answered status 500"
            || reason.starts_with("the model did not answer within"),
        "{reason}"
    );
}

#[tokio::test]
async fn proposals_verdicts_and_usage_rebuilt_from_the_streams_equal_the_live_ones() {
    let server = FakeLlm::start(Reply::Content(
        json!({"inconclusive": true, "hypotheses": []}).to_string(),
    ))
    .await;
    let base_url = server.base_url();
    let mut t = TestApp::spawn_with(Services::All, move |s| {
        fast_hypotheses(1)(s);
        s.hypothesis.llm.base_url = Some(base_url);
        s.hypothesis.llm.model = Some("m".into());
    })
    .await;
    post(
        &t,
        &[("HighErrorRate", "web", "critical", "2026-11-22T08:00:00Z")],
    )
    .await;
    let detail = incident_with_hypotheses(&t, "web").await;
    server.set(Reply::Status(404));
    post(
        &t,
        &[(
            "CPUThrottlingHigh",
            "web",
            "warning",
            "2026-11-22T07:59:00Z",
        )],
    )
    .await;
    let id = detail["id"].as_str().unwrap().to_owned();
    let newest = poll(Duration::from_secs(30), || async {
        let h = json_of(
            t.get(
                &format!("/v1/incidents/{id}/hypotheses?history=true"),
                &t.acme.viewer_jwt,
            )
            .await,
        )
        .await;
        (h["items"].as_array().unwrap().len() >= 2).then(|| h["items"][0].clone())
    })
    .await;
    let hid = newest["hypotheses"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(engineer_verdict(&t, &id, &hid, "refuted").await, 202);
    t.settle(Projection::Incidents).await;
    t.settle(Projection::Telemetry).await;
    let tables = [
        copilot_store::ReadModel::HypothesisProposals,
        copilot_store::ReadModel::Hypotheses,
        copilot_store::ReadModel::HypothesisVerdicts,
        copilot_store::ReadModel::UsageEvents,
    ];
    t.app.take().unwrap().stop().await;
    let mut live = Vec::new();
    let store = copilot_store::Store::connect(&t.db.url, 2).await.unwrap();
    for table in tables {
        live.push(store.checksum(table).await.unwrap());
    }
    assert_eq!(
        store.usage_by_outcome("acme").await.unwrap().len(),
        2,
        "an ok and an error call"
    );

    let (_rebuilt_db, rebuilt) = copilot_e2e::rebuild_target(&t.nats).await;
    for projection in [Projection::Incidents, Projection::Telemetry] {
        copilot_projector::catch_up(&rebuilt, projection, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let mut again = Vec::new();
    for table in tables {
        again.push(rebuilt.store.checksum(table).await.unwrap());
    }
    assert_eq!(again, live);
}

#[tokio::test]
async fn a_secret_bound_to_an_origin_is_never_sent_anywhere_else() {
    let server = FakeLlm::start(Reply::Content(
        json!({"inconclusive": true, "hypotheses": []}).to_string(),
    ))
    .await;
    let t = TestApp::spawn_with(Services::All, fast_hypotheses(60)).await;
    let admin = t.user_jwt("acme", "alice", Role::Admin).await;
    let stored = put_json(
        &t,
        "/v1/settings/secrets/openai",
        &admin,
        &json!({"value": "sk-bound-to-openai", "origin": "https://api.openai.com/v1"}),
    )
    .await;
    let stored: Value = stored.json().await.unwrap();
    assert_eq!(stored["origin"], "https://api.openai.com");
    let elsewhere =
        json!({"llm": {"base_url": server.base_url(), "model": "m", "api_key_secret": "openai"}});

    // Another admin of the tenant repoints the model at a server of their own.
    let refused = put_json(&t, "/v1/settings/integrations", &admin, &elsewhere).await;
    let detail = proposal_under(&t, elsewhere).await;

    assert_eq!(refused.status(), 422);
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("may only be sent to https://api.openai.com")
    );
    assert_eq!(detail["hypotheses_proposal"]["engine"], "builtin");
    assert!(
        fallback_reason(&t, &detail)
            .await
            .contains("may only be sent to https://api.openai.com")
    );
    assert!(server.requests().is_empty(), "the model was not called");
}

fn concurrent_cases() -> Vec<copilot::eval::Case> {
    cases()
        .into_iter()
        .filter(|c| c.name.starts_with("concurrent-"))
        .collect()
}

#[tokio::test]
async fn the_built_in_engine_connects_concurrent_incidents_and_blames_no_unrelated_one() {
    let cases = concurrent_cases();
    let unrelated = cases
        .iter()
        .filter(|c| c.concurrent.iter().any(|i| i.unrelated))
        .count();
    assert!(cases.len() - unrelated >= 10 && unrelated >= 3);

    let report = copilot::eval::evaluate(&Engine::Builtin, &cases, 6000).await;

    assert!(
        report.top3_accuracy >= 0.9,
        "top-3 {:.2}",
        report.top3_accuracy
    );
    assert!(
        report.top1_accuracy >= 0.7,
        "top-1 {:.2}",
        report.top1_accuracy
    );
    assert_eq!(report.false_blame_rate, 0.0);
    assert_eq!(report.citation_validity, 1.0);
}

#[tokio::test]
async fn blaming_a_concurrent_incident_marked_unrelated_counts_as_a_false_blame() {
    // The database's incident really is checkout's cause; marked unrelated, blaming it must count.
    let mut case = case("concurrent-postgres-too-many-clients");
    case.concurrent[0].unrelated = true;

    let report = copilot::eval::evaluate(&Engine::Builtin, &[case], 6000).await;

    assert_eq!(report.false_blame_rate, 1.0);
    assert!(report.outcomes[0].false_blame);
}

#[tokio::test]
async fn the_model_is_shown_the_concurrent_incidents_and_may_cite_them() {
    let input = case("concurrent-coredns-servfail").input();
    let given = evidence::assemble(&input, 6000);
    let dns = given
        .items
        .iter()
        .find(|e| e.kind == copilot_events::EvidenceKind::ConcurrentIncident)
        .expect("the CoreDNS incident is evidence")
        .clone();
    let answer = json!({"inconclusive": false, "hypotheses": [
        {"cause": "shared_dependency", "component": "coredns", "title": "CoreDNS is answering SERVFAIL",
         "confidence": 0.8, "evidence": [dns.id], "reasoning": "lookups fail as CoreDNS errors",
         "next_step": "check CoreDNS"}]});
    let server = FakeLlm::start(Reply::Content(answer.to_string())).await;

    let conclusion =
        copilot_hypothesis::conclude(&llm(&server, Duration::from_secs(5)), &input, 6000).await;

    assert_eq!(conclusion.engine, "llm");
    assert_eq!(conclusion.dropped_for_citations, 0);
    assert_eq!(
        conclusion.hypotheses[0].component.as_deref(),
        Some("coredns")
    );
    let prompt = server.requests()[0]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        prompt.contains(&dns.id) && prompt.contains("SERVFAIL"),
        "{prompt}"
    );
}

/// An Alertmanager webhook of one alert with labels and a description.
fn alert(name: &str, service: &str, at: &str, labels: Value, description: &str) -> Vec<u8> {
    let mut all = json!({"alertname": name, "service": service, "severity": "critical"});
    all.as_object_mut()
        .unwrap()
        .extend(labels.as_object().unwrap().clone());
    serde_json::to_vec(&json!({
        "version": "4", "status": "firing", "receiver": "copilot", "groupKey": "{}:{}",
        "truncatedAlerts": 0, "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": "firing", "labels": all,
                    "annotations": {"description": description},
                    "startsAt": at, "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph"}],
    }))
    .unwrap()
}

#[tokio::test]
async fn a_dependency_s_own_incident_is_cited_related_and_linked_once_a_person_confirms_it() {
    let t = TestApp::spawn_with(Services::All, fast_hypotheses(60)).await;
    let token = t.acme.webhook_token.clone();
    let r = t
        .post_webhook(
            "alertmanager",
            &token,
            alert(
                "PostgresqlTooManyConnections",
                "orders-db",
                "2026-11-22T08:00:00Z",
                json!({"job": "postgres-exporter", "instance": "orders-db-0:9187"}),
                "PostgreSQL instance has too many connections (> 80%).",
            ),
        )
        .await;
    assert_eq!(r.status(), 202);
    let db = poll(Duration::from_secs(20), || async {
        let page = json_of(
            t.get("/v1/incidents?service=orders-db", &t.acme.viewer_jwt)
                .await,
        )
        .await;
        page["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let r = t
        .post_webhook(
            "alertmanager",
            &token,
            alert(
                "HighErrorRate",
                "checkout",
                "2026-11-22T08:02:00Z",
                json!({}),
                "5xx on POST /orders: pq: sorry, too many clients already",
            ),
        )
        .await;
    assert_eq!(r.status(), 202);

    let detail = incident_with_hypotheses(&t, "checkout").await;
    let id = detail["id"].as_str().unwrap().to_owned();
    let top = &detail["hypotheses"][0];
    assert_eq!(top["cause"], "shared_dependency");
    assert_eq!(top["component"], "orders-db");
    let hid = top["id"].as_str().unwrap().to_owned();
    let related = &detail["related"][0];
    assert_eq!(related["incident_id"], db.as_str());
    assert!(
        related["reason"]
            .as_str()
            .unwrap()
            .contains("is a database")
    );
    assert_eq!(related["suspected_by"][0], hid.as_str());
    assert!(related.get("confirmed").is_none());

    assert_eq!(engineer_verdict(&t, &id, &hid, "confirmed").await, 202);
    t.settle(Projection::Incidents).await;

    let timeline = json_of(
        t.get(&format!("/v1/incidents/{id}/timeline"), &t.acme.viewer_jwt)
            .await,
    )
    .await;
    let linked: Vec<&Value> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "IncidentLinked")
        .collect();
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0]["payload"]["related_incident_id"], db.as_str());
    assert_eq!(linked[0]["actor"], "bob");
    let checkout = json_of(
        t.get(&format!("/v1/incidents/{id}"), &t.acme.viewer_jwt)
            .await,
    )
    .await;
    assert_eq!(checkout["related"][0]["confirmed"], "caused_by");
    let database = json_of(
        t.get(&format!("/v1/incidents/{db}"), &t.acme.viewer_jwt)
            .await,
    )
    .await;
    let back: Vec<&Value> = database["related"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["incident_id"] == id.as_str())
        .collect();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["confirmed"], "caused");
}
