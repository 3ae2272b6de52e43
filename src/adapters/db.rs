//! Database adapter: Postgres, MySQL/MariaDB and SQLite through sqlx's
//! `Any` driver, with dialect-specific SQL built here.
//!
//! Owns: SQL text (every identifier comes validated from config and is
//! quoted; every value is bound or a validated literal), keyset pagination,
//! guarded writes, the ledger and audit history tables, advisory locks.
//! Does not own: deciding anything. It returns rows and counts and executes
//! the writes it is given, reporting rows that moved on as `false`.
//!
//! Time: the database's clock is the pass clock. `now()` reads it once per
//! pass; cutoffs are computed from that reading and bound as epoch seconds,
//! so SQL and the decision core agree exactly on who is stale.
//!
//! MySQL: sqlx's `Any` driver decodes only integers, doubles and strings
//! from MySQL, so every selected value is cast to one of those here
//! (`CAST(… AS CHAR)`, `UNIX_TIMESTAMP(…) + 0e0`); each session's
//! `time_zone` is the configured zone, in which `DATETIME` columns are read.

use crate::config::{DatabaseConfig, Dialect, Ident, StateValue, SweepConfig};
use crate::core::evidence::timestamp::epoch_seconds;
use crate::core::model::{HistoryEntry, LedgerEntry, RowState, StuckRow, Timestamp};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::fmt::Write as _;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to database {db} ({url}): {source}")]
    Connect {
        db: String,
        url: String,
        source: sqlx::Error,
    },
    #[error("database {db}: {context}: {source}")]
    Query {
        db: String,
        context: String,
        source: sqlx::Error,
    },
    #[error("database {db}: table {table} not found")]
    NoTable { db: String, table: String },
    #[error("database {db}: column {column:?} not found in table {table} (it has: {columns})")]
    NoColumn {
        db: String,
        table: String,
        column: String,
        columns: String,
    },
    #[error("database {db}: timestamp column {table}.{column} has type {ty}; expected timestamptz, timestamp (Postgres), DATETIME, TIMESTAMP (MySQL) or a number of unix seconds")]
    TimestampType {
        db: String,
        table: String,
        column: String,
        ty: String,
    },
    #[error("database {db}: the ledger table {table} does not exist yet; run `sweeper migrate` or a real pass to create it")]
    NoLedger { db: String, table: String },
    #[error("database {db}: cannot use the sweep lock file {path}: {error}")]
    Lock {
        db: String,
        path: String,
        error: String,
    },
}

/// A connected database.
#[derive(Clone, Debug)]
pub struct Db {
    pub name: String,
    pub dialect: Dialect,
    pool: AnyPool,
    ledger: Ident,
    history: Ident,
    url: String,
    connect_timeout: std::time::Duration,
    timezone: String,
}

/// How the timestamp column stores time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsKind {
    /// Postgres `timestamptz`.
    Tz,
    /// Postgres `timestamp` (read in the configured zone).
    Naive,
    /// MySQL `DATETIME` or `TIMESTAMP` (`UNIX_TIMESTAMP` in the session's
    /// zone, which is the configured one).
    MysqlTime,
    /// An integer or float of unix seconds.
    Epoch,
    /// SQLite: text, integer or real, decided per value.
    SqliteAny,
}

/// The SQL fragments of one sweep's table, built after looking at its
/// column types.
#[derive(Clone, Debug)]
pub struct SweepTable {
    pub sweep: String,
    dialect: Dialect,
    table: String,
    key: String,
    /// Postgres type of the key column, for casts of bound text.
    key_type: String,
    /// MySQL: the key column is an integer (bound and compared as one).
    key_is_int: bool,
    /// The zone naive timestamps are read in (Postgres `timestamp`).
    timezone: String,
    state: String,
    ts: String,
    ts_kind: TsKind,
    args: Vec<String>,
    lookups: Vec<String>,
    pending: StateValue,
    sending: StateValue,
    error: StateValue,
    sent: StateValue,
    pub batch_size: u32,
}

/// Rows now in each non-final state (any age).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    pub pending: u64,
    pub sending: u64,
    pub error: u64,
}

/// Stale rows of one state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StaleSummary {
    pub count: u64,
    pub oldest: Option<Timestamp>,
    /// The newest stale row's time: rows that become stale between passes
    /// are newer than every row stale before, so (count, oldest, newest)
    /// changes whenever the stale set does.
    pub newest: Option<Timestamp>,
}

/// A guarded state change.
#[derive(Clone, Debug)]
pub struct Transition<'a> {
    pub row: &'a StuckRow,
    pub to: Target,
    /// Written to the history in the update's transaction when it applies.
    pub history: Option<&'a HistoryEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Pending,
    Sent,
    Error,
}

/// A held sweep lock; call `release`.
///
/// Postgres: a session advisory lock on a connection of its own, outside
/// the pool (so locks never starve the pool, and a lock can never go back
/// into it); dropped without release, the connection closes, which
/// releases the lock on the server. SQLite: an exclusive lock on a file
/// next to the database, released when the file is closed.
pub enum LockGuard {
    Postgres {
        conn: Option<sqlx::AnyConnection>,
        key: i64,
    },
    /// MySQL: a named `GET_LOCK` lock held by its own connection; the
    /// server releases it when that connection ends.
    Mysql {
        conn: Option<sqlx::AnyConnection>,
        name: String,
    },
    File(std::fs::File),
    /// An in-memory SQLite database: nothing to share.
    None,
}

impl LockGuard {
    pub async fn release(self) {
        match self {
            LockGuard::Postgres {
                conn: Some(mut conn),
                key,
            } => {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::Connection::close(conn).await;
            }
            LockGuard::Mysql {
                conn: Some(mut conn),
                name,
            } => {
                let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
                    .bind(name)
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::Connection::close(conn).await;
            }
            _ => {}
        }
    }

    /// Whether the lock is still held: a session lock lives exactly as
    /// long as its connection, so a connection that no longer answers
    /// means the lock may already be another instance's. Checked between
    /// pages; file locks cannot be lost.
    pub async fn still_held(&mut self) -> bool {
        let (conn, name) = match self {
            LockGuard::Postgres { conn, .. } => (conn, None),
            LockGuard::Mysql { conn, name } => (conn, Some(name.clone())),
            LockGuard::File(_) | LockGuard::None => return true,
        };
        let Some(c) = conn.as_mut() else {
            return false;
        };
        // Postgres: a session advisory lock lasts as long as its session.
        // MySQL: ask whether this very connection still holds the name.
        let probe = async {
            match name {
                None => sqlx::query("SELECT 1").execute(&mut *c).await.map(|_| true),
                Some(n) => sqlx::query_scalar::<_, Option<i64>>(
                    "SELECT CAST(IS_USED_LOCK(?) = CONNECTION_ID() AS SIGNED)",
                )
                .bind(n)
                .fetch_one(&mut *c)
                .await
                .map(|held| held == Some(1)),
            }
        };
        let ok = tokio::time::timeout(std::time::Duration::from_secs(10), probe)
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        if !ok {
            // Never use it again: a reconnect would not hold the lock.
            *conn = None;
        }
        ok
    }
}

/// The file path of a `sqlite:` URL (`None` for in-memory databases).
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || rest.contains("mode=memory") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

fn ph(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("${n}"),
        Dialect::Sqlite => format!("?{n}"),
        // MySQL placeholders are positional: every statement here binds in
        // the order its placeholders appear.
        Dialect::Mysql => "?".into(),
    }
}

/// sqlx's MySQL URL for a configured one (`mariadb://` is accepted as a
/// spelling of `mysql://`).
fn driver_url(url: &str, dialect: Dialect) -> String {
    match (dialect, url.get(..10)) {
        (Dialect::Mysql, Some(p)) if p.eq_ignore_ascii_case("mariadb://") => {
            format!("mysql://{}", &url[10..])
        }
        _ => url.to_string(),
    }
}

/// The MySQL session `time_zone` for a configured zone.
fn mysql_zone(tz: &str) -> String {
    if tz == "UTC" {
        "+00:00".into()
    } else {
        tz.to_string()
    }
}

