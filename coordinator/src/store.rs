//! The coordinator's state in SQLite (WAL): agents, certificates, join tokens, operators,
//! releases, deployments, desired states and the event log (the audit trail, with the
//! operator who acted). Schema migrations run at open, keyed by `PRAGMA user_version`.
//! Nothing else opens the database.
//!
//! Writes that outsiders can cause are bounded here, in one place: event text is sanitized
//! (no control characters) and truncated, and the event log keeps its newest
//! [`MAX_EVENTS`] rows.
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
}

type Result<T> = std::result::Result<T, StoreError>;

const DEPLOYMENT_COLUMNS: &str = "SELECT id, target, action, bundle_id, release, version, status, reason, bytes, \
     started_unix, finished_unix, operator, attempts, sequence, started_ms, finished_ms, fleet FROM deployments";

/// The event log keeps this many rows (the oldest go first).
pub const MAX_EVENTS: i64 = 200_000;
/// Longest event message kept (characters).
pub const MAX_EVENT_TEXT: usize = 2000;

/// Text from outside, made safe to store and print: control characters become spaces and
/// it is cut at `max` characters.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).map(|c| if c.is_control() && c != '\n' { ' ' } else { c }).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE tokens (
        id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, target TEXT NOT NULL,
        created_unix INTEGER NOT NULL, expires_unix INTEGER NOT NULL, used_unix INTEGER);
     CREATE TABLE agents (
        target TEXT PRIMARY KEY, serial TEXT NOT NULL, cert_not_after INTEGER NOT NULL,
        enrolled_unix INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, last_seen_unix INTEGER,
        facts_json TEXT NOT NULL DEFAULT '{}', status_json TEXT NOT NULL DEFAULT '{}');
     CREATE TABLE certs (
        serial TEXT PRIMARY KEY, target TEXT NOT NULL, issued_unix INTEGER NOT NULL,
        not_after INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
     CREATE TABLE releases (
        bundle_id TEXT PRIMARY KEY, target TEXT NOT NULL, app TEXT NOT NULL, sequence INTEGER NOT NULL,
        version TEXT NOT NULL, release TEXT NOT NULL, manifest BLOB NOT NULL, created_unix INTEGER NOT NULL);
     CREATE TABLE sequences (target TEXT PRIMARY KEY, next INTEGER NOT NULL);
     CREATE TABLE desired (
        target TEXT PRIMARY KEY, sequence INTEGER NOT NULL, action TEXT NOT NULL, bundle_id TEXT NOT NULL,
        deployment_id TEXT NOT NULL, created_unix INTEGER NOT NULL);
     CREATE TABLE deployments (
        id TEXT PRIMARY KEY, target TEXT NOT NULL, action TEXT NOT NULL, bundle_id TEXT NOT NULL,
        release TEXT NOT NULL, version TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', bytes INTEGER NOT NULL DEFAULT 0,
        started_unix INTEGER NOT NULL, finished_unix INTEGER);
     CREATE INDEX deployments_target ON deployments(target, started_unix);
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, unix_ms INTEGER NOT NULL, target TEXT NOT NULL,
        kind TEXT NOT NULL, message TEXT NOT NULL);",
    // 2: named operators, the operator in the audit trail, delivery attempts, pruned releases.
    "CREATE TABLE operators (
        name TEXT PRIMARY KEY, serial TEXT NOT NULL, created_unix INTEGER NOT NULL, created_by TEXT NOT NULL,
        not_after INTEGER NOT NULL, revoked_unix INTEGER);
     ALTER TABLE events ADD COLUMN operator TEXT NOT NULL DEFAULT '';
     ALTER TABLE deployments ADD COLUMN operator TEXT NOT NULL DEFAULT '';
     ALTER TABLE deployments ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE deployments ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE releases ADD COLUMN pruned_unix INTEGER;
     CREATE INDEX events_target ON events(target, id);
     CREATE INDEX deployments_open ON deployments(target) WHERE finished_unix IS NULL;
     CREATE INDEX releases_target ON releases(target, sequence);",
    // 3: events carry their deployment, deployments their times in ms (durations), and
    // operators' bearer tokens for the REST API.
    "ALTER TABLE events ADD COLUMN deployment TEXT NOT NULL DEFAULT '';
     CREATE INDEX events_deployment ON events(deployment, id) WHERE deployment != '';
     ALTER TABLE deployments ADD COLUMN started_ms INTEGER;
     ALTER TABLE deployments ADD COLUMN finished_ms INTEGER;
     CREATE INDEX deployments_started ON deployments(started_unix);
     CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, operator TEXT NOT NULL, label TEXT NOT NULL DEFAULT '',
        created_unix INTEGER NOT NULL, expires_unix INTEGER NOT NULL, revoked_unix INTEGER);",
    // 4: fleet deploys: the order over many targets, its waves, and the deployments it made.
    "ALTER TABLE deployments ADD COLUMN fleet TEXT NOT NULL DEFAULT '';
     CREATE INDEX deployments_fleet ON deployments(fleet, target) WHERE fleet != '';
     CREATE TABLE fleet_deploys (
        id TEXT PRIMARY KEY, spec TEXT NOT NULL, operator TEXT NOT NULL, status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '', wave INTEGER NOT NULL DEFAULT 0,
        created_unix INTEGER NOT NULL, finished_unix INTEGER);
     CREATE TABLE fleet_targets (
        fleet TEXT NOT NULL, target TEXT NOT NULL, wave INTEGER NOT NULL, position INTEGER NOT NULL,
        note TEXT NOT NULL DEFAULT '', PRIMARY KEY (fleet, target));",
    // 5: a release looked up by its name (`status` does it for every release an agent
    // keeps) is an index lookup, however long the target's history.
    "CREATE INDEX releases_name ON releases(target, release);",
    // 6: the digest the agent gave its facts: a poll that names the digest of the facts
    // held here leaves them out.
    "ALTER TABLE agents ADD COLUMN facts_digest TEXT NOT NULL DEFAULT '';",
];

