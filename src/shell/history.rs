//! `sweeper history` (the audit history of applied decisions, read back)
//! and `sweeper migrate --print` (the DDL `migrate` would run).
//!
//! Owns: reading the history for one sweep or row, and rendering it as
//! text or JSON. The table itself (DDL, writes in the update's transaction,
//! pruning) belongs to `adapters::db`; what goes into an entry, to `pass`.

use super::cli::{EXIT_FAILED, EXIT_OK};
use crate::adapters::db::{migration_ddl, Db};
use crate::config::Config;
use crate::core::model::HistoryEntry;
use anyhow::Context as _;
use std::fmt::Write as _;
use std::time::Duration;

/// Every statement `sweeper migrate` runs, per database, in its dialect.
pub fn migration_script(cfg: &Config) -> String {
    let mut out = String::new();
    for (name, d) in &cfg.databases {
        let _ = writeln!(
            out,
            "-- database {name} ({}): ledger {}, history {}",
            d.dialect.as_str(),
            d.ledger_table,
            d.history_table
        );
        for sql in migration_ddl(&d.ledger_table, &d.history_table, d.dialect) {
            let _ = writeln!(out, "{sql};");
        }
        out.push('\n');
    }
    out
}

/// List the history of `sweep` (or one row of it).
pub async fn run(
    cfg: &Config,
    sweep: &str,
    key: Option<&str>,
    since: Option<Duration>,
    limit: u32,
    json: bool,
) -> anyhow::Result<u8> {
    let s = cfg.sweep(sweep).context("unknown sweep")?;
    let dcfg = &cfg.databases[&s.database];
    let db = Db::connect(dcfg).await?;
    if !db.history_exists().await? {
        eprintln!(
            "sweeper: database {}: no history table {} yet (sweeper creates it before its first \
             write; `sweeper migrate` creates it now)",
            dcfg.name, dcfg.history_table
        );
        db.close().await;
        return Ok(EXIT_FAILED);
    }
    let since = match since {
        Some(d) => Some(db.now().await? - chrono::TimeDelta::from_std(d)?),
        None => None,
    };
    let entries = db.history_list(sweep, key, since, limit).await?;
    db.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print!("{}", render_text(&entries));
    }
    Ok(EXIT_OK)
}

/// One line per entry: when, row, the change, why, on what evidence, by
/// which pass and instance.
pub fn render_text(entries: &[HistoryEntry]) -> String {
    if entries.is_empty() {
        return "no history entries\n".into();
    }
    let mut out = String::new();
    for e in entries {
        let change = match (&e.to_state, &e.queue) {
            (Some(to), _) => format!("{} -> {to}", e.from_state),
            (None, Some(q)) => format!(
                "{} -> requeued to {q} (attempt {})",
                e.from_state,
                e.attempt.unwrap_or(1)
            ),
            (None, None) => e.from_state.clone(),
        };
        let _ = write!(
            out,
            "{}  {}  key {}  {change}  reason {}",
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.sweep,
            e.key,
            e.reason
        );
        if !e.evidence.is_empty() {
            let _ = write!(out, "  evidence {}", e.evidence);
        }
        let _ = writeln!(out, "  pass {} on {}", e.pass_id, e.instance_id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(to: Option<&str>, queue: Option<&str>, evidence: &str) -> HistoryEntry {
        HistoryEntry {
            at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            sweep: "receipts".into(),
            key: "42".into(),
            from_state: if queue.is_some() {
                "pending"
            } else {
                "sending"
            }
            .into(),
            to_state: to.map(str::to_string),
            queue: queue.map(str::to_string),
            attempt: queue.map(|_| 2),
            reason: "delivered_in_log".into(),
            evidence: evidence.into(),
            pass_id: "p1".into(),
            instance_id: "host:7".into(),
        }
    }

    #[test]
    fn each_kind_of_change_reads_as_one_line() {
        let table = [
            (
                entry(Some("sent"), None, "postfix: delivered (mail.log:12)"),
                "2027-01-15T08:00:00Z  receipts  key 42  sending -> sent  reason delivered_in_log  evidence postfix: delivered (mail.log:12)  pass p1 on host:7\n",
            ),
            (
                entry(None, Some("sidekiq"), ""),
                "2027-01-15T08:00:00Z  receipts  key 42  pending -> requeued to sidekiq (attempt 2)  reason delivered_in_log  pass p1 on host:7\n",
            ),
        ];
        for (e, want) in table {
            assert_eq!(render_text(&[e]), want);
        }
        assert_eq!(render_text(&[]), "no history entries\n");
    }
}
