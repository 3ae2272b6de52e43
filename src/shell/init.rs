//! `sweeper init -d URL`: read the app's schema (never write), sample the
//! values of state-like columns, and print a commented YAML draft of the
//! sweeps it could recognise (core::propose decides; this module reads).
//!
//! Owns: the catalog queries for Postgres and SQLite, sampling, the row
//! counts and ages per state, and whether the recommended index exists.

use crate::adapters::db::index_ddl;
use crate::config::{redact_url, Dialect, Ident, StateValue};
use crate::core::propose::{self, Column, Facts, Proposal, Table};
use anyhow::Context as _;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// `init` reads Postgres and SQLite catalogs only.
const NO_MYSQL: &str = "sweeper init cannot read MySQL/MariaDB schemas yet: write the sweep by \
     hand (see config/example.yaml), then `sweeper check` verifies its table, columns and index";

/// Rows looked at per column when sampling state values.
const SAMPLE: u32 = 100_000;

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` quoted, from the name `Table.name` holds.
fn quote_table(name: &str) -> String {
    name.split('.').map(quote).collect::<Vec<_>>().join(".")
}

fn text(dialect: Dialect, col: &str) -> String {
    match dialect {
        Dialect::Postgres => format!("{col}::text"),
        Dialect::Sqlite => format!("CAST({col} AS TEXT)"),
        Dialect::Mysql => format!("CAST({col} AS CHAR)"),
    }
}

async fn tables(pool: &AnyPool, dialect: Dialect) -> anyhow::Result<Vec<String>> {
    let rows = match dialect {
        Dialect::Postgres => {
            sqlx::query(
                "SELECT CASE WHEN table_schema = current_schema() THEN table_name::text \
                 ELSE table_schema::text || '.' || table_name::text END \
                 FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
                 AND table_schema NOT IN ('pg_catalog', 'information_schema') \
                 ORDER BY 1",
            )
            .fetch_all(pool)
            .await
        }
        Dialect::Sqlite => {
            sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .fetch_all(pool)
            .await
        }
        Dialect::Mysql => anyhow::bail!(NO_MYSQL),
    }
    .context("listing tables")?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0).context("listing tables"))
        .collect()
}

async fn describe(pool: &AnyPool, dialect: Dialect, name: &str) -> anyhow::Result<Table> {
    let ctx = || format!("describing {name}");
    let (columns, primary_key) = match dialect {
        Dialect::Mysql => anyhow::bail!(NO_MYSQL),
        Dialect::Postgres => {
            let cols = sqlx::query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                 CASE WHEN t.typtype = 'e' THEN 1 ELSE 0 END \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
            )
            .bind(quote_table(name))
            .fetch_all(pool)
            .await
            .with_context(ctx)?;
            let pk = sqlx::query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY a.attnum",
            )
            .bind(quote_table(name))
            .fetch_all(pool)
            .await
            .with_context(ctx)?;
            let columns = cols
                .iter()
                .map(|r| {
                    Ok(Column {
                        name: r.try_get(0)?,
                        ty: r.try_get::<String, _>(1)?.to_ascii_lowercase(),
                        is_enum: r.try_get::<i32, _>(2)? == 1,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .with_context(ctx)?;
            let pk = pk
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()
                .with_context(ctx)?;
            (columns, pk)
        }
        Dialect::Sqlite => {
            let rows = sqlx::query("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")
                .bind(name.to_string())
                .fetch_all(pool)
                .await
                .with_context(ctx)?;
            let mut pk: Vec<(i64, String)> = Vec::new();
            let mut columns = Vec::new();
            for r in &rows {
                let n: String = r.try_get(0).with_context(ctx)?;
                let ty: Option<String> = r.try_get(1).with_context(ctx)?;
                let k: i64 = r.try_get(2).with_context(ctx)?;
                if k > 0 {
                    pk.push((k, n.clone()));
                }
                columns.push(Column {
                    name: n,
                    ty: ty.unwrap_or_default().to_ascii_lowercase(),
                    is_enum: false,
                });
            }
            pk.sort();
            (columns, pk.into_iter().map(|(_, n)| n).collect())
        }
    };
    let mut t = Table {
        name: name.to_string(),
        columns,
        primary_key,
        samples: Default::default(),
    };
    let candidates: Vec<String> = propose::state_candidates(&t.columns)
        .into_iter()
        .map(|c| c.name.clone())
        .collect();
    for c in candidates {
        let sql = format!(
            "SELECT v, count(*) FROM (SELECT {} AS v FROM {} LIMIT {SAMPLE}) s \
             WHERE v IS NOT NULL GROUP BY v ORDER BY count(*) DESC, v LIMIT 40",
            text(dialect, &quote(&c)),
            quote_table(name)
        );
        let rows = sqlx::query(&sql).fetch_all(pool).await.with_context(ctx)?;
        let values = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0)?,
                    r.try_get::<i64, _>(1)?.max(0) as u64,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .with_context(ctx)?;
        t.samples.insert(c, values);
    }
    Ok(t)
}

/// Rows per state value with the oldest change, and the index check.
async fn facts(
    pool: &AnyPool,
    dialect: Dialect,
    p: &Proposal,
    ts_type: Option<&str>,
) -> anyhow::Result<Facts> {
    let ctx = || format!("counting rows of {}", p.table);
    // The age of the oldest change per state value, in seconds.
    let epoch = match (&p.timestamp, dialect) {
        (propose::Pick::Found(ts), Dialect::Postgres) => {
            let col = quote(ts);
            let ty = ts_type.unwrap_or_default();
            if ty.starts_with("timestamp")
                && ty.contains("with time zone")
                && !ty.contains("without")
            {
                format!("max(extract(epoch from now() - {col}))::float8")
            } else if ty.starts_with("timestamp") {
                format!("max(extract(epoch from (now() AT TIME ZONE 'UTC') - {col}))::float8")
            } else {
                format!("max(extract(epoch from now()) - {col})::float8")
            }
        }
        (propose::Pick::Found(ts), Dialect::Sqlite) => {
            let col = quote(ts);
            format!(
                "max((julianday('now') - 2440587.5) * 86400.0 - (CASE typeof({col}) \
                 WHEN 'integer' THEN {col} * 1.0 WHEN 'real' THEN {col} \
                 ELSE (julianday({col}) - 2440587.5) * 86400.0 END))"
            )
        }
        (propose::Pick::Todo(_), Dialect::Postgres) => "NULL::float8".into(),
        (propose::Pick::Todo(_), Dialect::Sqlite) => "NULL".into(),
        (_, Dialect::Mysql) => anyhow::bail!(NO_MYSQL),
    };
    let sql = format!(
        "SELECT {} AS v, count(*), {epoch} FROM {} GROUP BY 1 ORDER BY 2 DESC LIMIT 40",
        text(dialect, &quote(&p.state_column)),
        quote_table(&p.table)
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await.with_context(ctx)?;
    let per_value = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<Option<String>, _>(0)?
                    .unwrap_or_else(|| "NULL".into()),
                r.try_get::<i64, _>(1)?.max(0) as u64,
                r.try_get::<Option<f64>, _>(2)?,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .with_context(ctx)?;
    let index = recommended(p, dialect).map(|ddl| (ddl, false));
    let index = match index {
        None => None,
        Some((ddl, _)) => {
            let exists = index_on_state(pool, dialect, &p.table, &p.state_column).await?;
            Some((ddl, exists))
        }
    };
    Ok(Facts { per_value, index })
}

fn recommended(p: &Proposal, dialect: Dialect) -> Option<String> {
    let (propose::Pick::Found(key), propose::Pick::Found(ts)) = (&p.key, &p.timestamp) else {
        return None;
    };
    let table = Ident::parse(&p.table, true).ok()?;
    let state = Ident::parse(&p.state_column, false).ok()?;
    let key = Ident::parse(key, false).ok()?;
    let ts = Ident::parse(ts, false).ok()?;
    let value = |v: &str| {
        if p.integer_states {
            v.parse().ok().map(StateValue::Int)
        } else {
            Some(StateValue::Str(v.to_string()))
        }
    };
    let states: Vec<StateValue> = [&p.states[0], &p.states[1], &p.states[3]]
        .into_iter()
        .flatten()
        .filter_map(|v| value(v))
        .collect();
    Some(index_ddl(&table, &state, &key, &ts, &states, dialect))
}

/// Whether some index of the table starts with the state column.
async fn index_on_state(
    pool: &AnyPool,
    dialect: Dialect,
    table: &str,
    state: &str,
) -> anyhow::Result<bool> {
    let defs: Vec<String> = match dialect {
        Dialect::Mysql => anyhow::bail!(NO_MYSQL),
        Dialect::Postgres => sqlx::query(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = to_regclass($1)",
        )
        .bind(quote_table(table))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?,
        Dialect::Sqlite => sqlx::query(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL",
        )
        .bind(table.to_string())
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?,
    };
    let s = state.to_ascii_lowercase();
    Ok(defs.iter().any(|d| {
        let d = d.to_ascii_lowercase();
        d.split_once('(').is_some_and(|(_, cols)| {
            let first = cols
                .split([',', ')'])
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('"');
            first == s
        })
    }))
}

/// Inspect the database at `url` and print the draft. Read only.
pub async fn run(url: &str, only: &[String]) -> anyhow::Result<u8> {
    let dialect = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Dialect::Postgres
    } else if url.starts_with("sqlite:") {
        Dialect::Sqlite
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        anyhow::bail!("{NO_MYSQL} ({})", redact_url(url));
    } else {
        anyhow::bail!(
            "unsupported database URL {} (expected postgres://… or sqlite:…)",
            redact_url(url)
        );
    };
    sqlx::any::install_default_drivers();
    // A read-only look: SQLite is opened read-only; Postgres sessions are.
    let connect_url = match dialect {
        Dialect::Sqlite if !url.contains("mode=") => {
            format!("{url}{}mode=ro", if url.contains('?') { "&" } else { "?" })
        }
        _ => url.to_string(),
    };
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if dialect == Dialect::Postgres {
                    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(&connect_url)
        .await
        .with_context(|| format!("cannot connect to {}", redact_url(url)))?;
    let names = if only.is_empty() {
        tables(&pool, dialect).await?
    } else {
        only.to_vec()
    };
    let mut proposals: Vec<(Proposal, Facts)> = Vec::new();
    let mut skipped = Vec::new();
    for name in names {
        if name.contains("sweeper_ledger") {
            continue;
        }
        if Ident::parse(&name, true).is_err() {
            skipped.push(format!(
                "{name}: its name needs quoting sweeper does not accept"
            ));
            continue;
        }
        let t = describe(&pool, dialect, &name).await?;
        if t.columns.is_empty() {
            skipped.push(format!("{name}: no such table"));
            continue;
        }
        if let Some(p) = propose::propose(&t) {
            let ts_type = match &p.timestamp {
                propose::Pick::Found(ts) => t
                    .columns
                    .iter()
                    .find(|c| c.name == *ts)
                    .map(|c| c.ty.as_str()),
                propose::Pick::Todo(_) => None,
            };
            let f = facts(&pool, dialect, &p, ts_type).await?;
            proposals.push((p, f));
        }
    }
    pool.close().await;
    let redacted = redact_url(url);
    let url_out = if redacted != url {
        "${DATABASE_URL}".to_string()
    } else {
        url.to_string()
    };
    print!(
        "{}",
        propose::render(&redacted, &url_out, &proposals, &skipped)
    );
    Ok(super::cli::EXIT_OK)
}
