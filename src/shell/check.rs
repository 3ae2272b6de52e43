//! `sweeper check`: after validation, reach every database, sweep table,
//! queue and evidence source named in the config and say what was found.
//! Prints one line per thing checked; exit 1 if anything is unreachable.

use super::cli::{EXIT_FAILED, EXIT_OK};
use crate::adapters::db::Db;
use crate::adapters::logfile;
use crate::adapters::queue::QueueClient;
use crate::config::{Config, EvidenceKind};

pub async fn run(cfg: &Config) -> anyhow::Result<u8> {
    let mut failed = 0usize;
    let mut fail = |what: String| {
        println!("FAIL  {what}");
        failed += 1;
    };
    println!(
        "ok    config: {} database(s), {} queue(s), {} evidence source(s), {} sweep(s)",
        cfg.databases.len(),
        cfg.queues.len(),
        cfg.evidence.len(),
        cfg.sweeps.len()
    );
    for (name, dcfg) in &cfg.databases {
        check_database(cfg, name, dcfg, &mut fail).await;
    }
    for (name, qcfg) in &cfg.queues {
        match QueueClient::connect(qcfg).await {
            Ok(mut q) => match q.ping().await {
                Ok(desc) => println!("ok    queue {name}: {desc}"),
                Err(e) => fail(e.to_string()),
            },
            Err(e) => fail(e.to_string()),
        }
    }
    for (name, ecfg) in &cfg.evidence {
        match &ecfg.kind {
            EvidenceKind::Log(l) if l.journal.is_some() => {
                let input = l.journal.clone().expect("a journal source");
                let (source, probe_input) = (name.clone(), input.clone());
                let probed = tokio::task::spawn_blocking(move || {
                    crate::adapters::journal::probe(&source, &probe_input)
                })
                .await;
                match probed {
                    Ok(Ok(last)) => println!(
                        "ok    evidence {name}: {} records in {} ({})",
                        l.format.as_str(),
                        crate::adapters::tail::journal_label(&input),
                        last.map_or("no matching record yet".to_string(), |t| format!(
                            "newest matching record at {t}"
                        ))
                    ),
                    Ok(Err(e)) => fail(e.to_string()),
                    Err(e) => fail(format!("evidence {name}: {e}")),
                }
            }
            EvidenceKind::Log(l) => match logfile::resolve(name, &l.paths) {
                Ok(files) => {
                    let unreadable: Vec<String> = files
                        .iter()
                        .filter_map(|f| {
                            logfile::open(f)
                                .err()
                                .map(|e| format!("{}: {e}", f.display()))
                        })
                        .collect();
                    if unreadable.is_empty() {
                        println!(
                            "ok    evidence {name}: {} log, {} file(s), read oldest first: {}",
                            l.format.as_str(),
                            files.len(),
                            files
                                .iter()
                                .map(|f| f.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    } else {
                        fail(format!(
                            "evidence {name}: cannot read {}",
                            unreadable.join("; ")
                        ));
                    }
                }
                Err(e) => fail(e.to_string()),
            },
            EvidenceKind::Store(sc) => match crate::adapters::logstore::probe(name, sc).await {
                Ok(desc) => println!("ok    evidence {name}: {desc}"),
                Err(e) => fail(format!("evidence {name}: {e}")),
            },
            EvidenceKind::Provider(pc) => {
                // Ask about a key that cannot exist: reaches the API with the
                // credentials and expects "not found", not 401/5xx.
                let probe = crate::adapters::provider::WantedRow {
                    key: "sweeper-check-probe".into(),
                    since: chrono::Utc::now() - chrono::TimeDelta::hours(1),
                    fields: Default::default(),
                };
                let scan =
                    crate::adapters::provider::fetch(name, pc, std::slice::from_ref(&probe), false)
                        .await;
                match scan.failed.values().next() {
                    None => println!(
                        "ok    evidence {name}: {} API at {} answered ({} request(s))",
                        pc.api.as_str(),
                        pc.base_url,
                        scan.requests
                    ),
                    Some(e) => fail(format!("evidence {name}: {e}")),
                }
            }
        }
    }
    Ok(if failed > 0 {
        println!("{failed} check(s) failed");
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}

/// One database: reachable, its clock, sweeper's tables, and each sweep's
/// table (columns, key uniqueness, the recommended index).
async fn check_database(
    cfg: &Config,
    name: &str,
    dcfg: &crate::config::DatabaseConfig,
    fail: &mut impl FnMut(String),
) {
    let db = match Db::connect(dcfg).await {
        Ok(db) => db,
        Err(e) => {
            fail(e.to_string());
            return;
        }
    };
    match db.now().await {
        Ok(now) => println!(
            "ok    database {name} ({}): reachable, clock {}",
            dcfg.redacted_url(),
            now.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        Err(e) => fail(e.to_string()),
    }
    match db.ledger_exists().await {
        Ok(true) => println!("ok    database {name}: ledger table {} present", dcfg.ledger_table),
        Ok(false) => println!(
            "ok    database {name}: ledger table {} not created yet (the first real pass or `sweeper migrate` creates it)",
            dcfg.ledger_table
        ),
        Err(e) => fail(e.to_string()),
    }
    match db.history_exists().await {
        Ok(true) => println!(
            "ok    database {name}: history table {} present",
            dcfg.history_table
        ),
        Ok(false) => println!(
            "ok    database {name}: history table {} not created yet (the first real pass or `sweeper migrate` creates it)",
            dcfg.history_table
        ),
        Err(e) => fail(e.to_string()),
    }
    for sweep in cfg.sweeps.iter().filter(|s| s.database == name) {
        match db.sweep_table(sweep).await {
            Ok(_) => {
                println!(
                    "ok    sweep {}: table {} has columns {}, {}, {}{}",
                    sweep.name,
                    sweep.table,
                    sweep.key,
                    sweep.state_column,
                    sweep.timestamp_column,
                    if sweep.job.as_ref().is_some_and(|j| !j.args.is_empty())
                        || !sweep.evidence.is_empty()
                    {
                        " and every arg/match column"
                    } else {
                        ""
                    }
                );
                match db.key_is_unique(&sweep.table, &sweep.key).await {
                    Ok(true) => {}
                    Ok(false) => println!(
                        "WARN  sweep {}: key column {} is neither a primary key nor uniquely indexed; \
                         sweeper pages and guards writes by it, so rows sharing a key may be skipped \
                         or updated together",
                        sweep.name, sweep.key
                    ),
                    Err(e) => println!("WARN  sweep {}: {e}", sweep.name),
                }
                println!(
                    "      recommended index: {}",
                    Db::recommended_index(sweep, dcfg.dialect)
                );
            }
            Err(e) => fail(format!("sweep {}: {e}", sweep.name)),
        }
    }
    db.close().await;
}
