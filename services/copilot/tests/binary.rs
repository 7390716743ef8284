//! The `copilot` binary as a user runs it: `copilot up` against a NATS server and a database of
//! the test's own, its printed instructions followed to the letter, and `copilot tenants create`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use copilot::local::{EphemeralNats, ScratchDatabase, local_admin_url};

fn copilot(
    nats: &EphemeralNats,
    db: &ScratchDatabase,
    data_dir: &std::path::Path,
    port: u16,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_copilot"));
    cmd.env("NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("COPILOT_LISTEN", format!("127.0.0.1:{port}"))
        .env("COPILOT_DATA_DIR", data_dir)
        .env("COPILOT_LOG_FORMAT", "text")
        .env_remove("COPILOT_JWT_SECRET");
    cmd
}

/// The value printed after `label` on a banner line.
fn field<'a>(banner: &'a str, label: &str) -> &'a str {
    banner
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the banner has no {label:?} line:\n{banner}"))
}

#[tokio::test]
async fn copilot_up_prints_working_instructions_and_tenants_create_prints_json() {
    let nats = EphemeralNats::start().await.unwrap();
    let db = ScratchDatabase::create(&local_admin_url(), "copilot_bin")
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut up = copilot(&nats, &db, data_dir.path(), port)
        .arg("up")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut banner = String::new();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let started = Instant::now();
    while !banner.contains("curl -sS http") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no banner in 60 s:\n{banner}"
        );
        let line = lines
            .next()
            .expect("copilot up stopped before printing its banner")
            .unwrap();
        banner.push_str(&line);
        banner.push('\n');
    }
    let url = field(&banner, "Alertmanager webhook").to_owned();
    let token = field(&banner, "webhook token").to_owned();
    let jwt = field(&banner, "admin JWT (30 days)").to_owned();
    let http = reqwest::Client::new();
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/alertmanager-v4-firing-1alert-alerta.json"
    ))
    .unwrap();

    let accepted = http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let signals_url = format!("http://127.0.0.1:{port}/v1/signals");
    let mut seen = 0;
    for _ in 0..100 {
        let page: serde_json::Value = http
            .get(&signals_url)
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen = page["items"].as_array().map_or(0, Vec::len);
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen, 1,
        "the alert sent as the banner says is readable with the printed JWT"
    );
    assert!(
        banner.contains(&format!("credentials: {token}")),
        "the Alertmanager block carries the token"
    );

    let created = copilot(&nats, &db, data_dir.path(), port)
        .args(["tenants", "create", "acme", "--json"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(created["tenant"], "acme");
    assert!(
        created["webhook_token"]
            .as_str()
            .unwrap()
            .starts_with("cpw_")
    );

    let again = copilot(&nats, &db, data_dir.path(), port)
        .args(["tenants", "create", "acme"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let status = up.wait().unwrap();
    assert!(
        status.success(),
        "copilot up exits cleanly on Ctrl-C: {status}"
    );
}
