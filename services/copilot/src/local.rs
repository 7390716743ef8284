//! Local infrastructure for `copilot up`: reuse NATS and Postgres when they answer on their
//! default ports, otherwise start `nats-server -js` and a throwaway Postgres cluster from PATH
//! under the data directory, or say exactly what to install.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use copilot_runtime::Settings;
use tokio::process::{Child, Command};

const NATS_ADDR: &str = "127.0.0.1:4222";
const PG_ADDR: &str = "127.0.0.1:5432";
/// Where Debian's PostgreSQL puts its socket.
const DEBIAN_SOCKET_DIR: &str = "/var/run/postgresql";
const DATABASE: &str = "copilot";

/// Processes `copilot up` started, stopped when it stops.
#[derive(Default)]
pub struct Local {
    nats: Option<Child>,
    postgres: Option<(PathBuf, PathBuf)>,
    pub notes: Vec<String>,
}

impl Local {
    /// Fills in `NATS_URL` and `DATABASE_URL` when unset, starting what is missing.
    pub async fn resolve(settings: &mut Settings) -> anyhow::Result<Self> {
        let mut local = Local::default();
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let data_dir = std::fs::canonicalize(&settings.data_dir)?;
        if settings.nats.url.is_none() {
            if listening(NATS_ADDR).await {
                local
                    .notes
                    .push(format!("NATS: reusing the server on {NATS_ADDR}"));
            } else {
                local.nats = Some(start_nats(&data_dir).await?);
                local.notes.push(format!(
                    "NATS: started nats-server -js on {NATS_ADDR}, data in {}/nats",
                    data_dir.display()
                ));
            }
            settings.nats.url = Some(format!("nats://{NATS_ADDR}"));
        }
        if settings.database.url.is_none() {
            let socket_dir = if listening(PG_ADDR).await {
                local.notes.push(format!(
                    "Postgres: reusing the server on {PG_ADDR}, database {DATABASE}"
                ));
                Some(PathBuf::from(DEBIAN_SOCKET_DIR))
            } else {
                let (pg_ctl, dir) = start_postgres(&data_dir).await?;
                local.notes.push(format!(
                    "Postgres: started a local cluster on {PG_ADDR}, data in {}",
                    dir.display()
                ));
                local.postgres = Some((pg_ctl, dir.clone()));
                Some(dir)
            };
            let url = |db: &str| postgres_url(socket_dir.as_deref(), db);
            copilot_store::ensure_database(&url("postgres"), DATABASE)
                .await
                .with_context(|| {
                    format!("creating database {DATABASE} on {PG_ADDR} as user postgres; set DATABASE_URL to use another server or user")
                })?;
            settings.database.url = Some(url(DATABASE));
        }
        Ok(local)
    }

    /// Stops what `resolve` started.
    pub async fn stop(mut self) {
        if let Some(mut nats) = self.nats.take() {
            let _ = nats.kill().await;
        }
        if let Some((pg_ctl, dir)) = self.postgres.take() {
            let _ = as_postgres(&pg_ctl)
                .args(["stop", "-m", "fast", "-D"])
                .arg(&dir)
                .stdout(Stdio::null())
                .status()
                .await;
        }
    }
}

/// A URL for database `db` on the local server: over its Unix socket in `socket_dir` when
/// there is one (sqlx 0.9 does not set TCP_NODELAY, and small writes over TCP wait for delayed
/// ACKs), else over TCP.
fn postgres_url(socket_dir: Option<&Path>, db: &str) -> String {
    match socket_dir.filter(|d| d.join(".s.PGSQL.5432").exists()) {
        Some(dir) => format!(
            "postgres://postgres@localhost/{db}?host={}&port=5432",
            dir.display()
        ),
        None => format!("postgres://postgres@{PG_ADDR}/{db}"),
    }
}

/// The local server's maintenance database, for creating scratch databases.
pub fn local_admin_url() -> String {
    postgres_url(Some(Path::new(DEBIAN_SOCKET_DIR)), "postgres")
}