/// A Postgres zone expression for `AT TIME ZONE`: offsets as intervals
/// (a string offset would be read with POSIX's inverted sign).
fn pg_zone(tz: &str) -> String {
    if tz.starts_with(['+', '-']) {
        format!("INTERVAL '{tz}'")
    } else {
        format!("'{tz}'")
    }
}

/// A text column; MySQL returns long text (`TEXT`, `JSON_ARRAY`) as a blob.
fn opt_text(r: &AnyRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    match r.try_get::<Option<String>, _>(i) {
        Ok(v) => Ok(v),
        Err(e) => match r.try_get::<Option<Vec<u8>>, _>(i) {
            Ok(v) => Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned())),
            Err(_) => Err(e),
        },
    }
}

/// A stable 64-bit FNV-1a hash: advisory lock keys must not change between
/// builds or hosts.
fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"sweeper:".iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl Db {
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let mut options = AnyPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(cfg.connect_timeout);
        if cfg.dialect == Dialect::Mysql {
            let set = format!("SET time_zone = '{}'", mysql_zone(&cfg.timezone));
            // Try the zone once on a connection of its own: a pool would
            // retry a failing `after_connect` until its timeout and then
            // report only that it timed out.
            let connect_err = |source| DbError::Connect {
                db: cfg.name.clone(),
                url: cfg.redacted_url(),
                source,
            };
            let mut probe = tokio::time::timeout(
                cfg.connect_timeout,
                <sqlx::AnyConnection as sqlx::Connection>::connect(&driver_url(
                    &cfg.url,
                    cfg.dialect,
                )),
            )
            .await
            .map_err(|_| connect_err(sqlx::Error::PoolTimedOut))?
            .map_err(connect_err)?;
            let set_zone = sqlx::query(&set).execute(&mut probe).await;
            let _ = sqlx::Connection::close(probe).await;
            set_zone.map_err(|source| DbError::Query {
                db: cfg.name.clone(),
                context: format!(
                    "setting the session time zone to {:?} (timezone: named zones need \
                     MySQL's time zone tables; offsets such as +02:00 always work)",
                    cfg.timezone
                ),
                source,
            })?;
            options = options.after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    sqlx::query(&set).execute(conn).await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(&driver_url(&cfg.url, cfg.dialect))
            .await
            .map_err(|source| DbError::Connect {
                db: cfg.name.clone(),
                url: cfg.redacted_url(),
                source,
            })?;
        Ok(Db {
            name: cfg.name.clone(),
            dialect: cfg.dialect,
            pool,
            ledger: cfg.ledger_table.clone(),
            history: cfg.history_table.clone(),
            url: driver_url(&cfg.url, cfg.dialect),
            connect_timeout: cfg.connect_timeout,
            timezone: cfg.timezone.clone(),
        })
    }

    fn err(&self, context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> DbError + '_ {
        let context = context.into();
        move |source| DbError::Query {
            db: self.name.clone(),
            context,
            source,
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The database's clock.
    pub async fn now(&self) -> Result<Timestamp, DbError> {
        let sql = match self.dialect {
            Dialect::Postgres => "SELECT extract(epoch from now())::float8",
            Dialect::Sqlite => "SELECT (julianday('now') - 2440587.5) * 86400.0",
            // From UTC: `NOW()` in a zone with daylight saving is ambiguous
            // for an hour a year.
            Dialect::Mysql => {
                "SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) / 1e6"
            }
        };
        let secs: f64 = sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .map_err(self.err("reading the clock"))?;
        Ok(epoch_seconds(secs).unwrap_or_default())
    }

    /// Column name → type of a table.
    pub async fn columns(&self, table: &Ident) -> Result<Vec<(String, String)>, DbError> {
        let rows = match self.dialect {
            Dialect::Postgres => {
                sqlx::query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                )
                .bind(table.quoted())
                .fetch_all(&self.pool)
                .await
            }
            Dialect::Sqlite => {
                sqlx::query("SELECT name, type FROM pragma_table_info(?1, ?2)")
                    .bind(table.name().to_string())
                    .bind(table.schema().unwrap_or("main").to_string())
                    .fetch_all(&self.pool)
                    .await
            }
            Dialect::Mysql => {
                sqlx::query(&format!(
                    "SELECT CAST(column_name AS CHAR(255)), CAST(column_type AS CHAR(255)) \
                     FROM information_schema.columns WHERE table_schema = {} \
                     AND table_name = ? ORDER BY ordinal_position",
                    mysql_schema(table)
                ))
                .bind(table.name().to_string())
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(self.err(format!("describing table {table}")))?;
        let cols: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                Ok((
                    opt_text(r, 0)?.unwrap_or_default(),
                    opt_text(r, 1)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.err(format!("describing table {table}")))?;
        if cols.is_empty() {
            return Err(DbError::NoTable {
                db: self.name.clone(),
                table: table.to_string(),
            });
        }
        Ok(cols)
    }

    /// Look at the sweep's table and build its SQL fragments; fails with a
    /// clear message when the table or a column is missing.
    pub async fn sweep_table(&self, sweep: &SweepConfig) -> Result<SweepTable, DbError> {
        let cols = self.columns(&sweep.table).await?;
        let type_of = |c: &Ident| -> Result<String, DbError> {
            cols.iter()
                .find(|(n, _)| n == c.name())
                .map(|(_, t)| t.clone())
                .ok_or_else(|| DbError::NoColumn {
                    db: self.name.clone(),
                    table: sweep.table.to_string(),
                    column: c.name().to_string(),
                    columns: cols
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        };
        let key_type = type_of(&sweep.key)?;
        type_of(&sweep.state_column)?;
        let ts_type = type_of(&sweep.timestamp_column)?;
        for c in sweep.job.iter().flat_map(|j| j.args.iter()) {
            type_of(c)?;
        }
        for c in &sweep.lookup_columns {
            type_of(c)?;
        }
        let numeric = |t: &str, names: &[&str]| names.iter().any(|n| t.starts_with(n));
        let ts_kind = match self.dialect {
            Dialect::Sqlite => TsKind::SqliteAny,
            Dialect::Mysql => {
                let t = ts_type.to_ascii_lowercase();
                if t.starts_with("datetime") || t.starts_with("timestamp") {
                    TsKind::MysqlTime
                } else if numeric(
                    &t,
                    &[
                        "bigint",
                        "int",
                        "mediumint",
                        "smallint",
                        "double",
                        "float",
                        "decimal",
                    ],
                ) {
                    TsKind::Epoch
                } else {
                    return Err(DbError::TimestampType {
                        db: self.name.clone(),
                        table: sweep.table.to_string(),
                        column: sweep.timestamp_column.to_string(),
                        ty: ts_type,
                    });
                }
            }
            Dialect::Postgres => {
                let t = ts_type.to_ascii_lowercase();
                if t.starts_with("timestamp")
                    && t.contains("with time zone")
                    && !t.contains("without")
                {
                    TsKind::Tz
                } else if t.starts_with("timestamp") {
                    TsKind::Naive
                } else if [
                    "bigint",
                    "integer",
                    "smallint",
                    "double precision",
                    "real",
                    "numeric",
                ]
                .iter()
                .any(|n| t.starts_with(n))
                {
                    TsKind::Epoch
                } else {
                    return Err(DbError::TimestampType {
                        db: self.name.clone(),
                        table: sweep.table.to_string(),
                        column: sweep.timestamp_column.to_string(),
                        ty: ts_type,
                    });
                }
            }
        };
        let d = self.dialect;
        let kt = key_type.to_ascii_lowercase();
        Ok(SweepTable {
            sweep: sweep.name.clone(),
            dialect: d,
            table: sweep.table.quoted_in(d),
            key: sweep.key.quoted_in(d),
            key_is_int: d == Dialect::Mysql
                && ["int", "bigint", "smallint", "mediumint", "tinyint"]
                    .iter()
                    .any(|n| kt.starts_with(n)),
            key_type,
            timezone: self.timezone.clone(),
            state: sweep.state_column.quoted_in(d),
            ts: sweep.timestamp_column.quoted_in(d),
            ts_kind,
            args: sweep
                .job
                .iter()
                .flat_map(|j| j.args.iter().map(|c| c.quoted_in(d)))
                .collect(),
            lookups: sweep
                .lookup_columns
                .iter()
                .map(|c| c.quoted_in(d))
                .collect(),
            pending: sweep.states.pending.clone(),
            sending: sweep.states.sending.clone(),
            error: sweep.states.error.clone(),
            sent: sweep.states.sent.clone(),
            batch_size: sweep.rules.limits.batch_size,
        })
    }

    /// Rows in pending / sending / error, any age.
    pub async fn state_counts(&self, t: &SweepTable) -> Result<StateCounts, DbError> {
        let sql = format!(
            "SELECT {s} AS sweeper_state, count(*) FROM {table} WHERE {state} IN ({p}, {g}, {e}) GROUP BY {table}.{state}",
            s = t.text(&t.state),
            table = t.table,
            state = t.state,
            p = t.pending.sql_literal_in(t.dialect),
            g = t.sending.sql_literal_in(t.dialect),
            e = t.error.sql_literal_in(t.dialect),
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(self.err(format!("counting rows of {}", t.table)))?;
        let mut c = StateCounts::default();
        for r in rows {
            let state: Option<String> = opt_text(&r, 0).map_err(self.err("counting rows"))?;
            let n: i64 = r.try_get(1).map_err(self.err("counting rows"))?;
            let n = n.max(0) as u64;
            let state = state.unwrap_or_default();
            if state == t.pending.to_string() {
                c.pending = n;
            } else if state == t.sending.to_string() {
                c.sending = n;
            } else if state == t.error.to_string() {
                c.error = n;
            }
        }
        Ok(c)
    }

    /// How many rows of `state` are older than `cutoff`, and the oldest.
    pub async fn stale_summary(
        &self,
        t: &SweepTable,
        state: RowState,
        cutoff: Timestamp,
    ) -> Result<StaleSummary, DbError> {
        let sql = format!(
            "SELECT count(*), min({epoch}), max({epoch}) FROM {table} WHERE {state} = {lit} AND {older}",
            epoch = t.epoch(),
            table = t.table,
            state = t.state,
            lit = t.literal(state),
            older = t.older_than(1),
        );
        let row = sqlx::query(&sql)
            .bind(epoch_of(cutoff))
            .fetch_one(&self.pool)
            .await
            .map_err(self.err(format!("counting stale {state} rows")))?;
        let count: i64 = row.try_get(0).map_err(self.err("counting stale rows"))?;
        let oldest: Option<f64> = row.try_get(1).map_err(self.err("counting stale rows"))?;
        let newest: Option<f64> = row.try_get(2).map_err(self.err("counting stale rows"))?;
        Ok(StaleSummary {
            count: count.max(0) as u64,
            oldest: oldest.and_then(epoch_seconds),
            newest: newest.and_then(epoch_seconds),
        })
    }

    /// One page of stale rows of `state`, in key order after `after`.
    pub async fn stale_page(
        &self,
        t: &SweepTable,
        state: RowState,
        cutoff: Timestamp,
        after: Option<&StuckRow>,
    ) -> Result<Vec<StuckRow>, DbError> {
        let mut sql = format!(
            "SELECT {} FROM {table} WHERE {state} = {lit} AND {older}",
            t.select_list(),
            table = t.table,
            state = t.state,
            lit = t.literal(state),
            older = t.older_than(1),
        );
        if after.is_some() {
            let _ = write!(sql, " AND {}.{} > {}", t.table, t.key, t.key_param(2));
        }
        let _ = write!(
            sql,
            " ORDER BY {}.{} LIMIT {}",
            t.table, t.key, t.batch_size
        );
        let mut q = sqlx::query(&sql).bind(epoch_of(cutoff));
        if let Some(a) = after {
            q = t.bind_key(q, a);
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(self.err(format!("reading stale {state} rows of {}", t.table)))?;
        rows.iter()
            .map(|r| row_from(r, state, t.lookups.len()))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.err(format!("decoding stale {state} rows of {}", t.table)))
    }

    /// One page of stale rows of `state` in key order after `after`, each
    /// with its ledger entry for `sweep` when `ledger` says the ledger table
    /// exists. Two queries: a join would leave the ledger lookup to a
    /// planner whose statistics for a freshly grown ledger are stale (a
    /// nested loop over every ledger row per page row was seen), while a
    /// key list costs at most one scan of the ledger per page.
    pub async fn stale_page_with_ledger(
        &self,
        t: &SweepTable,
        state: RowState,
        cutoff: Timestamp,
        after: Option<&StuckRow>,
        sweep: &str,
        ledger: bool,
    ) -> Result<Vec<(StuckRow, Option<LedgerEntry>)>, DbError> {
        let t0 = std::time::Instant::now();
        let rows = self.stale_page(t, state, cutoff, after).await?;
        let t1 = std::time::Instant::now();
        let mut entries = if ledger && !rows.is_empty() {
            let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
            self.ledger_get(sweep, &keys).await?
        } else {
            HashMap::new()
        };
        tracing::trace!(
            page_ms = (t1 - t0).as_secs_f64() * 1e3,
            ledger_ms = t1.elapsed().as_secs_f64() * 1e3,
            "page and ledger read"
        );
        Ok(rows
            .into_iter()
            .map(|r| {
                let e = entries.remove(&r.key);
                (r, e)
            })
            .collect())
    }

    /// One row by key, whatever its state or age (for `explain`). Returns
    /// the state column as text and the row (its `state` is only meaningful
    /// when the text is the pending or sending value).
    pub async fn row_by_key(
        &self,
        t: &SweepTable,
        key: &str,
    ) -> Result<Option<(String, StuckRow)>, DbError> {
        let sql = format!(
            "SELECT {}, {} AS sweeper_state FROM {} WHERE {} = {}",
            t.select_list(),
            t.text(&t.state),
            t.table,
            t.key,
            t.key_param(1)
        );
        // SQLite compares an INTEGER key with a bound integer, and MySQL an
        // integer key column; other keys as text.
        let probe = StuckRow {
            key: key.to_string(),
            key_int: match t.dialect {
                Dialect::Sqlite => key.parse().ok(),
                Dialect::Mysql if t.key_is_int => key.parse().ok(),
                Dialect::Mysql | Dialect::Postgres => None,
            },
            state: RowState::Pending,
            updated_at: Timestamp::default(),
            version: String::new(),
            args: vec![],
            lookups: vec![],
        };
        let mut found = t
            .bind_key(sqlx::query(&sql), &probe)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err(format!("reading row {key} of {}", t.table)))?;
        if found.is_none() && probe.key_int.is_some() && t.dialect == Dialect::Sqlite {
            found = sqlx::query(&sql)
                .bind(key.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(self.err(format!("reading row {key} of {}", t.table)))?;
        }
        let Some(r) = found else { return Ok(None) };
        let decode = || -> Result<(String, StuckRow), sqlx::Error> {
            let state: Option<String> = opt_text(&r, 5 + t.lookups.len())?;
            let state = state.unwrap_or_default();
            let rs = if state == t.sending.to_string() {
                RowState::Sending
            } else {
                RowState::Pending
            };
            Ok((state, row_from(&r, rs, t.lookups.len())?))
        };
        decode()
            .map(Some)
            .map_err(self.err(format!("decoding row {key} of {}", t.table)))
    }

    /// The state values of a sweep as text (to compare with `row_by_key`).
    pub fn state_text(t: &SweepTable, s: RowState) -> String {
        match s {
            RowState::Pending => t.pending.to_string(),
            RowState::Sending => t.sending.to_string(),
        }
    }

    /// Every stale row of `state`, fetched page by page (keyset over the key).
    pub async fn stale_rows(
        &self,
        t: &SweepTable,
        state: RowState,
        cutoff: Timestamp,
    ) -> Result<Vec<StuckRow>, DbError> {
        let mut out: Vec<StuckRow> = Vec::new();
        loop {
            let page = self.stale_page(t, state, cutoff, out.last()).await?;
            let done = page.len() < t.batch_size as usize;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// The current version (timestamp text) of each of `rows` still in
    /// `state`; rows absent from the answer have left that state.
    pub async fn current_versions(
        &self,
        t: &SweepTable,
        state: RowState,
        rows: &[&StuckRow],
    ) -> Result<HashMap<String, String>, DbError> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let params: Vec<String> = (1..=rows.len()).map(|i| t.key_param(i)).collect();
        let sql = format!(
            "SELECT {k} AS sweeper_key, {v} AS sweeper_version FROM {table} WHERE {state} = {lit} AND {key} IN ({params})",
            k = t.text(&t.key),
            v = t.text(&t.ts),
            table = t.table,
            state = t.state,
            lit = t.literal(state),
            key = t.key,
            params = params.join(", "),
        );
        // Planned with its keys, not as a generic prepared plan (see
        // `ledger_get`).
        let mut q = sqlx::query(&sql).persistent(false);
        for r in rows {
            q = t.bind_key(q, r);
        }
        let found = q
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("re-reading rows before requeue"))?;
        found
            .iter()
            .map(|r| {
                Ok((
                    opt_text(r, 0)?.unwrap_or_default(),
                    opt_text(r, 1)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.err("re-reading rows before requeue"))
    }

    /// Apply state changes in one transaction, each guarded by the row's
    /// state and version as read. Returns, per transition, whether it
    /// applied (`false` = the row had already moved on).
    ///
    /// One statement per (from, to) pair and chunk: an `UPDATE` joined to
    /// a `VALUES` list of (key, version) pairs that re-asserts key, state
    /// and version for every row and returns the keys it changed.
    pub async fn transition(
        &self,
        t: &SweepTable,
        changes: &[Transition<'_>],
    ) -> Result<Vec<bool>, DbError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut groups: Vec<((RowState, Target), Vec<&StuckRow>)> = Vec::new();
        for c in changes {
            let k = (c.row.state, c.to);
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, rows)) => rows.push(c.row),
                None => groups.push((k, vec![c.row])),
            }
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.err("starting a transaction"))?;
        let mut changed: std::collections::HashSet<String> = std::collections::HashSet::new();
        for ((from, to), rows) in &groups {
            for chunk in rows.chunks(GUARDED_CHUNK) {
                if t.dialect == Dialect::Mysql {
                    // No `UPDATE … RETURNING`: lock the rows that still
                    // match what was read, then update exactly those (the
                    // same predicate, re-asserted; the locks keep it true).
                    let (select, update) = t.mysql_guarded(*from, *to, chunk.len());
                    let mut q = sqlx::query(&select).persistent(false);
                    for r in chunk {
                        q = t.bind_key(q, r);
                    }
                    for r in chunk {
                        q = t.bind_key(q, r).bind(r.version.clone());
                    }
                    let keys = q.fetch_all(&mut *tx).await.map_err(self.err(format!(
                        "locking {} row(s) of {}",
                        chunk.len(),
                        t.table
                    )))?;
                    if keys.is_empty() {
                        continue;
                    }
                    let mut u = sqlx::query(&update).persistent(false);
                    for r in chunk {
                        u = t.bind_key(u, r);
                    }
                    for r in chunk {
                        u = t.bind_key(u, r).bind(r.version.clone());
                    }
                    u.execute(&mut *tx).await.map_err(self.err(format!(
                        "updating {} row(s) of {}",
                        chunk.len(),
                        t.table
                    )))?;
                    for k in keys {
                        let key = opt_text(&k, 0)
                            .map_err(self.err(format!("updating rows of {}", t.table)))?;
                        changed.insert(key.unwrap_or_default());
                    }
                    continue;
                }
                let sql = t.guarded_update(*from, *to, chunk.len());
                let mut q = sqlx::query(&sql).persistent(false);
                for r in chunk {
                    q = t.bind_key(q, r).bind(r.version.clone());
                }
                let keys = q.fetch_all(&mut *tx).await.map_err(self.err(format!(
                    "updating {} row(s) of {}",
                    chunk.len(),
                    t.table
                )))?;
                for k in keys {
                    let key: String = k
                        .try_get(0)
                        .map_err(self.err(format!("updating rows of {}", t.table)))?;
                    changed.insert(key);
                }
            }
        }
        let applied: Vec<&HistoryEntry> = changes
            .iter()
            .filter(|c| changed.contains(&c.row.key))
            .filter_map(|c| c.history)
            .collect();
        for chunk in applied.chunks(HISTORY_CHUNK) {
            let sql = self.history_sql(chunk.len());
            bind_history(sqlx::query(&sql).persistent(false), chunk)
                .execute(&mut *tx)
                .await
                .map_err(self.err("writing the history"))?;
        }
        tx.commit().await.map_err(self.err("committing updates"))?;
        Ok(changes
            .iter()
            .map(|c| changed.contains(&c.row.key))
            .collect())
    }

    pub async fn ledger_exists(&self) -> Result<bool, DbError> {
        self.table_exists(&self.ledger)
            .await
            .map_err(self.err("looking for the ledger table"))
    }

    /// Create the ledger table if it does not exist. Times are unix seconds.
    pub async fn ensure_ledger(&self) -> Result<(), DbError> {
        let sql = ledger_ddl(&self.ledger, self.dialect);
        sqlx::query(&sql)
            .execute(&self.pool)
            .await
            .map_err(self.err(format!("creating the ledger table {}", self.ledger)))?;
        Ok(())
    }

    /// The name of a sweep's `GET_LOCK` lock on this MySQL database.
    pub fn mysql_lock_name(&self, t: &SweepTable) -> String {
        mysql_lock_name(&self.url, t)
    }

    pub fn ledger_table(&self) -> &Ident {
        &self.ledger
    }

    /// Create the ledger and history tables if they do not exist. Two
    /// instances may do this at once, and Postgres' `IF NOT EXISTS` is not
    /// safe against that race: a failed attempt is retried once, when the
    /// other's statements have made every one of them a no-op.
    pub async fn ensure_tables(&self) -> Result<(), DbError> {
        match self.try_ensure_tables().await {
            Ok(()) => Ok(()),
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                self.try_ensure_tables().await
            }
        }
    }

    /// Only what is missing is created: a user without CREATE rights works
    /// once a DBA has applied `migrate --print`'s DDL (MySQL checks the
    /// privilege even for `CREATE TABLE IF NOT EXISTS` on a table that is
    /// there).
    async fn try_ensure_tables(&self) -> Result<(), DbError> {
        if !self.ledger_exists().await? {
            self.ensure_ledger().await?;
        }
        if self.history_exists().await? {
            return Ok(());
        }
        for sql in history_ddl(&self.history, self.dialect) {
            sqlx::query(&sql)
                .execute(&self.pool)
                .await
                .map_err(self.err(format!("creating the history table {}", self.history)))?;
        }
        Ok(())
    }

    pub fn history_table(&self) -> &Ident {
        &self.history
    }

    pub async fn history_exists(&self) -> Result<bool, DbError> {
        self.table_exists(&self.history)
            .await
            .map_err(self.err("looking for the history table"))
    }

    async fn table_exists(&self, t: &Ident) -> Result<bool, sqlx::Error> {
        match self.dialect {
            Dialect::Postgres => {
                sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                    .bind(t.quoted())
                    .fetch_one(&self.pool)
                    .await
            }
            Dialect::Sqlite => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            )
            .bind(t.name().to_string())
            .fetch_one(&self.pool)
            .await
            .map(|n| n > 0),
            Dialect::Mysql => sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = {} AND table_name = ?",
                mysql_schema(t)
            ))
            .bind(t.name().to_string())
            .fetch_one(&self.pool)
            .await
            .map(|n| n > 0),
        }
    }

    /// An `INSERT` of `n` history entries (see `bind_history`).
    fn history_sql(&self, n: usize) -> String {
        let mut sql = format!(
            "INSERT INTO {} (at, sweep, row_key, from_state, to_state, queue, attempt, reason, \
             evidence, pass_id, instance_id) VALUES ",
            self.history.quoted_in(self.dialect)
        );
        for i in 0..n {
            if i > 0 {
                sql.push_str(", ");
            }
            let ps: Vec<String> = (0..11).map(|j| ph(self.dialect, 11 * i + j + 1)).collect();
            let _ = write!(sql, "({})", ps.join(", "));
        }
        sql
    }

    /// Record applied decisions made outside a guarded update (requeues,
    /// right after the queue accepted them).
    pub async fn history_put(&self, entries: &[HistoryEntry]) -> Result<(), DbError> {
        let refs: Vec<&HistoryEntry> = entries.iter().collect();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.err("starting a transaction"))?;
        for chunk in refs.chunks(HISTORY_CHUNK) {
            let sql = self.history_sql(chunk.len());
            bind_history(sqlx::query(&sql).persistent(false), chunk)
                .execute(&mut *tx)
                .await
                .map_err(self.err("writing the history"))?;
        }
        tx.commit().await.map_err(self.err("writing the history"))
    }

    /// Delete history entries older than `before`, a batch at a time (no
    /// long lock on a big table). Returns how many went.
    pub async fn history_prune(&self, before: Timestamp) -> Result<u64, DbError> {
        let h = self.history.quoted_in(self.dialect);
        let sql = match self.dialect {
            Dialect::Mysql => {
                format!("DELETE FROM {h} WHERE at < ? ORDER BY at, id LIMIT {PRUNE_BATCH}")
            }
            Dialect::Postgres | Dialect::Sqlite => format!(
                "DELETE FROM {h} WHERE id IN (SELECT id FROM {h} WHERE at < {} ORDER BY at LIMIT {PRUNE_BATCH})",
                ph(self.dialect, 1)
            ),
        };
        let mut total = 0;
        loop {
            let n = sqlx::query(&sql)
                .bind(epoch_of(before))
                .execute(&self.pool)
                .await
                .map_err(self.err("pruning the history"))?
                .rows_affected();
            total += n;
            if n < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// History entries of `sweep` (one row's when `key` is given) since
    /// `since`, oldest first, at most `limit` (the newest `limit`).
    pub async fn history_list(
        &self,
        sweep: &str,
        key: Option<&str>,
        since: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, DbError> {
        let mut sql = format!(
            "SELECT at, sweep, row_key, from_state, to_state, queue, attempt, reason, evidence, \
             pass_id, instance_id FROM {} WHERE sweep = {}",
            self.history.quoted_in(self.dialect),
            ph(self.dialect, 1)
        );
        let mut n = 1;
        if key.is_some() {
            n += 1;
            let _ = write!(sql, " AND row_key = {}", ph(self.dialect, n));
        }
        if since.is_some() {
            n += 1;
            let _ = write!(sql, " AND at >= {}", ph(self.dialect, n));
        }
        let _ = write!(sql, " ORDER BY at DESC, id DESC LIMIT {limit}");
        let mut q = sqlx::query(&sql).bind(sweep.to_string());
        if let Some(k) = key {
            q = q.bind(k.to_string());
        }
        if let Some(t) = since {
            q = q.bind(epoch_of(t));
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("reading the history"))?;
        let decode = |r: &AnyRow| -> Result<HistoryEntry, sqlx::Error> {
            let at: f64 = r.try_get(0)?;
            let attempt: Option<i64> = r.try_get(6)?;
            Ok(HistoryEntry {
                at: epoch_seconds(at).unwrap_or_default(),
                sweep: opt_text(r, 1)?.unwrap_or_default(),
                key: opt_text(r, 2)?.unwrap_or_default(),
                from_state: opt_text(r, 3)?.unwrap_or_default(),
                to_state: opt_text(r, 4)?,
                queue: opt_text(r, 5)?,
                attempt: attempt.map(|a| u32::try_from(a.max(0)).unwrap_or(u32::MAX)),
                reason: opt_text(r, 7)?.unwrap_or_default(),
                evidence: opt_text(r, 8)?.unwrap_or_default(),
                pass_id: opt_text(r, 9)?.unwrap_or_default(),
                instance_id: opt_text(r, 10)?.unwrap_or_default(),
            })
        };
        let mut out = rows
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("decoding the history"))?;
        out.reverse();
        Ok(out)
    }

    /// Ledger entries of `sweep` for `keys` (absent when the table is).
    pub async fn ledger_get(
        &self,
        sweep: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, LedgerEntry>, DbError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(500) {
            let params: Vec<String> = (2..chunk.len() + 2).map(|i| ph(self.dialect, i)).collect();
            let sql = format!(
                "SELECT row_key, row_version, attempts, last_requeued_at FROM {l} \
                 WHERE sweep = {p1} AND row_key IN ({params})",
                l = self.ledger.quoted_in(self.dialect),
                p1 = ph(self.dialect, 1),
                params = params.join(", "),
            );
            // Not a prepared statement: Postgres would switch it to a
            // generic plan after five runs, searching the 500-key list
            // linearly for every ledger row of the sweep (10 ms a page on a
            // 1,000-row ledger, growing with it); planned with the keys
            // themselves it hashes the list or probes the primary key.
            let mut q = sqlx::query(&sql).persistent(false).bind(sweep.to_string());
            for k in chunk {
                q = q.bind(k.to_string());
            }
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(self.err("reading the ledger"))?;
            for r in rows {
                let decode = |r: &AnyRow| -> Result<(String, LedgerEntry), sqlx::Error> {
                    let key = opt_text(r, 0)?.unwrap_or_default();
                    let version = opt_text(r, 1)?.unwrap_or_default();
                    let attempts: i64 = r.try_get(2)?;
                    let at: f64 = r.try_get(3)?;
                    Ok((
                        key,
                        LedgerEntry {
                            attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
                            last_requeued_at: epoch_seconds(at).unwrap_or_default(),
                            version,
                        },
                    ))
                };
                let (k, e) = decode(&r).map_err(self.err("decoding the ledger"))?;
                out.insert(k, e);
            }
        }
        Ok(out)
    }

    /// Record requeues: (row key, row version, attempts) at `now`.
    pub async fn ledger_put(
        &self,
        sweep: &str,
        entries: &[(&str, &str, u32)],
        now: Timestamp,
    ) -> Result<(), DbError> {
        for chunk in entries.chunks(500) {
            let mut sql = format!(
                "INSERT INTO {} (sweep, row_key, row_version, attempts, last_requeued_at) VALUES ",
                self.ledger.quoted_in(self.dialect)
            );
            let mut n = 0;
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let ps: Vec<String> = (0..5).map(|j| ph(self.dialect, n + j + 1)).collect();
                n += 5;
                let _ = write!(sql, "({})", ps.join(", "));
            }
            sql.push_str(match self.dialect {
                Dialect::Mysql => {
                    " ON DUPLICATE KEY UPDATE row_version = VALUES(row_version), \
                     attempts = VALUES(attempts), last_requeued_at = VALUES(last_requeued_at)"
                }
                Dialect::Postgres | Dialect::Sqlite => {
                    " ON CONFLICT (sweep, row_key) DO UPDATE SET row_version = excluded.row_version, \
                     attempts = excluded.attempts, last_requeued_at = excluded.last_requeued_at"
                }
            });
            let mut q = sqlx::query(&sql);
            for (key, version, attempts) in chunk {
                q = q
                    .bind(sweep.to_string())
                    .bind(key.to_string())
                    .bind(version.to_string())
                    .bind(i64::from(*attempts))
                    .bind(epoch_of(now));
            }
            q.execute(&self.pool)
                .await
                .map_err(self.err("writing the ledger"))?;
        }
        Ok(())
    }

    /// Forget ledger entries of `sweep` last requeued before `before`.
    pub async fn ledger_prune(&self, sweep: &str, before: Timestamp) -> Result<u64, DbError> {
        let sql = format!(
            "DELETE FROM {} WHERE sweep = {} AND last_requeued_at < {}",
            self.ledger.quoted_in(self.dialect),
            ph(self.dialect, 1),
            ph(self.dialect, 2)
        );
        let res = sqlx::query(&sql)
            .bind(sweep.to_string())
            .bind(epoch_of(before))
            .execute(&self.pool)
            .await
            .map_err(self.err("pruning the ledger"))?;
        Ok(res.rows_affected())
    }

    /// Take the sweep's lock, keyed by sweep name and table (`None` when
    /// another instance holds it): a session advisory lock in Postgres, a
    /// `GET_LOCK` named lock in MySQL, each on a connection of its own; a
    /// lock file next to a SQLite database.
    pub async fn try_lock(&self, t: &SweepTable) -> Result<Option<LockGuard>, DbError> {
        let name = lock_subject(t);
        match self.dialect {
            Dialect::Sqlite => {
                let Some(db) = sqlite_path(&self.url) else {
                    return Ok(Some(LockGuard::None));
                };
                let file = format!(
                    "{}.sweeper-{:016x}.lock",
                    db.display(),
                    lock_key(&name) as u64
                );
                let io = |e: std::io::Error| DbError::Lock {
                    db: self.name.clone(),
                    path: file.clone(),
                    error: e.to_string(),
                };
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&file)
                    .map_err(io)?;
                match f.try_lock() {
                    Ok(()) => Ok(Some(LockGuard::File(f))),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
                }
            }
            Dialect::Mysql => {
                use sqlx::Connection as _;
                let lock_name = mysql_lock_name(&self.url, t);
                let mut conn = self.lock_connection().await?;
                let got: Option<i64> = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)")
                    .bind(lock_name.clone())
                    .fetch_one(&mut conn)
                    .await
                    .map_err(self.err("taking the sweep lock"))?;
                if got == Some(1) {
                    Ok(Some(LockGuard::Mysql {
                        conn: Some(conn),
                        name: lock_name,
                    }))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
            Dialect::Postgres => {
                use sqlx::Connection as _;
                let key = lock_key(&name);
                let mut conn = self.lock_connection().await?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(self.err("taking the sweep lock"))?;
                if got {
                    Ok(Some(LockGuard::Postgres {
                        conn: Some(conn),
                        key,
                    }))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }

    /// A connection outside the pool, for a session lock.
    async fn lock_connection(&self) -> Result<sqlx::AnyConnection, DbError> {
        use sqlx::Connection as _;
        tokio::time::timeout(
            self.connect_timeout,
            sqlx::AnyConnection::connect(&self.url),
        )
        .await
        .map_err(|_| DbError::Query {
            db: self.name.clone(),
            context: "taking the sweep lock".into(),
            source: sqlx::Error::PoolTimedOut,
        })?
        .map_err(self.err("taking the sweep lock"))
    }

    /// Whether the key column is a primary key or has a single-column
    /// unique index (keyset pages and guarded writes assume it is).
    pub async fn key_is_unique(&self, table: &Ident, key: &Ident) -> Result<bool, DbError> {
        let unique = match self.dialect {
            Dialect::Postgres => {
                sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnatts = 1 \
                 AND a.attname = $2)",
                )
                .bind(table.quoted())
                .bind(key.name().to_string())
                .fetch_one(&self.pool)
                .await
            }
            Dialect::Sqlite => sqlx::query_scalar::<_, i64>(
                "SELECT ((SELECT count(*) FROM pragma_table_info(?1) WHERE pk > 0) = 1 \
                   AND (SELECT pk FROM pragma_table_info(?1) WHERE name = ?2) = 1) \
                 OR EXISTS (SELECT 1 FROM pragma_index_list(?1) il \
                   WHERE il.\"unique\" = 1 \
                   AND (SELECT count(*) FROM pragma_index_info(il.name)) = 1 \
                   AND (SELECT name FROM pragma_index_info(il.name)) = ?2)",
            )
            .bind(table.name().to_string())
            .bind(key.name().to_string())
            .fetch_one(&self.pool)
            .await
            .map(|n| n != 0),
            Dialect::Mysql => sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM information_schema.statistics s \
                 WHERE s.table_schema = {schema} AND s.table_name = ? AND s.non_unique = 0 \
                 AND s.column_name = ? AND (SELECT count(*) FROM information_schema.statistics o \
                   WHERE o.table_schema = s.table_schema AND o.table_name = s.table_name \
                   AND o.index_name = s.index_name) = 1",
                schema = mysql_schema(table)
            ))
            .bind(table.name().to_string())
            .bind(key.name().to_string())
            .fetch_one(&self.pool)
            .await
            .map(|n| n != 0),
        };
        unique.map_err(self.err(format!("looking for a unique index on {table}.{key}")))
    }

    /// Run one statement (setup in benchmarks and tools).
    pub async fn execute(&self, sql: &str) -> Result<u64, DbError> {
        let r = sqlx::query(sql)
            .execute(&self.pool)
            .await
            .map_err(self.err("executing a statement"))?;
        Ok(r.rows_affected())
    }

    /// Run a trivial query (for `check` and `/readyz`).
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(self.err("ping"))?;
        Ok(())
    }

    /// The index that keeps a sweep's queries fast on a large table: walk a
    /// state in key order (keyset pages) with the timestamp in the index, so
    /// neither the pages nor the stale counts touch other states' rows.
    pub fn recommended_index(sweep: &SweepConfig, dialect: Dialect) -> String {
        index_ddl(
            &sweep.table,
            &sweep.state_column,
            &sweep.key,
            &sweep.timestamp_column,
            &[
                sweep.states.pending.clone(),
                sweep.states.sending.clone(),
                sweep.states.error.clone(),
            ],
            dialect,
        )
    }
}

/// The index that keeps a sweep fast (see `Db::recommended_index`); in
/// Postgres partial to `states` when any are given.
pub fn index_ddl(
    table: &Ident,
    state: &Ident,
    key: &Ident,
    ts: &Ident,
    states: &[StateValue],
    dialect: Dialect,
) -> String {
    let name = format!("{}_sweeper_idx", table.name());
    let cols = format!(
        "{} ({}, {}, {})",
        table.quoted_in(dialect),
        state.quoted_in(dialect),
        key.quoted_in(dialect),
        ts.quoted_in(dialect),
    );
    match dialect {
        Dialect::Postgres if !states.is_empty() => {
            let states = states
                .iter()
                .map(StateValue::sql_literal)
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "CREATE INDEX CONCURRENTLY {name} ON {cols} WHERE {} IN ({states});",
                state.quoted()
            )
        }
        Dialect::Postgres => format!("CREATE INDEX CONCURRENTLY {name} ON {cols};"),
        // SQLite cannot prove `state = 'pending'` implies an IN-list
        // partial index, so the index covers every state.
        Dialect::Sqlite => format!("CREATE INDEX {name} ON {cols};"),
        // No partial indexes in MySQL; built online (reads and writes go on).
        Dialect::Mysql => format!("CREATE INDEX {name} ON {cols} ALGORITHM=INPLACE LOCK=NONE;"),
    }
}

