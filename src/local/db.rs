//! The embedded store and inbox: one SQLite file with the semantics the worker relies on
//! from DynamoDB and SQS.
//!
//! * Queue: `send` with a delay; `receive` hands out visible messages, hides them for the
//!   visibility timeout and counts receipts; a message received more than
//!   `max_receives` times moves to the dead-letter table instead (the redrive policy);
//!   `delete` and `set_visibility` take the receipt of the latest receive only.
//! * Store: the service state with a version (compare-and-swap) and a lease, the outbox
//!   (entries claimed before publishing), dedup keys with an expiry and the deployment
//!   records, committed in one transaction; named leases (the reconciler's).
//!
//! Durable across restarts (WAL journal). Time comes from an injected clock, so tests
//! drive delays and visibility expiry without sleeping.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::contract::Entry;
use crate::flow::model::duration_ms;
use crate::flow::{Color, ServiceState, Timestamp};
use crate::ports::Clock;
use crate::ports::{
    Claimed, Commit, Fence, Inbox, Lease, OUTBOX_CLAIM_MAX, PortError, PortResult, Received, Store,
    Stored,
};

/// Queue behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// How long a received message stays hidden.
    pub visibility: Duration,
    /// Receipts after which a message is dead-lettered (the redrive policy).
    pub max_receives: u32,
    /// How often `receive` looks again while long-polling.
    pub poll_every: Duration,
}

impl Default for QueueOptions {
    fn default() -> QueueOptions {
        QueueOptions {
            visibility: Duration::from_secs(30),
            max_receives: 3,
            poll_every: Duration::from_millis(20),
        }
    }
}

/// A message that was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Original message id.
    pub message_id: String,
    /// Body.
    pub body: String,
    /// Receipts before it was moved.
    pub receive_count: u32,
}

/// The embedded database.
#[derive(Clone)]
pub struct LocalDb {
    conn: Arc<Mutex<Connection>>,
    clock: Clock,
    options: QueueOptions,
}

/// How long an open or a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    moved_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0,
    owed TEXT,
    applied INTEGER NOT NULL DEFAULT 0,
    preempt_until INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    event_id TEXT NOT NULL,
    entry TEXT NOT NULL,
    claim_owner TEXT,
    claim_until INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until INTEGER NOT NULL,
    mark INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dedup (
    service TEXT NOT NULL,
    key TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (service, key)
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    phase TEXT NOT NULL,
    record TEXT NOT NULL
);
";

/// Brings a database written by an earlier version up to [`SCHEMA`].
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let columns = |table: &str| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        stmt.query_map([], |r| r.get(0))?.collect()
    };
    if !columns("outbox")?.iter().any(|n| n == "claim_owner") {
        conn.execute_batch(
            "ALTER TABLE outbox ADD COLUMN claim_owner TEXT;
             ALTER TABLE outbox ADD COLUMN claim_until INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    if !columns("services")?.iter().any(|n| n == "owed") {
        conn.execute_batch(
            "ALTER TABLE services ADD COLUMN owed TEXT;
             ALTER TABLE services ADD COLUMN applied INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE services ADD COLUMN preempt_until INTEGER;",
        )?;
    }
    if !columns("leases")?.iter().any(|n| n == "mark") {
        conn.execute_batch("ALTER TABLE leases ADD COLUMN mark INTEGER NOT NULL DEFAULT 0;")?;
    }
    Ok(())
}

/// Puts the file in WAL mode. WAL is a property of the file, so only the first open of a new
/// file switches it; that takes an exclusive lock for which SQLite does not run the busy
/// handler, so two processes opening a fresh state directory at once (`bluegreen local` and
/// `bluegreen local deploy`) wait here instead, up to [`BUSY_TIMEOUT`].
fn use_wal(conn: &Connection) -> rusqlite::Result<()> {
    let mut pause = Duration::from_millis(2);
    let mut waited = Duration::ZERO;
    loop {
        let busy = match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        {
            // An in-memory database has no WAL and stays `memory`.
            Ok(mode) if mode.eq_ignore_ascii_case("wal") || mode.eq_ignore_ascii_case("memory") => {
                return Ok(());
            }
            // Refused without an error: another connection holds the file.
            Ok(mode) => rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                Some(format!("the journal stays {mode:?}, not WAL")),
            ),
            Err(e) if is_busy(&e) => e,
            Err(e) => return Err(e),
        };
        if waited >= BUSY_TIMEOUT {
            return Err(busy);
        }
        std::thread::sleep(pause);
        waited += pause;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Dedup keys are remembered this long (as in the DynamoDB store).
const DEDUP_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn db_error(e: &rusqlite::Error) -> PortError {
    if is_busy(e) {
        PortError::Retryable(format!("embedded database busy: {e}"))
    } else {
        PortError::Permanent(format!("embedded database: {e}"))
    }
}

/// Runs `sql` as a cached prepared statement; the number of rows changed.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Reads one row with a cached prepared statement.
fn row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, read)
}

