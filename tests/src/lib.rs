//! The end-to-end test harness. Every test gets its own `nats-server -js` (free port, temporary
//! store, killed on drop) and its own Postgres database (dropped on drop), and runs the real
//! services in-process, so tests run in parallel and leave nothing behind.
//!
//! Postgres: `COPILOT_TEST_DATABASE_URL` names a server and a database to connect to for
//! creating test databases (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! nats-server: found on PATH or in /usr/sbin.

pub mod fake_llm;
pub mod prometheus;

use std::{path::PathBuf, time::Duration};

use copilot::app::{App, Services};
use copilot_events::Role;
use copilot_runtime::{Context, Settings};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures");
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

/// Reads a file of `../shared/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub use copilot::local::{EphemeralNats as NatsServer, ScratchDatabase as TestDb};

/// Admin URL of the Postgres server tests create their databases on.
pub fn admin_database_url() -> String {
    std::env::var("COPILOT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of the test's own.
pub async fn test_db() -> TestDb {
    TestDb::create(&admin_database_url(), "copilot_test")
        .await
        .expect("creating a test database")
}

/// Where a rebuild goes: a fresh database of the test's own, migrated, and a context on it and
/// the test's NATS (`rebuilt.store` to compare, `copilot_projector::catch_up` to fold into).
pub async fn rebuild_target(nats: &NatsServer) -> (TestDb, Context) {
    let db = test_db().await;
    let rebuilt = Context::connect(settings(nats, &db), "rebuild")
        .await
        .expect("connecting the rebuild");
    rebuilt
        .store
        .migrate()
        .await
        .expect("migrating the rebuild");
    (db, rebuilt)
}

/// A tenant of the test system with its credentials.
pub struct TestTenant {
    pub slug: String,
    pub webhook_token: String,
    pub token_id: uuid::Uuid,
    pub viewer_jwt: String,
}

/// The whole system, started in-process against the test's own NATS and database.
pub struct TestApp {
    pub app: Option<App>,
    pub nats: NatsServer,
    pub db: TestDb,
    pub url: String,
    pub http: reqwest::Client,
    pub acme: TestTenant,
    pub globex: TestTenant,
}

/// Settings pointing at a test's NATS and database, on a free port.
pub fn settings(nats: &NatsServer, db: &TestDb) -> Settings {
    let mut settings = Settings::defaults();
    settings.nats.url = Some(nats.url());
    settings.database.url = Some(db.url.clone());
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.jwt.secret = Some(JWT_SECRET.to_owned().into());
    settings.nats.publish_timeout_ms = 1000;
    settings.database.max_connections = 8;
    settings.log_format = copilot_runtime::telemetry::LogFormat::Text;
    // Hypotheses only where a test asks for them: a proposal moves an incident's version.
    settings.hypothesis.settle_ms = 3_600_000;
    // Rate limits only where a test asks for them: tests poll fast.
    settings.limits.webhook_rate_per_sec = 0;
    settings.limits.api_rate_per_sec = 0;
    settings.limits.api_user_rate_per_sec = 0;
    settings.limits.auth_failures_per_min = 0;
    // Test servers (models, Prometheus) listen on loopback, as on the laptop `copilot up` is
    // made for; the egress tests take this allowance away.
    settings.tenancy.egress_allow = Some("127.0.0.0/8,::1".to_owned());
    settings.tenancy.secrets_key = Some(copilot_runtime::secrets::generate_key("test").into());
    settings
}

impl TestApp {
    /// Everything `copilot up` runs, with tenants `acme` and `globex`.
    pub async fn spawn() -> Self {
        Self::spawn_with(Services::All, |_| {}).await
    }

    pub async fn spawn_with(services: Services, tweak: impl FnOnce(&mut Settings)) -> Self {
        copilot_runtime::telemetry::init_for_tests("info");
        let nats = NatsServer::start().await.expect("starting nats-server");
        let db = test_db().await;
        let mut settings = settings(&nats, &db);
        tweak(&mut settings);
        let app = App::start(settings, services)
            .await
            .expect("starting the app");
        let url = app.url();
        let acme = tenant(&app, "acme").await;
        let globex = tenant(&app, "globex").await;
        Self {
            app: Some(app),
            nats,
            db,
            url,
            http: reqwest::Client::new(),
            acme,
            globex,
        }
    }

    pub fn ctx(&self) -> &Context {
        &self.app.as_ref().expect("app running").ctx
    }

    /// Posts a webhook body with a bearer token.
    pub async fn post_webhook(
        &self,
        source: &str,
        token: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/webhooks/{source}", self.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// One firing Alertmanager alert (`alertname` on `service`, critical) for `tenant`, which
    /// must be taken (202).
    pub async fn fire(&self, tenant: &TestTenant, alertname: &str, service: &str) {
        let body = alertmanager_payload(
            "firing",
            &[(alertname, service, "critical", "2026-11-22T08:00:00Z")],
        );
        let r = self
            .post_webhook("alertmanager", &tenant.webhook_token, body)
            .await;
        assert_eq!(r.status(), 202, "the webhook is taken");
    }

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, jwt: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(jwt)
            .send()
            .await
            .expect("request sent")
    }

    /// Revokes a webhook token and waits until the projector has recorded it.
    pub async fn revoke_webhook_token(&self, tenant: &str, token_id: uuid::Uuid) {
        copilot_commands::revoke_webhook_token(
            &self.ctx().js,
            &self.ctx().store,
            tenant,
            token_id,
            None,
            "test",
            Default::default(),
        )
        .await
        .expect("revoking a token");
        self.settle(copilot_projector::Projection::Tenants).await;
    }

    /// A JWT of user `user_id` of `tenant`, adding the user with `role` first if there is none.
    pub async fn user_jwt(&self, tenant: &str, user_id: &str, role: Role) -> String {
        user_jwt(
            self.app.as_ref().expect("app running"),
            tenant,
            user_id,
            role,
        )
        .await
    }

    /// A platform operator's JWT (valid 10 minutes).
    pub fn platform_jwt(&self) -> String {
        self.app
            .as_ref()
            .expect("app running")
            .jwt
            .issue_platform("ops", Duration::from_secs(600))
            .expect("issuing a platform JWT")
    }

    /// `GET /metrics`: the process's metrics as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("metrics text")
    }

    /// Messages in a stream now.
    pub async fn stream_messages(&self, stream: &str) -> u64 {
        self.stream_state(stream).await.messages
    }

    /// Sequence of the last message of a stream now.
    pub async fn stream_last_seq(&self, stream: &str) -> u64 {
        self.stream_state(stream).await.last_sequence
    }

    async fn stream_state(&self, stream: &str) -> async_nats::jetstream::stream::State {
        copilot_runtime::nats::stream_state(&self.ctx().js, stream)
            .await
            .expect("stream info")
    }

    /// Waits until the projection has applied everything its stream holds now.
    pub async fn settle(&self, projection: copilot_projector::Projection) {
        copilot_projector::catch_up(self.ctx(), projection, Duration::from_secs(20))
            .await
            .expect("the projection catches up");
    }
}

async fn tenant(app: &App, slug: &str) -> TestTenant {
    let created = copilot::cli::create_tenant(&app.ctx, slug, slug, "test")
        .await
        .expect("creating tenant");
    TestTenant {
        slug: slug.to_owned(),
        webhook_token: created.webhook_token,
        token_id: created.token_id,
        viewer_jwt: people(app, slug).await,
    }
}

/// Adds the people every test tenant has: `tester` (viewer), `bob` and `eve` (engineers) and
/// `alice` (admin); returns tester's JWT.
async fn people(app: &App, slug: &str) -> String {
    user_jwt(app, slug, "alice", Role::Admin).await;
    user_jwt(app, slug, "bob", Role::Engineer).await;
    user_jwt(app, slug, "eve", Role::Engineer).await;
    user_jwt(app, slug, "tester", Role::Viewer).await
}

/// A JWT of user `user_id` of `tenant` (valid 10 minutes), adding the user with `role` first
/// if there is none.
pub async fn user_jwt(app: &App, tenant: &str, user_id: &str, role: Role) -> String {
    let ctx = &app.ctx;
    let find = || async {
        let mut tx = ctx.store.begin().await.expect("a transaction");
        ctx.store
            .find_user(&mut tx, tenant, user_id)
            .await
            .expect("reading users")
    };
    if find().await.is_none() {
        let user = copilot_commands::NewUser {
            user_id: user_id.to_owned(),
            email: format!("{user_id}@{tenant}.test"),
            display_name: user_id.to_owned(),
            role,
            slack_user_id: None,
        };
        copilot_commands::add_user(
            &ctx.js,
            &ctx.store,
            tenant,
            user,
            "test",
            Default::default(),
        )
        .await
        .expect("adding a user");
        copilot_projector::catch_up(
            ctx,
            copilot_projector::Projection::Tenants,
            Duration::from_secs(20),
        )
        .await
        .expect("the user is projected");
    }
    let user = find().await.expect("the user exists");
    app.jwt
        .issue(
            user_id,
            tenant,
            user.incarnation(),
            role,
            Duration::from_secs(600),
        )
        .expect("issuing a JWT")
}

/// The value of one series (`name{labels}`, as exposed) in a metrics text; 0 when absent. The
/// registry is the test process's, shared by the tests running beside each other.
pub fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Polls `check` until it holds, failing the test after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll(timeout, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
}

/// Polls `check` until it gives a value, failing the test after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `path` as acme's viewer until `pick` finds what it wants in the JSON (30 s at most).
pub async fn poll_json<T>(
    t: &TestApp,
    path: &str,
    pick: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body: serde_json::Value = t
            .get(path, &t.acme.viewer_jwt)
            .await
            .json()
            .await
            .unwrap_or_default();
        if let Some(found) = pick(&body) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} did not show what was awaited within 30s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An Alertmanager v4 notification with one alert per `(alertname, service, severity, startsAt)`.
pub fn alertmanager_payload(status: &str, alerts: &[(&str, &str, &str, &str)]) -> Vec<u8> {
    let alerts: Vec<_> = alerts
        .iter()
        .map(|(name, service, severity, starts_at)| {
            serde_json::json!({
                "status": status,
                "labels": {"alertname": name, "service": service, "severity": severity},
                "annotations": {"summary": format!("{name} on {service}")},
                "startsAt": starts_at,
                "endsAt": if status == "resolved" { "2026-11-22T10:00:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": "http://prometheus:9090/graph",
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "version": "4", "status": status, "receiver": "copilot", "groupKey": "{}:{}",
        "truncatedAlerts": 0, "externalURL": "http://alertmanager:9093", "alerts": alerts,
    }))
    .unwrap()
}

/// Path of the workspace root, for tests that read committed files.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