/// The ledger table's DDL. MySQL cannot index `TEXT`: the key columns are
/// `VARCHAR(191)` (191 four-byte characters fit InnoDB's key length), with
/// a binary collation so keys differing only in case stay apart.
pub fn ledger_ddl(ledger: &Ident, dialect: Dialect) -> String {
    let (text_key, real) = match dialect {
        Dialect::Postgres => ("TEXT", "double precision"),
        Dialect::Sqlite => ("TEXT", "REAL"),
        Dialect::Mysql => (MYSQL_KEY, "DOUBLE"),
    };
    let version = match dialect {
        Dialect::Mysql => "VARCHAR(255)",
        Dialect::Postgres | Dialect::Sqlite => "TEXT",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {l} (\
         sweep {text_key} NOT NULL, \
         row_key {text_key} NOT NULL, \
         row_version {version} NOT NULL, \
         attempts BIGINT NOT NULL, \
         last_requeued_at {real} NOT NULL, \
         PRIMARY KEY (sweep, row_key))",
        l = ledger.quoted_in(dialect),
    )
}

/// What a sweep's lock is keyed by: the sweep and its table.
fn lock_subject(t: &SweepTable) -> String {
    format!("{}:{}", t.sweep, t.table)
}

/// The key of a sweep's Postgres advisory lock (for operators looking at
/// `pg_locks`, and tests).
pub fn advisory_lock_key(t: &SweepTable) -> i64 {
    lock_key(&lock_subject(t))
}