fn receipt(id: i64, count: u32) -> String {
    format!("{id}:{count}")
}

fn parse_receipt(receipt: &str) -> Option<(i64, u32)> {
    let (id, count) = receipt.split_once(':')?;
    Some((id.parse().ok()?, count.parse().ok()?))
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl std::fmt::Debug for LocalDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDb")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl LocalDb {
    /// Opens (or creates) the database file at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened or the schema not created.
    pub fn open(path: &Path, clock: Clock, options: QueueOptions) -> PortResult<LocalDb> {
        let conn = Connection::open(path).map_err(|e| db_error(&e))?;
        LocalDb::with(conn, clock, options)
    }

    /// An in-memory database (tests, throw-away demos).
    ///
    /// # Errors
    /// When the schema cannot be created.
    pub fn in_memory(clock: Clock, options: QueueOptions) -> PortResult<LocalDb> {
        let conn = Connection::open_in_memory().map_err(|e| db_error(&e))?;
        LocalDb::with(conn, clock, options)
    }

    fn with(conn: Connection, clock: Clock, options: QueueOptions) -> PortResult<LocalDb> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| db_error(&e))?;
        use_wal(&conn).map_err(|e| db_error(&e))?;
        // Every statement of the hot paths stays prepared (`exec`, `row`).
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA).map_err(|e| db_error(&e))?;
        migrate(&conn).map_err(|e| db_error(&e))?;
        Ok(LocalDb {
            conn: Arc::new(Mutex::new(conn)),
            clock,
            options,
        })
    }

    fn now(&self) -> i64 {
        to_i64((self.clock)().millis())
    }

    fn lock(&self) -> PortResult<std::sync::MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| PortError::Permanent("embedded database lock poisoned".into()))
    }

    /// Takes up to `max` visible messages now (no waiting), hiding them for `visibility`
    /// (the queue's own when zero).
    fn take(&self, max: u32, visibility: Duration) -> PortResult<Vec<Received>> {
        let now = self.now();
        let visibility = if visibility.is_zero() {
            self.options.visibility
        } else {
            visibility
        };
        let hide = to_i64(duration_ms(visibility));
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(|e| db_error(&e))?;
        let candidates: Vec<(i64, String, u32)> = {
            let mut stmt = tx
                .prepare_cached("SELECT id, body, receive_count FROM messages WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2")
                .map_err(|e| db_error(&e))?;
            let rows = stmt
                .query_map(params![now, i64::from(max)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(|e| db_error(&e))?;
            rows.collect::<Result<_, _>>().map_err(|e| db_error(&e))?
        };
        let mut out = Vec::new();
        for (id, body, count) in candidates {
            let count = count + 1;
            if count > self.options.max_receives {
                exec(
                    &tx,
                    "INSERT OR REPLACE INTO dead_letters (id, body, receive_count, moved_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, body, count - 1, now],
                )
                .map_err(|e| db_error(&e))?;
                exec(&tx, "DELETE FROM messages WHERE id = ?1", params![id])
                    .map_err(|e| db_error(&e))?;
                continue;
            }
            exec(
                &tx,
                "UPDATE messages SET receive_count = ?2, visible_at = ?3 WHERE id = ?1",
                params![id, count, now.saturating_add(hide)],
            )
            .map_err(|e| db_error(&e))?;
            out.push(Received {
                message_id: id.to_string(),
                receipt: receipt(id, count),
                body,
                receive_count: count,
                sent_at: None,
            });
        }
        tx.commit().map_err(|e| db_error(&e))?;
        Ok(out)
    }

    /// Deletes every message waiting in the queue, as SQS `PurgeQueue` does; returns how
    /// many there were.
    ///
    /// # Errors
    /// On a database error.
    pub fn purge(&self) -> PortResult<usize> {
        let conn = self.lock()?;
        exec(&conn, "DELETE FROM messages", []).map_err(|e| db_error(&e))
    }

    /// Messages waiting in the queue (visible or not), earliest visible first, with
    /// when each becomes visible.
    ///
    /// # Errors
    /// On a database error.
    pub fn pending(&self) -> PortResult<Vec<(String, Timestamp)>> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached("SELECT body, visible_at FROM messages ORDER BY visible_at, id")
            .map_err(|e| db_error(&e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Timestamp::from_millis(to_u64(r.get(1)?)),
                ))
            })
            .map_err(|e| db_error(&e))?;
        rows.collect::<Result<_, _>>().map_err(|e| db_error(&e))
    }

    /// The dead-lettered messages, oldest first.
    ///
    /// # Errors
    /// On a database error.
    pub fn dead_letters(&self) -> PortResult<Vec<DeadLetter>> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare("SELECT id, body, receive_count FROM dead_letters ORDER BY moved_at, id")
            .map_err(|e| db_error(&e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DeadLetter {
                    message_id: r.get::<_, i64>(0)?.to_string(),
                    body: r.get(1)?,
                    receive_count: r.get(2)?,
                })
            })
            .map_err(|e| db_error(&e))?;
        rows.collect::<Result<_, _>>().map_err(|e| db_error(&e))
    }

    /// Messages waiting in the queue (visible or not).
    ///
    /// # Errors
    /// On a database error.
    pub fn depth(&self) -> PortResult<u64> {
        let conn = self.lock()?;
        let n: i64 = row(&conn, "SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .map_err(|e| db_error(&e))?;
        Ok(to_u64(n))
    }

    /// The value stored under `key` (the embedded platform's, router's and image
    /// registry's own small records).
    ///
    /// # Errors
    /// On a database error.
    pub fn get(&self, key: &str) -> PortResult<Option<String>> {
        let conn = self.lock()?;
        row(
            &conn,
            "SELECT value FROM kv WHERE key = ?1",
            params![key],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_error(&e))
    }

    /// Stores `value` under `key`, replacing what was there.
    ///
    /// # Errors
    /// On a database error.
    pub fn put(&self, key: &str, value: &str) -> PortResult<()> {
        let conn = self.lock()?;
        exec(
            &conn,
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map_err(|e| db_error(&e))?;
        Ok(())
    }

    /// How many of a service's deployments are in each phase.
    ///
    /// # Errors
    /// On a database error.
    pub fn phase_counts(&self, service: &str) -> PortResult<Vec<(String, u64)>> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT phase, COUNT(*) FROM deployments WHERE service = ?1 GROUP BY phase ORDER BY phase",
            )
            .map_err(|e| db_error(&e))?;
        let rows = stmt
            .query_map(params![service], |r| {
                Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?)))
            })
            .map_err(|e| db_error(&e))?;
        rows.collect::<Result<_, _>>().map_err(|e| db_error(&e))
    }

    /// Deployment records of a service (JSON), newest first.
    ///
    /// # Errors
    /// On a database error.
    pub fn deployments(&self, service: &str) -> PortResult<Vec<String>> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare("SELECT record FROM deployments WHERE service = ?1 ORDER BY rowid DESC")
            .map_err(|e| db_error(&e))?;
        let rows = stmt
            .query_map(params![service], |r| r.get(0))
            .map_err(|e| db_error(&e))?;
        rows.collect::<Result<_, _>>().map_err(|e| db_error(&e))
    }
}