pub struct Store {
    conn: Connection,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub target: String,
    pub serial: String,
    pub cert_not_after: i64,
    pub enrolled_unix: i64,
    pub revoked: bool,
    pub last_seen_unix: Option<i64>,
    pub facts: serde_json::Value,
    pub status: serde_json::Value,
    /// What the agent called `facts` ([`dockfra_common::facts_digest`]); empty when unknown.
    #[serde(skip)]
    pub facts_digest: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentRow {
    pub id: String,
    pub target: String,
    pub action: String,
    pub bundle_id: String,
    pub release: String,
    pub version: String,
    pub status: String,
    pub reason: String,
    pub bytes: u64,
    pub started_unix: i64,
    pub finished_unix: Option<i64>,
    /// Who asked for it (empty for deployments from before operators were named).
    pub operator: String,
    /// How often the order was handed to the agent.
    pub attempts: u32,
    /// The sequence of its signed order (the agent's floor passes it once it took the order).
    pub sequence: u64,
    /// Start and end in ms (rows from before schema 3: the seconds, scaled).
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// The fleet deploy that made it ("" for one of its own).
    pub fleet: String,
}

impl DeploymentRow {
    /// How long it took (None while open).
    pub fn duration_ms(&self) -> Option<u64> {
        self.finished_ms.map(|f| (f - self.started_ms).max(0) as u64)
    }
}

/// Which deployments `history` lists.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter<'a> {
    pub target: Option<&'a str>,
    /// Only these targets (a selector's), when set.
    pub targets: Option<&'a [String]>,
    pub status: Option<&'a str>,
    pub since_unix: Option<i64>,
    pub until_unix: Option<i64>,
    pub limit: u32,
}

const FLEET_COLUMNS: &str =
    "SELECT id, spec, operator, status, reason, wave, created_unix, finished_unix FROM fleet_deploys";

/// A fleet deploy: its spec (JSON), who asked, where it stands.
#[derive(Debug, Clone)]
pub struct FleetRow {
    pub id: String,
    pub spec: String,
    pub operator: String,
    pub status: String,
    pub reason: String,
    pub wave: u32,
    pub created_unix: i64,
    pub finished_unix: Option<i64>,
}

/// An operator's bearer token for the REST API (its secret is kept hashed).
#[derive(Debug, Clone)]
pub struct ApiTokenRow {
    pub id: String,
    pub secret_sha256: String,
    pub operator: String,
    pub label: String,
    pub created_unix: i64,
    pub expires_unix: i64,
    pub revoked_unix: Option<i64>,
}

/// An operator's credential.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorRow {
    pub name: String,
    pub serial: String,
    pub created_unix: i64,
    pub created_by: String,
    pub not_after: i64,
    pub revoked_unix: Option<i64>,
}

/// One audit event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub unix_ms: i64,
    pub target: String,
    pub kind: String,
    pub message: String,
    pub operator: String,
    /// The deployment it belongs to ("" for other events).
    pub deployment: String,
}

#[derive(Debug, Clone)]
pub struct ReleaseRow {
    pub bundle_id: String,
    pub target: String,
    pub app: String,
    pub sequence: u64,
    pub version: String,
    pub release: String,
    pub manifest: Vec<u8>,
    /// Set when garbage collection dropped its blobs: it can no longer be sent.
    pub pruned_unix: Option<i64>,
}