/// The name of a sweep's MySQL `GET_LOCK` lock (`IS_USED_LOCK(name)`
/// names the connection holding it). Lock names are global to the server,
/// so the database is part of it; names are at most 64 characters: a
/// stable hash.
fn mysql_lock_name(url: &str, t: &SweepTable) -> String {
    let database = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .map_or("", |(_, db)| db);
    format!(
        "sweeper:{:016x}",
        lock_key(&format!("{database}/{}", lock_subject(t))) as u64
    )
}

/// The audit history table's DDL (statements to run in order): one row per
/// applied decision, indexed for one row's story and for pruning by age.
pub fn history_ddl(history: &Ident, dialect: Dialect) -> Vec<String> {
    let h = history.quoted_in(dialect);
    let name = history.name();
    let cols = "at {real} NOT NULL, sweep {key} NOT NULL, row_key {key} NOT NULL, \
                from_state {short} NOT NULL, to_state {short}, queue {short}, attempt BIGINT, \
                reason {short} NOT NULL, evidence {text} NOT NULL, pass_id {short} NOT NULL, \
                instance_id {short} NOT NULL";
    let typed = |id: &str, key: &str, short: &str, text: &str, real: &str| {
        format!(
            "{id}, {}",
            cols.replace("{real}", real)
                .replace("{key}", key)
                .replace("{short}", short)
                .replace("{text}", text)
        )
    };
    match dialect {
        Dialect::Postgres => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {h} ({})",
                typed(
                    "id BIGSERIAL PRIMARY KEY",
                    "TEXT",
                    "TEXT",
                    "TEXT",
                    "double precision"
                )
            ),
            format!("CREATE INDEX IF NOT EXISTS {name}_row_idx ON {h} (sweep, row_key, at)"),
            format!("CREATE INDEX IF NOT EXISTS {name}_at_idx ON {h} (at)"),
        ],
        Dialect::Sqlite => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {h} ({})",
                typed("id INTEGER PRIMARY KEY", "TEXT", "TEXT", "TEXT", "REAL")
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {name}_row_idx ON {} (sweep, row_key, at)",
                history.name()
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {name}_at_idx ON {} (at)",
                history.name()
            ),
        ],
        Dialect::Mysql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {h} ({}, INDEX {name}_row_idx (sweep, row_key, at), \
             INDEX {name}_at_idx (at))",
            typed(
                "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
                MYSQL_KEY,
                "VARCHAR(255)",
                // TEXT holds 64 KiB; an entry that did not fit would roll
                // back its page's marks.
                "MEDIUMTEXT",
                "DOUBLE"
            )
        )],
    }
}

