//! The copilot as a citizen of a Prometheus and Grafana stack: its metrics move with traffic,
//! every dashboard query runs, the compose file, Prometheus and Alertmanager configurations are
//! valid, and its own alert rules pass their unit tests.

use std::path::Path;

use copilot::app::Services;
use copilot_e2e::{TestApp, alertmanager_payload, prometheus::Prometheus, workspace_root};
use copilot_projector::Projection;
use serde_json::{Value, json};

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A YAML file as JSON, with `<<` merge keys applied as Compose applies them.
fn read_yaml(path: &Path) -> Value {
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    yaml.apply_merge().unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// Every target of every panel of a dashboard: `(panel title, query)` for `field` (`rawSql`
/// or `expr`).
fn queries(dashboard: &Value, field: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(q) = target[field].as_str() {
                out.push((panel["title"].as_str().unwrap().to_owned(), q.to_owned()));
            }
        }
    }
    out
}

/// A tenant's Grafana reader role, made by `copilot tenants grafana-reader`, and a pool logged in
/// as it. Roles are the Postgres server's, not the test database's: it is dropped with the test.
struct GrafanaReader {
    role: String,
    pool: sqlx::PgPool,
    admin_url: String,
}

impl GrafanaReader {
    async fn make(t: &TestApp, tenant: &str) -> Self {
        let role = format!("grafana_test_{}", uuid::Uuid::new_v4().simple());
        let settings = copilot_e2e::settings(&t.nats, &t.db);
        copilot::admin::tenants(
            settings,
            copilot::cli::TenantsCommand::GrafanaReader {
                slug: tenant.into(),
                role: Some(role.clone()),
                password: Some("reader-password".into()),
            },
        )
        .await
        .unwrap();
        let mut url = url::Url::parse(&t.db.url).unwrap();
        url.set_username(&role).unwrap();
        url.set_password(Some("reader-password")).unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url.as_str())
            .await
            .unwrap();
        Self {
            role,
            pool,
            admin_url: t.db.url.clone(),
        }
    }
}

impl Drop for GrafanaReader {
    fn drop(&mut self) {
        // On a thread and runtime of its own: the test's runtime is the one blocked here. The
        // reader's sessions are ended first (its pool lives on the test's runtime).
        let (role, url) = (self.role.clone(), self.admin_url.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let admin = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                )
                .bind(&role)
                .execute(&admin)
                .await
                .unwrap();
                for statement in [
                    format!("DROP OWNED BY \"{role}\""),
                    format!("DROP ROLE \"{role}\""),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(statement))
                        .execute(&admin)
                        .await
                        .unwrap();
                }
                admin.close().await;
            });
        })
        .join()
        .unwrap();
    }
}

/// Grafana's Postgres macros and variables, expanded as Grafana would for a wide time range.
fn expand_sql(sql: &str) -> String {
    let mut sql = sql.replace("$tenant", "acme");
    while let Some(start) = sql.find("$__timeGroupAlias(") {
        let end = start + sql[start..].find(')').unwrap();
        let column = sql[start + "$__timeGroupAlias(".len()..end]
            .split(',')
            .next()
            .unwrap()
            .trim()
            .to_owned();
        sql.replace_range(
            start..=end,
            &format!("date_trunc('hour', {column}) AS time"),
        );
    }
    while let Some(start) = sql.find("$__timeFilter(") {
        let end = start + sql[start..].find(')').unwrap();
        let column = sql[start + "$__timeFilter(".len()..end].trim().to_owned();
        sql.replace_range(
            start..=end,
            &format!("{column} BETWEEN '2000-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z'"),
        );
    }
    sql
}