impl Inbox for LocalDb {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> PortResult<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = self.take(max.clamp(1, 10), visibility)?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(self.options.poll_every).await;
        }
    }

    async fn receive_limit(&self) -> PortResult<Option<u32>> {
        Ok(Some(self.options.max_receives))
    }

    async fn delete(&self, receipt: &str) -> PortResult<()> {
        let Some((id, count)) = parse_receipt(receipt) else {
            return Err(PortError::Permanent(format!("bad receipt {receipt:?}")));
        };
        let conn = self.lock()?;
        exec(
            &conn,
            "DELETE FROM messages WHERE id = ?1 AND receive_count = ?2",
            params![id, count],
        )
        .map_err(|e| db_error(&e))?;
        Ok(())
    }

    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> PortResult<()> {
        let Some((id, count)) = parse_receipt(receipt) else {
            return Err(PortError::Permanent(format!("bad receipt {receipt:?}")));
        };
        let visible_at = self.now().saturating_add(to_i64(duration_ms(timeout)));
        let conn = self.lock()?;
        exec(
            &conn,
            "UPDATE messages SET visible_at = ?3 WHERE id = ?1 AND receive_count = ?2",
            params![id, count, visible_at],
        )
        .map_err(|e| db_error(&e))?;
        Ok(())
    }

    async fn send(&self, body: String, delay: Duration) -> PortResult<()> {
        let visible_at = self.now().saturating_add(to_i64(duration_ms(delay)));
        let conn = self.lock()?;
        exec(
            &conn,
            "INSERT INTO messages (body, visible_at) VALUES (?1, ?2)",
            params![body, visible_at],
        )
        .map_err(|e| db_error(&e))?;
        Ok(())
    }
}

