//! A real Prometheus for tests, from the machine's `prometheus` binary (Debian package
//! `prometheus`): its own config, storage directory and free port, killed on drop. Tests that
//! need one are skipped, saying so, where the binary is missing, except in CI (see [`binary`]).

use std::{path::PathBuf, process::Stdio, time::Duration};

pub struct Prometheus {
    pub url: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// The binary `name` (`prometheus`, `promtool`, `amtool`) on PATH or in /usr/bin. Where it is
/// missing, a test that needs it is skipped, saying so; but not in CI (`CI` set), which
/// installs them: there a missing one fails the test, so nothing passes by not running.
pub fn binary(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    assert!(
        found.is_some() || std::env::var_os("CI").is_none(),
        "{name} is missing, and CI is set: .ci/run installs it (Debian packages prometheus, prometheus-alertmanager)"
    );
    found
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML) and waits until it is ready; `None` (after a
    /// message) where the binary is missing.
    pub async fn start(config: &str) -> Option<Self> {
        let Some(binary) = binary("prometheus") else {
            eprintln!(
                "skipped: no prometheus binary on this machine (Debian package `prometheus`)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        crate::wait_until(Duration::from_secs(20), || async {
            http.get(format!("{url}/-/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Some(Self {
            url,
            _child: child,
            _dir: dir,
        })
    }
}