/// Every statement `sweeper migrate` runs on a database, for DBAs who
/// apply schema changes themselves (`migrate --print`).
pub fn migration_ddl(ledger: &Ident, history: &Ident, dialect: Dialect) -> Vec<String> {
    let mut out = vec![ledger_ddl(ledger, dialect)];
    out.extend(history_ddl(history, dialect));
    out
}

/// A MySQL table's schema as SQL: its own, or the connection's database.
fn mysql_schema(table: &Ident) -> String {
    match table.schema() {
        // Identifiers are validated: letters, digits and underscores.
        Some(s) => format!("'{s}'"),
        None => "DATABASE()".into(),
    }
}

/// Bind history entries in `history_sql`'s column order.
fn bind_history<'q>(mut q: AnyQuery<'q>, entries: &[&HistoryEntry]) -> AnyQuery<'q> {
    for e in entries {
        q = q
            .bind(epoch_of(e.at))
            .bind(e.sweep.clone())
            .bind(e.key.clone())
            .bind(e.from_state.clone())
            .bind(e.to_state.clone())
            .bind(e.queue.clone())
            .bind(e.attempt.map(i64::from))
            .bind(e.reason.clone())
            .bind(e.evidence.clone())
            .bind(e.pass_id.clone())
            .bind(e.instance_id.clone());
    }
    q
}