#[tokio::test]
async fn every_sql_panel_of_the_incident_dashboard_runs_against_real_read_models() {
    let t = TestApp::spawn_with(Services::All, |s| {
        s.hypothesis.settle_ms = 200;
    })
    .await;
    for (service, severity) in [("checkout", "critical"), ("search", "warning")] {
        let body = alertmanager_payload(
            "firing",
            &[
                (
                    "KubeDeploymentGenerationMismatch",
                    service,
                    "warning",
                    "2026-11-22T08:00:00Z",
                ),
                ("HighErrorRate", service, severity, "2026-11-22T08:01:00Z"),
            ],
        );
        let r = t
            .post_webhook("alertmanager", &t.acme.webhook_token, body)
            .await;
        assert_eq!(r.status(), 202);
    }
    // Wait for hypotheses, then confirm one so the verdict panels have rows.
    let id = copilot_e2e::poll_json(&t, "/v1/incidents?service=checkout", |page| {
        page["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let hid = copilot_e2e::poll_json(&t, &format!("/v1/incidents/{id}"), |d| {
        d["hypotheses"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let jwt = t
        .user_jwt("acme", "bob", copilot_events::Role::Engineer)
        .await;
    let r = t
        .http
        .post(format!(
            "{}/v1/incidents/{id}/hypotheses/{hid}/verdict",
            t.url
        ))
        .bearer_auth(jwt)
        .json(&json!({"verdict": "confirmed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    t.settle(Projection::Incidents).await;

    let dashboard = read_json(&workspace_root().join("dashboards/incidents.json"));
    let mut panels = queries(&dashboard, "rawSql");
    let variable = dashboard["templating"]["list"][0]["query"]
        .as_str()
        .unwrap()
        .to_owned();
    panels.push(("$tenant variable".into(), variable));
    assert!(panels.len() >= 8);
    // Another tenant's incident, which acme's Grafana must never show.
    t.fire(&t.globex, "DiskFull", "ledger").await;
    copilot_e2e::poll_json(&t, "/v1/incidents?service=checkout", |_| Some(())).await;
    t.settle(Projection::Incidents).await;
    // Grafana reads as acme's reader role, made as the CLI makes it.
    let reader = GrafanaReader::make(&t, "acme").await;
    let pool = &reader.pool;
    let (all, as_reader): (i64, i64) = (
        sqlx::query_scalar("SELECT count(*) FROM incidents")
            .fetch_one(t.ctx().store.pool())
            .await
            .unwrap(),
        sqlx::query_scalar("SELECT count(*) FROM incidents")
            .fetch_one(pool)
            .await
            .unwrap(),
    );
    assert!(
        all > as_reader && as_reader > 0,
        "acme's reader sees acme's incidents only ({as_reader} of {all})"
    );
    let tenants: Vec<String> = sqlx::query_scalar("SELECT slug FROM tenants")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(tenants, ["acme"]);
    // Setting the tenant the API's role reads by changes nothing for the reader.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET copilot.tenant = 'globex'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let globex: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents WHERE tenant = 'globex'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(globex, 0);
    assert!(
        sqlx::query("SELECT * FROM tenant_secrets")
            .fetch_all(&mut *conn)
            .await
            .is_err(),
        "secrets are not the reader's"
    );
    drop(conn);
    for (title, sql) in &panels {
        let rows = sqlx::query(sqlx::AssertSqlSafe(expand_sql(sql)))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("panel {title:?} fails: {e}\n{sql}"));
        let must_have_rows = [
            "Open incidents by severity",
            "Noisiest services",
            "Hypotheses confirmed vs refuted",
            "Top hypotheses by cause",
            "$tenant variable",
        ];
        if must_have_rows.contains(&title.as_str()) {
            assert!(
                !rows.is_empty(),
                "panel {title:?} shows nothing over real data"
            );
        }
    }
}

#[tokio::test]
async fn every_promql_expression_of_the_pipeline_dashboard_and_the_rules_is_valid() {
    let Some(prometheus) = Prometheus::start("global:\n  scrape_interval: 15s\n").await else {
        return;
    };
    let dashboard = read_json(&workspace_root().join("dashboards/pipeline.json"));
    let mut exprs = queries(&dashboard, "expr");
    let rules = read_yaml(&workspace_root().join("deploy/prometheus/rules/copilot.rules.yml"));
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        exprs.push((
            rule["alert"].as_str().unwrap().to_owned(),
            rule["expr"].as_str().unwrap().to_owned(),
        ));
    }
    assert!(exprs.len() >= 12);
    // A valid expression over a misspelled metric is silently empty: every metric named must be
    // one the copilot defines.
    let defined = ["metrics.rs", "taskqueue.rs"]
        .map(|file| {
            std::fs::read_to_string(workspace_root().join("services/runtime/src").join(file))
                .unwrap()
        })
        .concat();
    for (title, expr) in &exprs {
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let metric = token.strip_suffix("_bucket").unwrap_or(token);
            let named = ["_total", "_seconds", "_messages", "_sequence"]
                .iter()
                .any(|suffix| metric.ends_with(suffix));
            if named {
                assert!(
                    defined.contains(&format!("\"{metric}\"")),
                    "{title} uses {metric}, which the copilot does not define"
                );
            }
        }
    }
    let http = reqwest::Client::new();
    for (title, expr) in exprs {
        let expr = expr.replace("$__rate_interval", "1m");
        let answer: Value = http
            .get(format!("{}/api/v1/query", prometheus.url))
            .query(&[("query", expr.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{title}: {expr}\n{answer}");
    }
}

fn run(tool: &str, args: &[&str]) -> Option<std::process::Output> {
    let Some(binary) = copilot_e2e::prometheus::binary(tool) else {
        eprintln!(
            "skipped: no {tool} on this machine (Debian packages prometheus, prometheus-alertmanager)"
        );
        return None;
    };
    Some(
        std::process::Command::new(binary)
            .args(args)
            .current_dir(workspace_root())
            .output()
            .unwrap(),
    )
}

fn assert_ok(what: &str, output: Option<std::process::Output>) {
    if let Some(output) = output {
        assert!(
            output.status.success(),
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_prometheus_and_alertmanager_configurations_and_the_alert_rules_pass_their_checks() {
    assert_ok(
        "promtool check config",
        run(
            "promtool",
            &[
                "check",
                "config",
                "--syntax-only",
                "deploy/prometheus/prometheus.yml",
            ],
        ),
    );
    assert_ok(
        "promtool check rules",
        run(
            "promtool",
            &[
                "check",
                "rules",
                "deploy/prometheus/rules/copilot.rules.yml",
            ],
        ),
    );
    assert_ok(
        "promtool test rules",
        run(
            "promtool",
            &[
                "test",
                "rules",
                "deploy/prometheus/rules/copilot.rules.test.yml",
            ],
        ),
    );
    assert_ok(
        "amtool check-config",
        run(
            "amtool",
            &["check-config", "deploy/alertmanager/alertmanager.yml"],
        ),
    );
}

#[test]
fn the_compose_file_follows_the_compose_specification_and_binds_only_loopback() {
    let root = workspace_root();
    let compose = read_yaml(&root.join("compose.yaml"));
    let mut schema = read_json(&root.join("deploy/compose/compose-spec.json"));
    // The file names its draft with a trailing `#`, which the validator does not resolve.
    schema.as_object_mut().unwrap().remove("$schema");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft201909)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&compose)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    let services = compose["services"].as_object().unwrap();
    for name in [
        "nats",
        "postgres",
        "copilot",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name}");
    }
    let scaled: Vec<&String> = services
        .iter()
        .filter(|(_, s)| {
            s["profiles"]
                .as_array()
                .is_some_and(|p| p.contains(&json!("scale")))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(scaled.iter().filter(|n| n.starts_with("gateway")).count() >= 2);
    assert!(scaled.iter().filter(|n| n.starts_with("projector")).count() >= 2);
    for (name, service) in services {
        for port in service["ports"].as_array().into_iter().flatten() {
            assert!(
                port.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if let Some(path) = source.strip_prefix("./") {
                assert!(root.join(path).exists(), "{name} mounts missing {source}");
            }
        }
        let worker = [
            "projector",
            "correlator",
            "hypothesis",
            "migrate",
            "grafana-reader",
        ]
        .iter()
        .any(|w| name.starts_with(w));
        assert!(
            worker || service.get("healthcheck").is_some(),
            "{name} has no healthcheck"
        );
    }
}

#[tokio::test]
async fn metrics_move_with_traffic_through_every_stage() {
    let t = TestApp::spawn_with(Services::All, |s| {
        s.hypothesis.settle_ms = 200;
    })
    .await;
    let body = alertmanager_payload(
        "firing",
        &[(
            "HighErrorRate",
            "metrics",
            "critical",
            "2026-11-22T08:00:00Z",
        )],
    );
    assert_eq!(
        t.post_webhook("alertmanager", &t.acme.webhook_token, body)
            .await
            .status(),
        202
    );
    copilot_e2e::poll_json(&t, "/v1/incidents?service=metrics", |page| {
        page["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let id = copilot_e2e::poll_json(&t, "/v1/incidents?service=metrics", |page| {
        page["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    copilot_e2e::poll_json(&t, &format!("/v1/incidents/{id}"), |d| {
        d["hypotheses_proposal"]["engine"]
            .as_str()
            .map(str::to_owned)
    })
    .await;

    let text = t
        .http
        .get(format!("{}/metrics", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in /metrics"))
    };
    assert!(
        value(
            r#"http_requests_total{method="POST",route="/v1/webhooks/alertmanager",service="gateway",status="202"}"#
        ) >= 1.0
    );
    assert!(value(r#"events_appended_total{outcome="ok",stream="SIGNALS"}"#) >= 1.0);
    assert!(value(r#"events_projected_total{projection="signals"}"#) >= 1.0);
    assert!(value(r#"events_projected_total{projection="incidents"}"#) >= 2.0);
    assert!(value(r#"correlator_decisions_total{kind="IncidentOpened"}"#) >= 1.0);
    assert!(value(r#"hypotheses_proposed_total{engine="builtin"}"#) >= 1.0);
    assert!(value(r#"projection_last_event_timestamp_seconds{projection="signals"}"#) > 1.7e9);
    for gauge in [
        "consumer_pending_messages{",
        "consumer_ack_pending_messages{",
        "projection_lag_seconds{",
    ] {
        assert!(text.contains(gauge), "no {gauge} in /metrics");
    }
}

#[tokio::test]
async fn a_webhooks_trace_context_travels_into_every_event_derived_from_it() {
    let t = TestApp::spawn_with(Services::All, |s| {
        s.hypothesis.settle_ms = 200;
    })
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = alertmanager_payload(
        "firing",
        &[(
            "HighErrorRate",
            "traced",
            "critical",
            "2026-11-22T08:00:00Z",
        )],
    );
    let response = t
        .http
        .post(format!("{}/v1/webhooks/alertmanager", t.url))
        .bearer_auth(&t.acme.webhook_token)
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answered = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        answered.starts_with(&format!("00-{trace}-")) && !answered.contains("00f067aa0ba902b7")
    );
    let id = copilot_e2e::poll_json(&t, "/v1/incidents?service=traced", |page| {
        page["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    copilot_e2e::poll_json(&t, &format!("/v1/incidents/{id}"), |d| {
        d["hypotheses_proposal"]["engine"]
            .as_str()
            .map(str::to_owned)
    })
    .await;

    let mut traced = Vec::new();
    for stream in [
        copilot_events::subjects::SIGNALS,
        copilot_events::subjects::INCIDENTS,
    ] {
        let s = t.ctx().js.get_stream(stream).await.unwrap();
        let last = t.stream_last_seq(stream).await;
        for seq in 1..=last {
            let message = s.get_raw_message(seq).await.unwrap();
            let envelope = copilot_events::Envelope::from_slice(&message.payload).unwrap();
            let header = message
                .headers
                .get("traceparent")
                .map(|v| v.as_str().to_owned());
            assert_eq!(header, envelope.traceparent, "header and envelope agree");
            if envelope
                .traceparent
                .as_deref()
                .is_some_and(|tp| tp.contains(trace))
            {
                traced.push(envelope.event_type);
            }
        }
    }
    for kind in [
        "SignalReceived",
        "IncidentOpened",
        "SignalAttached",
        "HypothesesProposed",
    ] {
        assert!(
            traced.iter().any(|t| t == kind),
            "{kind} carries the trace: {traced:?}"
        );
    }
}
