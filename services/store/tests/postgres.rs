//! The store against a real Postgres, without NATS or any service: each test gets a database of
//! its own on the server `COPILOT_TEST_DATABASE_URL` names (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped when it ends.

use std::time::Duration;

/// The signals projection's checkpoint (`copilot_projector::Projection::Signals`).
const SIGNALS: &str = "signals";

#[tokio::test]
async fn a_batch_moves_the_checkpoint_only_from_where_it_was_folded_and_a_second_writer_waits_then_loses()
 {
    // Arrange: a migrated database whose signals checkpoint is at 0.
    let (_db, store) = store_at_checkpoint_zero().await;
    let name = SIGNALS;

    // Act: a batch folded from 5 (the checkpoint is not there); then two writers folded from 0,
    // the second while the first has not committed.
    let mut stale = store.begin_batch().await.unwrap();
    let stale_moved = store.move_checkpoint(&mut stale, name, 5, 9).await.unwrap();
    drop(stale);
    let mut first = store.begin_batch().await.unwrap();
    let first_moved = store.move_checkpoint(&mut first, name, 0, 4).await.unwrap();
    let second = tokio::spawn({
        let store = store.clone();
        async move {
            let mut tx = store.begin_batch().await.unwrap();
            store.move_checkpoint(&mut tx, name, 0, 7).await.unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_waited = !second.is_finished();
    first.commit().await.unwrap();
    let second_moved = second.await.unwrap();

    // Assert
    assert!(
        !stale_moved,
        "a batch folded from elsewhere must not move it"
    );
    assert!(first_moved);
    assert!(second_waited, "the second writer waits on the first's row");
    assert!(!second_moved, "then finds it moved, and must not commit");
    assert_eq!(store.read_checkpoint(name).await.unwrap(), 4);
}

#[tokio::test]
async fn a_signals_batch_commits_in_one_statement_only_from_its_checkpoint_and_a_second_writer_waits_then_loses()
 {
    // Arrange: a migrated database whose signals checkpoint is at 0.
    let (_db, store) = store_at_checkpoint_zero().await;
    let name = SIGNALS;

    // Act: a batch folded from 5 (the checkpoint is not there); then, while another writer has
    // moved the checkpoint from 0 but not committed, a batch folded from 0; then one from where
    // that writer left it.
    let stale = store
        .commit_signals(vec![signal_row("stale", 9)], name, 5, 9)
        .await
        .unwrap();
    let mut first = store.begin_batch().await.unwrap();
    assert!(store.move_checkpoint(&mut first, name, 0, 4).await.unwrap());
    let second = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .commit_signals(vec![signal_row("second", 7)], name, 0, 7)
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_waited = !second.is_finished();
    first.commit().await.unwrap();
    let second_moved = second.await.unwrap();
    let next = store
        .commit_signals(vec![signal_row("next", 6)], name, 4, 6)
        .await
        .unwrap();

    // Assert: only the batch folded from where the checkpoint was wrote its row and moved it.
    assert!(!stale, "a batch folded from elsewhere must not commit");
    assert!(second_waited, "the second writer waits on the first's row");
    assert!(!second_moved, "then finds it moved, and must not commit");
    assert!(next);
    assert_eq!(store.signal_totals("acme").await.unwrap(), (1, 1));
    assert_eq!(store.read_checkpoint(name).await.unwrap(), 6);
}

#[tokio::test]
async fn a_store_error_from_a_session_postgres_ended_is_unavailable() {
    // Arrange: a store whose one connection has just been used, then ended by Postgres.
    let db = scratch_database().await;
    let store = copilot_store::Store::connect(&db.url, 1).await.unwrap();
    store.migrate().await.unwrap();
    store.read_checkpoint("signals").await.unwrap();
    let ended = end_sessions(&db.name).await;

    // Act: the next query goes out on that connection (it was idle less than the pool's 1 s
    // before it pings).
    let err = store.read_checkpoint("signals").await.unwrap_err();

    // Assert
    assert!(ended >= 1, "the store's session was ended");
    // Which the API answers 503 (copilot-runtime's `ApiError` from an unavailable store error,
    // unit-tested there).
    assert!(err.is_unavailable(), "{err:?}");
}

/// Has Postgres end every session on database `name`, as a restart would, waiting until each is
/// gone; returns how many it ended. From a connection to another database, so never its own.
async fn end_sessions(name: &str) -> i64 {
    let admin = sqlx::PgPool::connect(&admin_database_url()).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
          WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(&admin)
    .await
    .unwrap()
}

/// A store on a migrated database of its own whose signals checkpoint is at 0; the database
/// goes away with the first.
async fn store_at_checkpoint_zero() -> (ScratchDatabase, copilot_store::Store) {
    let db = scratch_database().await;
    let store = copilot_store::Store::connect(&db.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    store.init_checkpoint(SIGNALS, "SIGNALS").await.unwrap();
    (db, store)
}

/// A signal row of tenant `acme` with fingerprint `fingerprint`, as folded from event `seq`.
fn signal_row(fingerprint: &str, seq: u64) -> copilot_store::SignalRow {
    let now = chrono::Utc::now();
    copilot_store::SignalRow {
        id: uuid::Uuid::now_v7(),
        tenant: "acme".into(),
        fingerprint: fingerprint.into(),
        starts_at: now,
        source: "alertmanager".into(),
        status: "firing".into(),
        severity: "critical".into(),
        service: Some("checkout".into()),
        title: "HighErrorRate".into(),
        labels: r#"{"alertname":"HighErrorRate"}"#.into(),
        annotations: "{}".into(),
        values: None,
        generator_url: None,
        group_key: None,
        receiver: None,
        ends_at: None,
        first_received_at: now,
        last_received_at: now,
        notification_count: 1,
        raw: r#"{"labels":{"alertname":"HighErrorRate"}}"#.into(),
        last_event_id: uuid::Uuid::now_v7(),
        last_request_id: None,
        last_seq: seq,
    }
}

/// Admin URL of the Postgres server tests create their databases on.
fn admin_database_url() -> String {
    std::env::var("COPILOT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of the test's own, dropped on drop.
struct ScratchDatabase {
    name: String,
    url: String,
}

async fn scratch_database() -> ScratchDatabase {
    let admin = admin_database_url();
    let name = format!("copilot_store_test_{}", uuid::Uuid::new_v4().simple());
    copilot_store::ensure_database(&admin, &name)
        .await
        .expect("creating a test database");
    // The admin URL naming the new database instead (query parameters kept).
    let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
    let server = match base.find("://").map(|i| i + 3) {
        Some(host) => base[host..]
            .find('/')
            .map_or(base, |slash| &base[..host + slash]),
        None => base,
    };
    let url = match query {
        "" => format!("{server}/{name}"),
        query => format!("{server}/{name}?{query}"),
    };
    ScratchDatabase { name, url }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context it could borrow: a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?
                .block_on(copilot_store::drop_database(&admin_database_url(), &name))
                .ok()
        })
        .join();
    }
}