/// A service's version, lease owner and lease expiry, if it is stored.
fn lease_row(conn: &Connection, service: &str) -> PortResult<Option<(i64, Option<String>, i64)>> {
    row(
        conn,
        "SELECT version, lease_owner, lease_until FROM services WHERE name = ?1",
        params![service],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
    .map_err(|e| db_error(&e))
}

impl Store for LocalDb {
    async fn load(&self, service: &str, initial: Color) -> PortResult<Stored> {
        let conn = self.lock()?;
        let row: Option<(String, i64, Option<String>, i64)> = row(
            &conn,
            "SELECT state, version, owed, applied FROM services WHERE name = ?1",
            params![service],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(|e| db_error(&e))?;
        match row {
            None => Ok(Stored {
                state: ServiceState::new(service, initial),
                version: 0,
                owed: Vec::new(),
            }),
            Some((text, version, owed, applied)) => Ok(Stored {
                state: serde_json::from_str(&text).map_err(|e| {
                    PortError::Permanent(format!("stored state of {service} is unreadable: {e}"))
                })?,
                version: to_u64(version),
                owed: match owed {
                    Some(text) if applied < version => {
                        serde_json::from_str(&text).map_err(|e| {
                            PortError::Permanent(format!("what {service} owes is unreadable: {e}"))
                        })?
                    }
                    _ => Vec::new(),
                },
            }),
        }
    }

    async fn commit(&self, service: &str, c: Commit<'_>) -> PortResult<u64> {
        let state = serde_json::to_string(c.state)
            .map_err(|e| PortError::Permanent(format!("serializing state: {e}")))?;
        let now = to_i64(c.lease.now.millis());
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(|e| db_error(&e))?;
        let current = lease_row(&tx, service)?;
        let version_now = current.as_ref().map_or(0, |(v, _, _)| to_u64(*v));
        let leased_by_other = current.as_ref().is_some_and(|(_, owner, until)| {
            owner.as_deref().is_some_and(|o| o != c.lease.owner) && *until >= now
        });
        if version_now != c.expected_version || leased_by_other {
            return Err(PortError::Conflict);
        }
        let owed = serde_json::to_string(c.owed)
            .map_err(|e| PortError::Permanent(format!("serializing what is owed: {e}")))?;
        if let Some(key) = c.dedup_key {
            let expires = now.saturating_add(to_i64(duration_ms(DEDUP_TTL)));
            let inserted = exec(
                &tx,
                "INSERT INTO dedup (service, key, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (service, key) DO UPDATE SET expires_at = excluded.expires_at
                     WHERE dedup.expires_at < ?4",
                params![service, key, expires, now],
            )
            .map_err(|e| db_error(&e))?;
            if inserted == 0 {
                return Err(PortError::Duplicate);
            }
        }
        let version = c.expected_version + 1;
        // `applied` and a preemption mark outlive the commit; only the rollback the mark
        // waited for clears it.
        exec(
            &tx,
            "INSERT INTO services (name, state, version, lease_owner, lease_until, owed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET state = ?2, version = ?3, lease_owner = ?4, lease_until = ?5, owed = ?6,
               preempt_until = CASE WHEN ?7 THEN NULL ELSE preempt_until END",
            params![
                service,
                state,
                to_i64(version),
                c.lease.owner,
                to_i64(c.lease.until.millis()),
                owed,
                c.clears_preemption
            ],
        )
        .map_err(|e| db_error(&e))?;
        for e in c.outbox {
            exec(
                &tx,
                "INSERT INTO outbox (service, event_id, entry) VALUES (?1, ?2, ?3)",
                params![service, e.event_id, e.to_json()],
            )
            .map_err(|e| db_error(&e))?;
        }
        for d in c.deployments {
            let record = serde_json::to_string(d)
                .map_err(|e| PortError::Permanent(format!("serializing deployment: {e}")))?;
            exec(
                &tx,
                "INSERT INTO deployments (id, service, phase, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET phase = ?3, record = ?4",
                params![d.id, service, d.phase.as_str(), record],
            )
            .map_err(|e| db_error(&e))?;
        }
        tx.commit().map_err(|e| db_error(&e))?;
        Ok(version)
    }

    async fn seen(&self, service: &str, key: &str) -> PortResult<bool> {
        let now = self.now();
        let conn = self.lock()?;
        let found: Option<i64> = row(
            &conn,
            "SELECT expires_at FROM dedup WHERE service = ?1 AND key = ?2 AND expires_at >= ?3",
            params![service, key, now],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_error(&e))?;
        Ok(found.is_some())
    }

    async fn fence(&self, service: &str) -> PortResult<Fence> {
        let conn = self.lock()?;
        let (version, owner, until) = lease_row(&conn, service)?.unwrap_or((0, None, 0));
        let preempt: Option<i64> = row(
            &conn,
            "SELECT preempt_until FROM services WHERE name = ?1",
            params![service],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_error(&e))?
        .flatten();
        Ok(Fence {
            version: to_u64(version),
            owner,
            until: Timestamp::from_millis(to_u64(until)),
            preempt_until: preempt.map(|t| Timestamp::from_millis(to_u64(t))),
        })
    }

    async fn extend(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        let conn = self.lock()?;
        let changed = exec(
            &conn,
            "UPDATE services SET lease_until = ?4 WHERE name = ?1 AND version = ?2 AND lease_owner = ?3",
            params![service, to_i64(version), lease.owner, to_i64(lease.until.millis())],
        )
        .map_err(|e| db_error(&e))?;
        Ok(changed == 1)
    }

    async fn release(&self, service: &str, owner: &str) -> PortResult<()> {
        let conn = self.lock()?;
        exec(
            &conn,
            "UPDATE services SET lease_owner = NULL, lease_until = 0 WHERE name = ?1 AND lease_owner = ?2",
            params![service, owner],
        )
        .map_err(|e| db_error(&e))?;
        Ok(())
    }

    async fn take(&self, service: &str, version: u64, lease: Lease<'_>) -> PortResult<bool> {
        let conn = self.lock()?;
        let changed = exec(
            &conn,
            "UPDATE services SET lease_owner = ?3, lease_until = ?4
             WHERE name = ?1 AND version = ?2 AND (lease_owner IS NULL OR lease_owner = ?3 OR lease_until < ?5)",
            params![
                service,
                to_i64(version),
                lease.owner,
                to_i64(lease.until.millis()),
                to_i64(lease.now.millis())
            ],
        )
        .map_err(|e| db_error(&e))?;
        Ok(changed == 1)
    }

    async fn discharge(
        &self,
        service: &str,
        version: u64,
        owner: &str,
        release: bool,
    ) -> PortResult<bool> {
        let conn = self.lock()?;
        let sql = if release {
            "UPDATE services SET applied = ?2, lease_owner = NULL, lease_until = 0
             WHERE name = ?1 AND version = ?2 AND lease_owner = ?3"
        } else {
            "UPDATE services SET applied = ?2 WHERE name = ?1 AND version = ?2 AND lease_owner = ?3"
        };
        let changed =
            exec(&conn, sql, params![service, to_i64(version), owner]).map_err(|e| db_error(&e))?;
        Ok(changed == 1)
    }

    async fn preempt(&self, service: &str, until: Option<Timestamp>) -> PortResult<()> {
        let conn = self.lock()?;
        exec(
            &conn,
            "UPDATE services SET preempt_until = ?2 WHERE name = ?1",
            params![service, until.map(|t| to_i64(t.millis()))],
        )
        .map_err(|e| db_error(&e))?;
        Ok(())
    }

    async fn remember(&self, service: &str, key: &str, now: Timestamp) -> PortResult<()> {
        let now = to_i64(now.millis());
        let expires = now.saturating_add(to_i64(duration_ms(DEDUP_TTL)));
        let conn = self.lock()?;
        exec(
            &conn,
            "INSERT INTO dedup (service, key, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (service, key) DO UPDATE SET expires_at = excluded.expires_at",
            params![service, key, expires],
        )
        .map_err(|e| db_error(&e))?;
        Ok(())
    }

    async fn claim_outbox(&self, service: &str, claim: Lease<'_>) -> PortResult<Vec<Claimed>> {
        let now = to_i64(claim.now.millis());
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(|e| db_error(&e))?;
        let texts: Vec<(i64, String)> = {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE outbox SET claim_owner = ?2, claim_until = ?3
                     WHERE seq IN (SELECT seq FROM outbox
                       WHERE service = ?1 AND (claim_owner IS NULL OR claim_owner = ?2 OR claim_until < ?4)
                       ORDER BY seq LIMIT ?5)
                     RETURNING seq, entry",
                )
                .map_err(|e| db_error(&e))?;
            let rows = stmt
                .query_map(
                    params![
                        service,
                        claim.owner,
                        to_i64(claim.until.millis()),
                        now,
                        i64::try_from(OUTBOX_CLAIM_MAX).unwrap_or(i64::MAX)
                    ],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .map_err(|e| db_error(&e))?;
            let mut rows: Vec<(i64, String)> =
                rows.collect::<Result<_, _>>().map_err(|e| db_error(&e))?;
            rows.sort_by_key(|(seq, _)| *seq);
            rows
        };
        tx.commit().map_err(|e| db_error(&e))?;
        Ok(texts
            .iter()
            .filter_map(|(seq, text)| {
                Entry::from_json(text).map(|entry| Claimed {
                    key: seq.to_string(),
                    entry,
                })
            })
            .collect())
    }

    async fn outbox_done(&self, service: &str, keys: &[String]) -> PortResult<()> {
        let mut conn = self.lock()?;
        let tx = conn.transaction().map_err(|e| db_error(&e))?;
        for seq in keys {
            exec(
                &tx,
                "DELETE FROM outbox WHERE service = ?1 AND seq = ?2",
                params![service, seq.parse::<i64>().unwrap_or(-1)],
            )
            .map_err(|e| db_error(&e))?;
        }
        tx.commit().map_err(|e| db_error(&e))?;
        Ok(())
    }

    async fn try_lease(&self, name: &str, lease: Lease<'_>) -> PortResult<Option<u64>> {
        let conn = self.lock()?;
        let mark: Option<i64> = row(
            &conn,
            "INSERT INTO leases (name, owner, until) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET owner = ?2, until = ?3
             WHERE leases.owner = ?2 OR leases.until < ?4
             RETURNING mark",
            params![
                name,
                lease.owner,
                to_i64(lease.until.millis()),
                to_i64(lease.now.millis())
            ],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db_error(&e))?;
        Ok(mark.map(to_u64))
    }

    async fn mark_lease(&self, name: &str, owner: &str, mark: u64) -> PortResult<()> {
        let conn = self.lock()?;
        exec(
            &conn,
            "UPDATE leases SET mark = ?3 WHERE name = ?1 AND owner = ?2",
            params![name, owner, to_i64(mark)],
        )
        .map_err(|e| db_error(&e))?;
        Ok(())
    }
}