/// MySQL key columns of sweeper's tables: indexable, compared exactly.
const MYSQL_KEY: &str = "VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin";

/// History entries per `INSERT` (11 bound values each).
const HISTORY_CHUNK: usize = 500;

/// History rows deleted per statement when pruning.
const PRUNE_BATCH: u64 = 5000;

/// Rows per guarded `UPDATE` statement (two bound values each; well
/// under both Postgres' and SQLite's parameter limits).
const GUARDED_CHUNK: usize = 1000;

fn epoch_of(t: Timestamp) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}

fn row_from(r: &AnyRow, state: RowState, lookups: usize) -> Result<StuckRow, sqlx::Error> {
    let key = opt_text(r, 0)?.unwrap_or_default();
    let key_int: Option<i64> = r.try_get(1)?;
    let version = opt_text(r, 2)?;
    let epoch: Option<f64> = r.try_get(3)?;
    let args_text = opt_text(r, 4)?;
    let args = match args_text
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        Some(Ok(serde_json::Value::Array(a))) => a,
        _ => Vec::new(),
    };
    let mut lk = Vec::with_capacity(lookups);
    for i in 0..lookups {
        lk.push(opt_text(r, 5 + i)?);
    }
    Ok(StuckRow {
        key,
        key_int,
        state,
        updated_at: epoch.and_then(epoch_seconds).unwrap_or_default(),
        version: version.unwrap_or_default(),
        args,
        lookups: lk,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

impl SweepTable {
    /// key, key as integer, version, epoch, args, lookups… (see `row_from`).
    /// Every expression gets an alias of its own: in Postgres an output
    /// column named like a table column (`"id"::text` is output as `id`)
    /// would capture `ORDER BY "id"` and sort the keys as text.
    fn select_list(&self) -> String {
        let mut sql = format!(
            "{} AS sweeper_key, {} AS sweeper_key_int, {} AS sweeper_version, \
             {} AS sweeper_epoch, {} AS sweeper_args",
            self.text(&self.key),
            self.key_int(),
            self.text(&self.ts),
            self.epoch(),
            self.args_json(),
        );
        for (i, l) in self.lookups.iter().enumerate() {
            let _ = write!(sql, ", {} AS sweeper_lookup_{i}", self.text(l));
        }
        sql
    }

    /// `UPDATE` of `n` rows from `from` to `to`, each re-asserting its key,
    /// state and version (bound as key, version pairs), returning the keys
    /// of the rows it changed.
    fn guarded_update(&self, from: RowState, to: Target, n: usize) -> String {
        let to = match to {
            Target::Pending => &self.pending,
            Target::Sent => &self.sent,
            Target::Error => &self.error,
        }
        .sql_literal_in(self.dialect);
        let from = self.literal(from);
        match self.dialect {
            Dialect::Postgres => {
                let values: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            "({}, {})",
                            self.key_param(2 * i + 1),
                            ph(self.dialect, 2 * i + 2)
                        )
                    })
                    .collect();
                format!(
                    "UPDATE {table} AS sweeper_t SET {state} = {to} \
                     FROM (VALUES {values}) AS sweeper_v(sweeper_k, sweeper_ver) \
                     WHERE sweeper_t.{key} = sweeper_v.sweeper_k AND sweeper_t.{state} = {from} \
                     AND {ver} = sweeper_v.sweeper_ver RETURNING {rkey}",
                    table = self.table,
                    state = self.state,
                    values = values.join(", "),
                    key = self.key,
                    ver = self.text(&format!("sweeper_t.{}", self.ts)),
                    rkey = self.text(&format!("sweeper_t.{}", self.key)),
                )
            }
            Dialect::Mysql => unreachable!("MySQL uses mysql_guarded"),
            Dialect::Sqlite => {
                let values: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            "({}, {})",
                            ph(self.dialect, 2 * i + 1),
                            ph(self.dialect, 2 * i + 2)
                        )
                    })
                    .collect();
                format!(
                    "UPDATE {table} SET {state} = {to} WHERE {state} = {from} \
                     AND ({key}, {ver}) IN (VALUES {values}) RETURNING {rkey}",
                    table = self.table,
                    state = self.state,
                    key = self.key,
                    ver = self.text(&self.ts),
                    values = values.join(", "),
                    rkey = self.text(&self.key),
                )
            }
        }
    }

    /// MySQL's guarded change of `n` rows: a `SELECT … FOR UPDATE` of the
    /// keys still matching what was read, then the `UPDATE` with the same
    /// predicate. Each binds the `n` keys, then `n` (key, version) pairs.
    fn mysql_guarded(&self, from: RowState, to: Target, n: usize) -> (String, String) {
        let to = match to {
            Target::Pending => &self.pending,
            Target::Sent => &self.sent,
            Target::Error => &self.error,
        }
        .sql_literal_in(self.dialect);
        let keys = vec!["?"; n].join(", ");
        let pairs = vec!["(?, ?)"; n].join(", ");
        let predicate = format!(
            "{key} IN ({keys}) AND {state} = {from} AND ({key}, {ver}) IN ({pairs})",
            key = self.key,
            state = self.state,
            from = self.literal(from),
            ver = self.text(&self.ts),
        );
        (
            format!(
                "SELECT {} FROM {} WHERE {predicate} FOR UPDATE",
                self.text(&self.key),
                self.table
            ),
            format!(
                "UPDATE {} SET {} = {to} WHERE {predicate}",
                self.table, self.state
            ),
        )
    }

    /// The same table, selecting no job arguments (for reads that only
    /// need keys, times and lookup values).
    pub fn without_args(&self) -> SweepTable {
        SweepTable {
            args: Vec::new(),
            ..self.clone()
        }
    }

    /// A column as text.
    fn text(&self, col: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("{col}::text"),
            Dialect::Sqlite => format!("CAST({col} AS TEXT)"),
            Dialect::Mysql => format!("CAST({col} AS CHAR)"),
        }
    }

    fn key_int(&self) -> String {
        match self.dialect {
            Dialect::Postgres => "NULL::int8".into(),
            Dialect::Mysql if self.key_is_int => format!("CAST({} AS SIGNED)", self.key),
            Dialect::Mysql => "CAST(NULL AS SIGNED)".into(),
            Dialect::Sqlite => format!(
                "(CASE WHEN typeof({k}) = 'integer' THEN {k} END)",
                k = self.key
            ),
        }
    }

    /// A bound key parameter, cast to the key column's type in Postgres.
    fn key_param(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!("CAST({} AS {})", ph(self.dialect, n), self.key_type),
            Dialect::Sqlite | Dialect::Mysql => ph(self.dialect, n),
        }
    }

    fn bind_key<'q>(&self, q: AnyQuery<'q>, row: &StuckRow) -> AnyQuery<'q> {
        match (self.dialect, row.key_int) {
            (Dialect::Sqlite, Some(i)) => q.bind(i),
            (Dialect::Mysql, Some(i)) if self.key_is_int => q.bind(i),
            _ => q.bind(row.key.clone()),
        }
    }

    fn literal(&self, state: RowState) -> String {
        match state {
            RowState::Pending => self.pending.sql_literal_in(self.dialect),
            RowState::Sending => self.sending.sql_literal_in(self.dialect),
        }
    }

    /// The timestamp as unix seconds (float).
    fn epoch(&self) -> String {
        let ts = &self.ts;
        match self.ts_kind {
            TsKind::Tz => format!("extract(epoch from {ts})::float8"),
            TsKind::Naive => format!(
                "extract(epoch from ({ts} AT TIME ZONE {}))::float8",
                pg_zone(&self.timezone)
            ),
            TsKind::MysqlTime => format!("(UNIX_TIMESTAMP({ts}) + 0e0)"),
            TsKind::Epoch if self.dialect == Dialect::Mysql => format!("({ts} + 0e0)"),
            TsKind::Epoch => format!("{ts}::float8"),
            TsKind::SqliteAny => format!(
                "(CASE typeof({ts}) WHEN 'integer' THEN {ts} * 1.0 WHEN 'real' THEN {ts} \
                 ELSE (julianday({ts}) - 2440587.5) * 86400.0 END)"
            ),
        }
    }

    /// `ts < cutoff` with the cutoff bound as unix seconds at `$n`, written
    /// so Postgres can use an index on the column.
    fn older_than(&self, n: usize) -> String {
        let ts = &self.ts;
        let p = ph(self.dialect, n);
        match self.ts_kind {
            TsKind::Tz => format!("{ts} < to_timestamp({p})"),
            TsKind::Naive => format!(
                "{ts} < (to_timestamp({p}) AT TIME ZONE {})",
                pg_zone(&self.timezone)
            ),
            TsKind::MysqlTime => format!("{ts} < FROM_UNIXTIME({p})"),
            TsKind::Epoch => format!("{ts} < {p}"),
            TsKind::SqliteAny => format!("{} < {p}", self.epoch()),
        }
    }

    /// The job argument columns as a JSON array (types preserved).
    fn args_json(&self) -> String {
        if self.args.is_empty() {
            return "'[]'".into();
        }
        match self.dialect {
            Dialect::Postgres => format!("json_build_array({})::text", self.args.join(", ")),
            Dialect::Sqlite => format!("json_array({})", self.args.join(", ")),
            // MySQL returns a JSON-typed column the `Any` driver cannot
            // decode (MariaDB returns text): cast it.
            Dialect::Mysql => format!("CAST(JSON_ARRAY({}) AS CHAR)", self.args.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_from_urls() {
        let table = [
            ("sqlite:///var/lib/app.db", Some("/var/lib/app.db")),
            ("sqlite://app.db?mode=rwc", Some("app.db")),
            ("sqlite:app.db", Some("app.db")),
            ("sqlite::memory:", None),
            ("sqlite://:memory:", None),
            ("sqlite://file.db?mode=memory", None),
        ];
        for (url, want) in table {
            assert_eq!(
                sqlite_path(url),
                want.map(std::path::PathBuf::from),
                "{url}"
            );
        }
    }

    #[test]
    fn mysql_urls_zones_and_literals() {
        assert_eq!(
            driver_url("mariadb://u@h:3306/app", Dialect::Mysql),
            "mysql://u@h:3306/app"
        );
        assert_eq!(
            driver_url("mysql://u@h/app", Dialect::Mysql),
            "mysql://u@h/app"
        );
        assert_eq!(mysql_zone("UTC"), "+00:00");
        assert_eq!(mysql_zone("Europe/Berlin"), "Europe/Berlin");
        // Postgres reads a string offset with POSIX's inverted sign.
        assert_eq!(pg_zone("+02:00"), "INTERVAL '+02:00'");
        assert_eq!(pg_zone("UTC"), "'UTC'");
        let s = StateValue::Str(r"it's\".into());
        assert_eq!(s.sql_literal_in(Dialect::Mysql), r"'it''s\\'");
        assert_eq!(s.sql_literal_in(Dialect::Postgres), r"'it''s\'");
    }

    #[test]
    fn each_dialect_gets_its_own_index_and_table_ddl() {
        let t = Ident::parse("app.comments", true).unwrap();
        let c = |n: &str| Ident::parse(n, false).unwrap();
        let states = [StateValue::Str("pending".into())];
        let table = [
            (
                Dialect::Postgres,
                "CREATE INDEX CONCURRENTLY comments_sweeper_idx ON \"app\".\"comments\" (\"state\", \"id\", \"updated_at\") WHERE \"state\" IN ('pending');",
            ),
            (
                Dialect::Sqlite,
                "CREATE INDEX comments_sweeper_idx ON \"app\".\"comments\" (\"state\", \"id\", \"updated_at\");",
            ),
            (
                Dialect::Mysql,
                "CREATE INDEX comments_sweeper_idx ON `app`.`comments` (`state`, `id`, `updated_at`) ALGORITHM=INPLACE LOCK=NONE;",
            ),
        ];
        for (d, want) in table {
            assert_eq!(
                index_ddl(&t, &c("state"), &c("id"), &c("updated_at"), &states, d),
                want
            );
        }
        let h = Ident::parse("sweeper_history", true).unwrap();
        let my = history_ddl(&h, Dialect::Mysql);
        assert_eq!(my.len(), 1, "MySQL declares its indexes inline");
        assert!(
            my[0].contains(
                "row_key VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"
            ),
            "{my:?}"
        );
        assert_eq!(history_ddl(&h, Dialect::Postgres).len(), 3);
        assert!(ledger_ddl(&h, Dialect::Mysql)
            .contains("sweep VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"));
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        // Pinned: a key that changed between builds would let two versions
        // of sweeper act on one sweep at once (FNV-1a of "sweeper:comments").
        assert_eq!(lock_key("comments") as u64, 0xf208_74b6_9904_cd10);
        assert_ne!(lock_key("comments"), lock_key("receipts"));
    }
}