async fn listening(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a literal address");
    tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

async fn wait_listening(addr: &str, what: &str, log: &Path) -> anyhow::Result<()> {
    for _ in 0..100 {
        if listening(addr).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{what} did not start listening on {addr} within 10s; see {}",
        log.display()
    )
}

/// Finds a program on PATH or in the places Debian puts server binaries.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push("/usr/sbin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

async fn start_nats(data_dir: &Path) -> anyhow::Result<Child> {
    let Some(bin) = find("nats-server") else {
        bail!(
            "nothing answers on {NATS_ADDR} and nats-server is not installed.\n  \
             Install it (Debian/Ubuntu: `apt-get install nats-server`; elsewhere: https://docs.nats.io), \
             or set NATS_URL to a NATS server with JetStream enabled."
        );
    };
    let store = data_dir.join("nats");
    std::fs::create_dir_all(&store)?;
    let log = data_dir.join("nats.log");
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", "4222", "-js", "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server")?;
    wait_listening(NATS_ADDR, "nats-server", &log).await?;
    Ok(child)
}

/// `pg_ctl`/`initdb` refuse to run as root; run them as the `postgres` user then.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

async fn start_postgres(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (Some(initdb), Some(pg_ctl)) = (find("initdb"), find("pg_ctl")) else {
        bail!(
            "nothing answers on {PG_ADDR} and PostgreSQL's initdb/pg_ctl are not installed.\n  \
             Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`), \
             or set DATABASE_URL to a database copilot may create tables in."
        );
    };
    let dir = data_dir.join("postgres");
    let log = data_dir.join("postgres.log");
    if !dir.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .await?;
            anyhow::ensure!(
                status.success(),
                "chown of {} to postgres failed",
                dir.display()
            );
        }
        let out = as_postgres(&initdb)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&dir)
            .output()
            .await
            .context("running initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if is_root() {
        let _ = Command::new("touch").arg(&log).status().await;
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&log)
            .status()
            .await;
    }
    let status = as_postgres(&pg_ctl)
        .args(["start", "-w", "-D"])
        .arg(&dir)
        .arg("-l")
        .arg(&log)
        .args([
            "-o",
            &format!("-c listen_addresses=127.0.0.1 -p 5432 -k {}", dir.display()),
        ])
        .stdout(Stdio::null())
        .status()
        .await
        .context("running pg_ctl start")?;
    anyhow::ensure!(
        status.success(),
        "pg_ctl start failed; see {}",
        log.display()
    );
    wait_listening(PG_ADDR, "postgres", &log).await?;
    Ok((pg_ctl, dir))
}

/// A nats-server with JetStream on a free port with a temporary store, killed on drop. For
/// tests and benchmarks, which must not touch the streams of a running system.
pub struct EphemeralNats {
    child: Option<std::process::Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

impl EphemeralNats {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store = tempfile::tempdir()?;
        let mut server = Self {
            child: None,
            port,
            store,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = find("nats-server")
            .context("nats-server is not installed (Debian: apt-get install nats-server)")?;
        let child = std::process::Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_listening(&addr, "nats-server", self.store.path()).await
    }

    /// Kills the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }
}

impl Drop for EphemeralNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A database of its own on an existing server, dropped on drop.
pub struct ScratchDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<random>` on the server `admin_url` connects to.
    pub async fn create(admin_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        copilot_store::ensure_database(admin_url, &name)
            .await
            .with_context(|| {
                format!(
                    "creating database {name} via {}",
                    copilot_runtime::settings::redact(admin_url)
                )
            })?;
        let url = with_database(admin_url, &name);
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any async context we could borrow; use a short-lived runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(copilot_store::drop_database(&admin_url, &name))
                .ok()
        })
        .join();
    }
}

/// The same Postgres URL naming another database (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{database}?{q}"),
        None => format!("{host_part}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_swaps_only_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?host=/run/pg", "x"),
            "postgres://u@h/x?host=/run/pg"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