impl ReleaseRow {
    /// The row of a manifest just built for `target`.
    pub fn of(target: &str, m: &dockfra_common::bundle::Manifest) -> Self {
        let manifest = m.canonical_bytes();
        ReleaseRow {
            bundle_id: dockfra_common::sha256_hex(&manifest),
            target: target.to_string(),
            app: m.app.clone(),
            sequence: m.sequence,
            version: m.version.clone(),
            release: m.release_name(),
            manifest,
            pruned_unix: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DesiredRow {
    pub sequence: u64,
    pub action: String,
    pub bundle_id: String,
    pub deployment_id: String,
}

/// Why a join token was refused (the message never echoes the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("unknown join token")]
    Unknown,
    #[error("join token already used")]
    Used,
    #[error("join token expired")]
    Expired,
    #[error("join token is for target {0:?}, not the one this agent asked for")]
    OtherTarget(String),
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let open = |source| StoreError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open)?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// An event the coordinator or an agent caused (no operator).
    pub fn event(&self, target: &str, kind: &str, message: &str) -> Result<()> {
        self.event_by(target, kind, message, "")
    }

    /// An audit event; `operator` names who acted. Text is sanitized and bounded here.
    pub fn event_by(&self, target: &str, kind: &str, message: &str, operator: &str) -> Result<()> {
        self.event_of(target, kind, message, operator, "")
    }

    /// An audit event of one deployment.
    pub fn event_of(&self, target: &str, kind: &str, message: &str, operator: &str, deployment: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO events (unix_ms, target, kind, message, operator, deployment) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                dockfra_common::now_unix_ms() as i64,
                sanitize(target, 128),
                sanitize(kind, 64),
                sanitize(message, MAX_EVENT_TEXT),
                sanitize(operator, 128),
                sanitize(deployment, 128)
            ],
        )?;
        let id = self.conn.last_insert_rowid();
        if id % 1000 == 0 {
            self.conn.execute("DELETE FROM events WHERE id <= ?1", [id - MAX_EVENTS])?;
        }
        Ok(())
    }

    pub fn events(&self, target: Option<&str>, limit: u32) -> Result<Vec<EventRow>> {
        let mut st = self.conn.prepare(
            "SELECT unix_ms, target, kind, message, operator, deployment FROM events WHERE (?1 IS NULL OR target = ?1)
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![target, limit], Self::event_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The events of one deployment, oldest first (at most `limit`).
    pub fn deployment_events(&self, deployment: &str, limit: u32) -> Result<Vec<EventRow>> {
        let mut st = self.conn.prepare(
            "SELECT unix_ms, target, kind, message, operator, deployment FROM events WHERE deployment = ?1
             ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![deployment, limit], Self::event_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            unix_ms: r.get(0)?,
            target: r.get(1)?,
            kind: r.get(2)?,
            message: r.get(3)?,
            operator: r.get(4)?,
            deployment: r.get(5)?,
        })
    }

    // ---------------------------------------------------------------- API tokens

    pub fn add_api_token(
        &self,
        id: &str,
        secret_sha256: &str,
        operator: &str,
        label: &str,
        expires_unix: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO api_tokens (id, secret_sha256, operator, label, created_unix, expires_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, secret_sha256, operator, sanitize(label, 200), dockfra_common::now_unix() as i64, expires_unix],
        )?;
        Ok(())
    }

    const API_TOKEN_COLUMNS: &'static str =
        "SELECT id, secret_sha256, operator, label, created_unix, expires_unix, revoked_unix FROM api_tokens";

    fn api_token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiTokenRow> {
        Ok(ApiTokenRow {
            id: r.get(0)?,
            secret_sha256: r.get(1)?,
            operator: r.get(2)?,
            label: r.get(3)?,
            created_unix: r.get(4)?,
            expires_unix: r.get(5)?,
            revoked_unix: r.get(6)?,
        })
    }

    pub fn api_token(&self, id: &str) -> Result<Option<ApiTokenRow>> {
        let mut st = self.conn.prepare(&format!("{} WHERE id = ?1", Self::API_TOKEN_COLUMNS))?;
        Ok(st.query_row([id], Self::api_token_from_row).optional()?)
    }

    /// Every API token, newest first.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenRow>> {
        let mut st = self.conn.prepare(&format!("{} ORDER BY created_unix DESC, id", Self::API_TOKEN_COLUMNS))?;
        let rows = st.query_map([], Self::api_token_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Revoke one token; false if it does not exist or was revoked already.
    pub fn revoke_api_token(&self, id: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE api_tokens SET revoked_unix = ?2 WHERE id = ?1 AND revoked_unix IS NULL",
            params![id, dockfra_common::now_unix() as i64],
        )? > 0)
    }

    /// Revoke every token of an operator (its credential was revoked or re-issued).
    pub fn revoke_api_tokens(&self, operator: &str) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE api_tokens SET revoked_unix = ?2 WHERE operator = ?1 AND revoked_unix IS NULL",
            params![operator, dockfra_common::now_unix() as i64],
        )?)
    }

    // ---------------------------------------------------------------- metrics

    /// Deployments per target and status, with the bundle bytes they moved.
    pub fn deployment_counts(&self) -> Result<Vec<(String, String, u64, u64)>> {
        let mut st = self.conn.prepare(
            "SELECT target, status, count(*), COALESCE(sum(bytes), 0) FROM deployments GROUP BY target, status",
        )?;
        let rows =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Durations (ms) of finished deployments (not exports), per target.
    pub fn deployment_durations(&self) -> Result<Vec<(String, String, u64)>> {
        let mut st = self.conn.prepare(
            "SELECT target, status, finished_ms - started_ms FROM deployments
             WHERE finished_ms IS NOT NULL AND started_ms IS NOT NULL AND status != 'exported'",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    // ---------------------------------------------------------------- operators

    /// Record an operator's (new) certificate; a name that exists gets the new serial, so its
    /// old certificate stops working at once.
    pub fn put_operator(&self, name: &str, serial: &str, created_by: &str, not_after: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO operators (name, serial, created_unix, created_by, not_after) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET serial = ?2, created_unix = ?3, created_by = ?4, not_after = ?5, revoked_unix = NULL",
            params![name, serial, dockfra_common::now_unix() as i64, created_by, not_after],
        )?;
        Ok(())
    }

    fn operator_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperatorRow> {
        Ok(OperatorRow {
            name: r.get(0)?,
            serial: r.get(1)?,
            created_unix: r.get(2)?,
            created_by: r.get(3)?,
            not_after: r.get(4)?,
            revoked_unix: r.get(5)?,
        })
    }

    pub fn operator(&self, name: &str) -> Result<Option<OperatorRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, serial, created_unix, created_by, not_after, revoked_unix FROM operators WHERE name = ?1",
                [name],
                Self::operator_from_row,
            )
            .optional()?)
    }

    pub fn operators(&self) -> Result<Vec<OperatorRow>> {
        let mut st = self.conn.prepare(
            "SELECT name, serial, created_unix, created_by, not_after, revoked_unix FROM operators ORDER BY name",
        )?;
        let rows = st.query_map([], Self::operator_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Is `serial` the live certificate of operator `name`?
    pub fn operator_active(&self, name: &str, serial: &str) -> Result<bool> {
        Ok(self.operator(name)?.is_some_and(|o| {
            o.revoked_unix.is_none() && o.serial == serial && o.not_after > dockfra_common::now_unix() as i64
        }))
    }

    pub fn revoke_operator(&self, name: &str) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE operators SET revoked_unix = ?2 WHERE name = ?1 AND revoked_unix IS NULL",
            params![name, dockfra_common::now_unix() as i64],
        )?;
        Ok(n > 0)
    }

    pub fn active_operators(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM operators WHERE revoked_unix IS NULL", [], |r| r.get(0))?)
    }

    // ---------------------------------------------------------------- tokens

    pub fn add_token(&self, id: &str, secret_sha256: &str, target: &str, expires_unix: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO tokens (id, secret_sha256, target, created_unix, expires_unix) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, secret_sha256, target, dockfra_common::now_unix() as i64, expires_unix as i64],
        )?;
        Ok(())
    }

    /// Check and burn a token in one transaction; returns its target.
    /// The target a token names, without using it.
    pub fn peek_token(&self, id: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT target FROM tokens WHERE id = ?1", [id], |r| r.get(0)).optional()?)
    }

    /// A token for another target than `expected` is refused without being burnt.
    pub fn use_token(
        &mut self,
        id: &str,
        secret_sha256: &str,
        expected: Option<&str>,
        now: u64,
    ) -> Result<std::result::Result<String, TokenRefusal>> {
        let tx = self.conn.transaction()?;
        let row: Option<(String, String, i64, Option<i64>)> = tx
            .query_row("SELECT secret_sha256, target, expires_unix, used_unix FROM tokens WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let verdict = match row {
            None => Err(TokenRefusal::Unknown),
            Some((secret, _, _, _)) if !constant_time_eq(secret.as_bytes(), secret_sha256.as_bytes()) => {
                Err(TokenRefusal::Unknown)
            }
            Some((_, _, _, Some(_))) => Err(TokenRefusal::Used),
            Some((_, _, exp, None)) if exp as u64 <= now => Err(TokenRefusal::Expired),
            Some((_, target, _, None)) if expected.is_some_and(|e| e != target) => {
                Err(TokenRefusal::OtherTarget(target))
            }
            Some((_, target, _, None)) => {
                tx.execute("UPDATE tokens SET used_unix = ?2 WHERE id = ?1", params![id, now as i64])?;
                Ok(target)
            }
        };
        tx.commit()?;
        Ok(verdict)
    }

    // ---------------------------------------------------------------- agents and certs

    pub fn record_cert(&self, serial: &str, target: &str, not_after: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO certs (serial, target, issued_unix, not_after) VALUES (?1, ?2, ?3, ?4)",
            params![serial, target, dockfra_common::now_unix() as i64, not_after],
        )?;
        Ok(())
    }

    /// A new enrollment replaces the target's agent: older certificates of that target are revoked.
    pub fn enroll_agent(&self, target: &str, serial: &str, not_after: i64, facts: &serde_json::Value) -> Result<()> {
        self.conn
            .execute("UPDATE certs SET revoked = 1 WHERE target = ?1 AND serial != ?2", params![target, serial])?;
        self.conn.execute(
            "INSERT INTO agents (target, serial, cert_not_after, enrolled_unix, facts_json) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(target) DO UPDATE SET serial = ?2, cert_not_after = ?3, enrolled_unix = ?4, revoked = 0, facts_json = ?5,
                facts_digest = ''",
            params![target, serial, not_after, dockfra_common::now_unix() as i64, facts.to_string()],
        )?;
        Ok(())
    }

    /// Record a renewed certificate. The old one stays valid until the new one is first used
    /// (see [`Store::note_use`]) or expires; revocation cuts off both.
    pub fn renew_agent(&self, target: &str, serial: &str, not_after: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE agents SET serial = ?2, cert_not_after = ?3 WHERE target = ?1",
            params![target, serial, not_after],
        )?;
        Ok(())
    }

    /// Called on every authenticated agent call. When the agent uses its newest certificate,
    /// every older one of the target is revoked: a renewal supersedes the old certificate at
    /// its first use (so a lost renewal reply never locks an agent out, and a copied old
    /// certificate dies as soon as the real agent moves on).
    pub fn note_use(&self, target: &str, serial: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE certs SET revoked = 1 WHERE target = ?1 AND serial != ?2 AND revoked = 0
               AND ?2 = (SELECT serial FROM agents WHERE target = ?1)",
            params![target, serial],
        )?;
        Ok(())
    }

    /// Is this certificate (by serial) currently good for this target?
    pub fn cert_active(&self, target: &str, serial: &str) -> Result<bool> {
        let ok: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM certs c JOIN agents a ON a.target = c.target
                 WHERE c.serial = ?1 AND c.target = ?2 AND c.revoked = 0 AND a.revoked = 0",
                params![serial, target],
                |r| r.get(0),
            )
            .optional()?;
        Ok(ok.is_some())
    }

    pub fn revoke_agent(&self, target: &str) -> Result<bool> {
        let n = self.conn.execute("UPDATE agents SET revoked = 1 WHERE target = ?1", [target])?;
        self.conn.execute("UPDATE certs SET revoked = 1 WHERE target = ?1", [target])?;
        Ok(n > 0)
    }

    /// `facts`: the facts as JSON and the digest the agent gave them (empty: none).
    pub fn touch_agent(
        &self,
        target: &str,
        status: Option<&serde_json::Value>,
        facts: Option<(&serde_json::Value, &str)>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE agents SET last_seen_unix = ?2, status_json = COALESCE(?3, status_json), facts_json = COALESCE(?4, facts_json),
                facts_digest = COALESCE(?5, facts_digest)
             WHERE target = ?1",
            params![
                target,
                dockfra_common::now_unix() as i64,
                status.map(|s| s.to_string()),
                facts.map(|(f, _)| f.to_string()),
                facts.map(|(_, d)| d)
            ],
        )?;
        Ok(())
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>> {
        let mut st = self.conn.prepare(
            "SELECT target, serial, cert_not_after, enrolled_unix, revoked, last_seen_unix, facts_json, status_json, facts_digest
             FROM agents ORDER BY target",
        )?;
        let rows = st.query_map([], Self::agent_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// One target's agent (an indexed lookup, not a scan).
    pub fn agent(&self, target: &str) -> Result<Option<AgentRow>> {
        let mut st = self.conn.prepare(
            "SELECT target, serial, cert_not_after, enrolled_unix, revoked, last_seen_unix, facts_json, status_json, facts_digest
             FROM agents WHERE target = ?1",
        )?;
        Ok(st.query_row([target], Self::agent_from_row).optional()?)
    }

    fn agent_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
        Ok(AgentRow {
            target: r.get(0)?,
            serial: r.get(1)?,
            cert_not_after: r.get(2)?,
            enrolled_unix: r.get(3)?,
            revoked: r.get::<_, i64>(4)? != 0,
            last_seen_unix: r.get(5)?,
            facts: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or_default(),
            status: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
            facts_digest: r.get(8)?,
        })
    }

    // ---------------------------------------------------------------- releases and desired state

    /// The next per-target sequence number (shared by releases and desired states, so both only grow).
    pub fn next_sequence(&self, target: &str) -> Result<u64> {
        self.conn.execute(
            "INSERT INTO sequences (target, next) VALUES (?1, 2) ON CONFLICT(target) DO UPDATE SET next = next + 1",
            [target],
        )?;
        let next: i64 = self.conn.query_row("SELECT next FROM sequences WHERE target = ?1", [target], |r| r.get(0))?;
        Ok((next - 1) as u64)
    }

    /// A fresh sequence for `agent` above `floor`: for an order another app's order overtook
    /// on the same agent before it was handed out.
    pub fn next_sequence_above(&self, agent: &str, floor: u64) -> Result<u64> {
        let at_least = floor.saturating_add(1).min(i64::MAX as u64) as i64;
        self.conn.execute(
            "INSERT INTO sequences (target, next) VALUES (?1, ?2) ON CONFLICT(target) DO UPDATE SET next = max(next, ?2)",
            params![agent, at_least],
        )?;
        self.next_sequence(agent)
    }

    /// Has `target` a deployment other than `id` with a sequence above `sequence` (an order or
    /// an export of its own made after it)?
    pub fn newer_deployment_of(&self, target: &str, sequence: u64, id: &str) -> Result<bool> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM deployments WHERE target = ?1 AND sequence > ?2 AND id != ?3",
            params![target, sequence as i64, id],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Give a queued order (not handed out yet) a new sequence.
    pub fn resequence(&self, target: &str, deployment_id: &str, sequence: u64) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE desired SET sequence = ?1 WHERE target = ?2 AND deployment_id = ?3",
            params![sequence as i64, target, deployment_id],
        )?;
        tx.execute("UPDATE deployments SET sequence = ?1 WHERE id = ?2", params![sequence as i64, deployment_id])?;
        tx.commit()?;
        Ok(())
    }

    pub fn add_release(&self, r: &ReleaseRow) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO releases (bundle_id, target, app, sequence, version, release, manifest, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![r.bundle_id, r.target, r.app, r.sequence as i64, r.version, r.release, r.manifest, dockfra_common::now_unix() as i64],
        )?;
        Ok(())
    }

    fn release_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReleaseRow> {
        Ok(ReleaseRow {
            bundle_id: r.get(0)?,
            target: r.get(1)?,
            app: r.get(2)?,
            sequence: r.get::<_, i64>(3)? as u64,
            version: r.get(4)?,
            release: r.get(5)?,
            manifest: r.get(6)?,
            pruned_unix: r.get(7)?,
        })
    }

    pub fn release(&self, bundle_id: &str) -> Result<Option<ReleaseRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT bundle_id, target, app, sequence, version, release, manifest, pruned_unix FROM releases
                 WHERE bundle_id = ?1",
                [bundle_id],
                Self::release_from_row,
            )
            .optional()?)
    }

    pub fn release_by_name(&self, target: &str, release: &str) -> Result<Option<ReleaseRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT bundle_id, target, app, sequence, version, release, manifest, pruned_unix FROM releases
                 WHERE target = ?1 AND (release = ?2 OR bundle_id = ?2)",
                params![target, release],
                Self::release_from_row,
            )
            .optional()?)
    }

    /// Releases whose blobs are still stored, newest first per target.
    pub fn live_releases(&self) -> Result<Vec<ReleaseRow>> {
        let mut st = self.conn.prepare(
            "SELECT bundle_id, target, app, sequence, version, release, manifest, pruned_unix FROM releases
             WHERE pruned_unix IS NULL ORDER BY target, sequence DESC",
        )?;
        let rows = st.query_map([], Self::release_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn mark_pruned(&self, bundle_id: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE releases SET pruned_unix = ?2 WHERE bundle_id = ?1",
            params![bundle_id, dockfra_common::now_unix() as i64],
        )?;
        Ok(())
    }

    pub fn set_desired(&self, target: &str, d: &DesiredRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO desired (target, sequence, action, bundle_id, deployment_id, created_unix) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(target) DO UPDATE SET sequence = ?2, action = ?3, bundle_id = ?4, deployment_id = ?5, created_unix = ?6",
            params![target, d.sequence as i64, d.action, d.bundle_id, d.deployment_id, dockfra_common::now_unix() as i64],
        )?;
        Ok(())
    }

    pub fn desired(&self, target: &str) -> Result<Option<DesiredRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT sequence, action, bundle_id, deployment_id FROM desired WHERE target = ?1",
                [target],
                |r| {
                    Ok(DesiredRow {
                        sequence: r.get::<_, i64>(0)? as u64,
                        action: r.get(1)?,
                        bundle_id: r.get(2)?,
                        deployment_id: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    // ---------------------------------------------------------------- deployments

    pub fn add_deployment(&self, d: &DeploymentRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO deployments (id, target, action, bundle_id, release, version, status, reason, started_unix,
                operator, sequence, started_ms, fleet)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                d.id,
                d.target,
                d.action,
                d.bundle_id,
                d.release,
                d.version,
                d.status,
                d.reason,
                d.started_unix,
                d.operator,
                d.sequence as i64,
                d.started_ms,
                d.fleet
            ],
        )?;
        Ok(())
    }

    /// Move a deployment to a new status. Final statuses set `finished_unix`; a final status is
    /// never overwritten. Returns whether the row changed (false: unknown, or already final).
    pub fn update_deployment(&self, id: &str, status: &str, reason: &str, done: bool, bytes: u64) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE deployments SET status = ?2, reason = ?3, bytes = MAX(bytes, ?6),
                finished_unix = CASE WHEN ?4 THEN ?5 ELSE finished_unix END,
                finished_ms = CASE WHEN ?4 THEN ?7 ELSE finished_ms END
             WHERE id = ?1 AND finished_unix IS NULL",
            params![
                id,
                status,
                sanitize(reason, MAX_EVENT_TEXT),
                done,
                dockfra_common::now_unix() as i64,
                bytes as i64,
                dockfra_common::now_unix_ms() as i64
            ],
        )?;
        Ok(n > 0)
    }

    /// Count one more hand-out of a deployment's order; returns the new count.
    pub fn bump_attempts(&self, id: &str) -> Result<u32> {
        self.conn.execute("UPDATE deployments SET attempts = attempts + 1 WHERE id = ?1", [id])?;
        Ok(self
            .conn
            .query_row("SELECT attempts FROM deployments WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// Deployments not in a final state (all targets, or one).
    pub fn open_deployments(&self, target: Option<&str>) -> Result<Vec<DeploymentRow>> {
        let mut st = self.conn.prepare(&format!(
            "{DEPLOYMENT_COLUMNS} WHERE finished_unix IS NULL AND (?1 IS NULL OR target = ?1) ORDER BY started_unix"
        ))?;
        let rows = st.query_map(params![target], Self::deployment_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn deployment(&self, id: &str) -> Result<Option<DeploymentRow>> {
        let mut st = self.conn.prepare(&format!("{DEPLOYMENT_COLUMNS} WHERE id = ?1"))?;
        Ok(st.query_row([id], Self::deployment_from_row).optional()?)
    }

    fn deployment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRow> {
        Ok(DeploymentRow {
            id: r.get(0)?,
            target: r.get(1)?,
            action: r.get(2)?,
            bundle_id: r.get(3)?,
            release: r.get(4)?,
            version: r.get(5)?,
            status: r.get(6)?,
            reason: r.get(7)?,
            bytes: r.get::<_, i64>(8)? as u64,
            started_unix: r.get(9)?,
            finished_unix: r.get(10)?,
            operator: r.get(11)?,
            attempts: r.get(12)?,
            sequence: r.get::<_, i64>(13)? as u64,
            started_ms: r.get::<_, Option<i64>>(14)?.unwrap_or(r.get::<_, i64>(9)? * 1000),
            finished_ms: r.get::<_, Option<i64>>(15)?.or(r.get::<_, Option<i64>>(10)?.map(|s| s * 1000)),
            fleet: r.get(16)?,
        })
    }

    /// Deployments newest first, filtered by target, status and start time.
    pub fn history(&self, f: &HistoryFilter<'_>) -> Result<Vec<DeploymentRow>> {
        // A selector's targets as a JSON array, matched with json_each (one statement, any size).
        let targets = f.targets.map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".into()));
        let mut st = self.conn.prepare(&format!(
            "{DEPLOYMENT_COLUMNS} WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR started_unix >= ?3) AND (?4 IS NULL OR started_unix <= ?4)
               AND (?6 IS NULL OR target IN (SELECT value FROM json_each(?6)))
             ORDER BY started_unix DESC, rowid DESC LIMIT ?5"
        ))?;
        let rows = st.query_map(
            params![f.target, f.status, f.since_unix, f.until_unix, f.limit, targets],
            Self::deployment_from_row,
        )?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    // ---------------------------------------------------------------- fleet deploys

    /// A new fleet deploy and its targets (in wave order), in one transaction.
    pub fn add_fleet(&mut self, id: &str, spec: &str, operator: &str, targets: &[(String, u32)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO fleet_deploys (id, spec, operator, status, created_unix) VALUES (?1, ?2, ?3, 'running', ?4)",
            params![id, spec, operator, dockfra_common::now_unix() as i64],
        )?;
        for (i, (t, wave)) in targets.iter().enumerate() {
            tx.execute(
                "INSERT INTO fleet_targets (fleet, target, wave, position) VALUES (?1, ?2, ?3, ?4)",
                params![id, t, wave, i as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn fleet(&self, id: &str) -> Result<Option<FleetRow>> {
        let mut st = self.conn.prepare(&format!("{FLEET_COLUMNS} WHERE id = ?1"))?;
        Ok(st.query_row([id], Self::fleet_from_row).optional()?)
    }

    /// Fleet deploys, newest first (`running` ones only, when asked).
    pub fn fleets(&self, running_only: bool, limit: u32) -> Result<Vec<FleetRow>> {
        let mut st = self.conn.prepare(&format!(
            "{FLEET_COLUMNS} WHERE (?1 = 0 OR status = 'running') ORDER BY created_unix DESC, rowid DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![running_only, limit], Self::fleet_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    fn fleet_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FleetRow> {
        Ok(FleetRow {
            id: r.get(0)?,
            spec: r.get(1)?,
            operator: r.get(2)?,
            status: r.get(3)?,
            reason: r.get(4)?,
            wave: r.get(5)?,
            created_unix: r.get(6)?,
            finished_unix: r.get(7)?,
        })
    }

    /// A fleet deploy's targets in wave order: (target, wave, note).
    pub fn fleet_targets(&self, id: &str) -> Result<Vec<(String, u32, String)>> {
        let mut st =
            self.conn.prepare("SELECT target, wave, note FROM fleet_targets WHERE fleet = ?1 ORDER BY position")?;
        let rows = st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// One target's note in a fleet deploy ("" when none, or not in it).
    pub fn fleet_note(&self, id: &str, target: &str) -> Result<String> {
        Ok(self
            .conn
            .query_row("SELECT note FROM fleet_targets WHERE fleet = ?1 AND target = ?2", params![id, target], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or_default())
    }

    pub fn note_fleet_target(&self, id: &str, target: &str, note: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE fleet_targets SET note = ?3 WHERE fleet = ?1 AND target = ?2",
            params![id, target, sanitize(note, MAX_EVENT_TEXT)],
        )?;
        Ok(())
    }

    pub fn set_fleet_wave(&self, id: &str, wave: u32) -> Result<()> {
        self.conn.execute("UPDATE fleet_deploys SET wave = ?2 WHERE id = ?1", params![id, wave])?;
        Ok(())
    }

    /// End a fleet deploy (once).
    pub fn finish_fleet(&self, id: &str, status: &str, reason: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE fleet_deploys SET status = ?2, reason = ?3, finished_unix = ?4 WHERE id = ?1 AND finished_unix IS NULL",
            params![id, status, sanitize(reason, MAX_EVENT_TEXT), dockfra_common::now_unix() as i64],
        )? > 0)
    }

    /// The deployment a fleet deploy made for a target, if it made one.
    pub fn fleet_deployment(&self, fleet: &str, target: &str) -> Result<Option<DeploymentRow>> {
        let mut st = self.conn.prepare(&format!(
            "{DEPLOYMENT_COLUMNS} WHERE fleet = ?1 AND target = ?2 ORDER BY started_unix DESC, rowid DESC LIMIT 1"
        ))?;
        Ok(st.query_row(params![fleet, target], Self::deployment_from_row).optional()?)
    }

    pub fn deployments(&self, target: Option<&str>, limit: u32) -> Result<Vec<DeploymentRow>> {
        let mut st = self.conn.prepare(&format!(
            "{DEPLOYMENT_COLUMNS} WHERE (?1 IS NULL OR target = ?1) ORDER BY started_unix DESC, rowid DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![target, limit], Self::deployment_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

/// Compare secrets' hashes without a timing side channel.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_burn_once_and_expire() {
        let dir = std::env::temp_dir().join(format!("dkf-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Store::open(&dir.join("db")).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.add_token("a", "h", "t1", 100).unwrap();
        assert_eq!(s.use_token("a", "wrong", None, 50).unwrap(), Err(TokenRefusal::Unknown));
        assert_eq!(s.use_token("a", "h", Some("t2"), 50).unwrap(), Err(TokenRefusal::OtherTarget("t1".into())));
        assert_eq!(s.use_token("a", "h", None, 50).unwrap(), Ok("t1".to_string()));
        assert_eq!(s.use_token("a", "h", None, 50).unwrap(), Err(TokenRefusal::Used));
        s.add_token("b", "h", "t1", 100).unwrap();
        assert_eq!(s.use_token("b", "h", None, 100).unwrap(), Err(TokenRefusal::Expired));
        assert_eq!(s.next_sequence("t1").unwrap(), 1);
        assert_eq!(s.next_sequence("t1").unwrap(), 2);
        assert_eq!(s.next_sequence("t2").unwrap(), 1);
        // Deployments: one by id, final statuses stick.
        let d = DeploymentRow {
            id: "d1".into(),
            target: "t1".into(),
            action: "deploy".into(),
            bundle_id: "b".into(),
            release: "1-b".into(),
            version: "v".into(),
            status: "queued".into(),
            reason: String::new(),
            bytes: 0,
            started_unix: 1,
            finished_unix: None,
            operator: "alice".into(),
            attempts: 0,
            sequence: 1,
            started_ms: 1000,
            finished_ms: None,
            fleet: String::new(),
        };
        s.add_deployment(&d).unwrap();
        s.update_deployment("d1", "succeeded", "ok", true, 42).unwrap();
        s.update_deployment("d1", "failed", "late", true, 0).unwrap();
        let got = s.deployment("d1").unwrap().unwrap();
        assert_eq!((got.status.as_str(), got.bytes), ("succeeded", 42));
        assert!(got.finished_unix.is_some());
        assert_eq!(got.operator, "alice");
        assert!(s.deployment("nope").unwrap().is_none());
        // Outsiders' text is bounded and sanitized.
        s.event("t\u{1b}[31m", "enroll-refused", &"x\u{7}".repeat(5000)).unwrap();
        let e = &s.events(None, 1).unwrap()[0];
        assert_eq!(e.target, "t [31m");
        assert!(e.message.chars().count() <= MAX_EVENT_TEXT + 1 && !e.message.contains('\u{7}'));
        // Reopening runs no migration twice.
        drop(s);
        let s = Store::open(&dir.join("db")).unwrap();
        assert_eq!(s.next_sequence("t1").unwrap(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
