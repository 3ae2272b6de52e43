//! The command line: argument parsing, logging setup, exit codes, and the
//! thin commands that call the pass and print its report.
//!
//! Exit codes: 0 ok, 1 a pass finished with failed actions (or `check`
//! could not reach something), 2 usage or internal error, 78 invalid config.

use super::pass::{run_pass, Connections, PassOptions};
use crate::config::{self, Config, LoadError};
use crate::core::report::{render_json, render_markdown, render_text};
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 78;

#[derive(Parser, Debug)]
#[command(
    name = "sweeper",
    version,
    about = "Finds jobs stuck in your app's tables, requeues lost ones, settles ambiguous sends from evidence",
    long_about = None,
    after_help = "The config file comes from -c/--config, else from $SWEEPER_CONFIG.\n\
                  Every config key is in the annotated example: `sweeper check --help` says where.\n\
                  Logs go to stderr, filtered by RUST_LOG (default sweeper=info).\n\
                  Exit codes: 0 ok, 1 failed actions or errors, 2 usage, 78 invalid config."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A table for the terminal.
    Text,
    /// Paste-ready Markdown.
    Markdown,
    /// The versioned JSON schema of docs/report-schema.md.
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// Config file (YAML); defaults to $SWEEPER_CONFIG.
    #[arg(short = 'c', long = "config", env = "SWEEPER_CONFIG")]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a throwaway SQLite app + mail log, print a dry run and a real pass.
    Demo {
        /// Keep the demo files in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Daemon: every sweep on its schedule, /metrics /healthz /readyz, SIGHUP reloads.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// After SIGTERM/SIGINT, exit at the latest after this long.
        #[arg(long, default_value = "8s", value_parser = parse_duration_arg)]
        shutdown_timeout: std::time::Duration,
        /// Wait this long before the first pass (default: a few seconds of jitter).
        #[arg(long, value_parser = parse_duration_arg)]
        initial_delay: Option<std::time::Duration>,
    },
    /// One pass over every sweep (cron / Kubernetes CronJob).
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this sweep (repeatable).
        #[arg(long = "sweep")]
        sweeps: Vec<String>,
        /// Plan only: write nothing anywhere.
        #[arg(long)]
        dry_run: bool,
        /// How to print the pass's report on stdout.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Dry-run plan for on-call: counts, ages, per-row decision and evidence.
    Report {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this sweep (repeatable).
        #[arg(long = "sweep")]
        sweeps: Vec<String>,
        /// text (terminal), markdown (incident docs) or json (docs/report-schema.md).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// List at most this many rows per sweep (counts stay complete).
        #[arg(long, default_value_t = 200)]
        max_rows: usize,
    },
    /// One row, in words: state, age, rule, evidence lines, verdict, decision.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The sweep the row belongs to.
        #[arg(long)]
        sweep: String,
        /// The row's key value.
        #[arg(long)]
        key: String,
    },
    /// Validate the config, then reach every database, queue and evidence source.
    #[command(
        after_help = "The whole config contract, annotated, is config/example.yaml in \
                            sweeper's source tree; `sweeper demo --dir DIR` writes a working config \
                            to DIR. Every problem found is printed with its file, line and YAML path \
                            (exit 78)."
    )]
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Propose sweeps from an app's schema (read only): a commented YAML draft on stdout.
    #[command(
        after_help = "Looks for tables with a column whose values read as a job state \
                            (pending/queued, sending/processing, sent/delivered, error/failed; or a \
                            state-named integer column, a Rails or Laravel enum), the timestamp that \
                            moves with it, the key and a Message-ID column; prints a draft with a short \
                            report (rows and oldest age per state, the index each sweep needs and \
                            whether it exists). What it cannot decide is left as TODO, which \
                            `sweeper check` refuses until filled in.\n\nExample: sweeper init -d \
                            postgres://app@db/app > sweeper.yaml"
    )]
    Init {
        /// The app's database: postgres://… or sqlite:…
        #[arg(short = 'd', long = "database-url", env = "DATABASE_URL")]
        url: String,
        /// Only this table (repeatable; schema.table for other schemas).
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Create sweeper's ledger and audit history tables in every configured database.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the DDL (per database, in its dialect) instead of running it,
        /// for DBAs who apply schema changes themselves.
        #[arg(long)]
        print: bool,
    },
    /// List the audit history: every applied decision (requeue, mark sent,
    /// mark error) with its reason, evidence, pass and instance.
    #[command(
        after_help = "Reads the history table sweeper writes in the sweep's database \
                      (databases.<name>.history_table, default sweeper_history; kept for \
                      history.retention, default 30d). Dry runs write nothing to it.\n\n\
                      Example: sweeper history --sweep receipts --key 42 --since 2h"
    )]
    History {
        #[command(flatten)]
        config: ConfigArg,
        /// The sweep whose history to list.
        #[arg(long)]
        sweep: String,
        /// Only this row key.
        #[arg(long)]
        key: Option<String>,
        /// Only entries newer than this (e.g. 90m, 1h, 2d), by the database clock.
        #[arg(long, value_parser = parse_duration_arg)]
        since: Option<std::time::Duration>,
        /// At most this many entries (the newest), oldest first.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = HistoryFormat::Text)]
        format: HistoryFormat,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum HistoryFormat {
    /// One line per entry.
    Text,
    /// A JSON array of entries.
    Json,
}

/// Parse arguments and run; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Report { .. }
            | Command::Check { .. }
            | Command::Demo { .. }
            | Command::Init { .. }
            | Command::Explain { .. }
            | Command::History { .. }
            | Command::Migrate { print: true, .. }
    );
    init_logging(cli.log_format, if quiet { "warn" } else { "info" });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sweeper: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let code = rt.block_on(run(cli));
    ExitCode::from(code)
}

fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("sweeper={default},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Load config or print every problem and give exit 78.
pub fn load_config(path: &std::path::Path) -> Result<Config, u8> {
    match config::load(path) {
        Ok(c) => Ok(c),
        Err(LoadError::Invalid(errs)) => {
            eprint!("{errs}");
            Err(EXIT_CONFIG)
        }
        Err(e @ LoadError::Read { .. }) => {
            eprintln!("sweeper: {e}");
            Err(EXIT_CONFIG)
        }
    }
}

async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Demo { dir } => super::demo::run(dir).await,
        Command::Init { url, tables } => super::init::run(&url, &tables).await,
        Command::Run {
            config,
            shutdown_timeout,
            initial_delay,
        } => {
            let cfg = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            super::daemon::run(config.config.clone(), cfg, shutdown_timeout, initial_delay).await
        }
        Command::Once {
            config,
            sweeps,
            dry_run,
            format,
        } => {
            let cfg = match load_with_sweeps(&config.config, &sweeps) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = PassOptions {
                dry_run,
                only: sweeps,
                max_rows: Some(1000),
                progress: std::io::stderr().is_terminal(),
                ..Default::default()
            };
            pass_and_print(&cfg, &opts, format).await
        }
        Command::Report {
            config,
            sweeps,
            format,
            max_rows,
        } => {
            let cfg = match load_with_sweeps(&config.config, &sweeps) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = PassOptions {
                dry_run: true,
                only: sweeps,
                max_rows: Some(max_rows),
                progress: std::io::stderr().is_terminal(),
                ..Default::default()
            };
            pass_and_print(&cfg, &opts, format).await
        }
        Command::Explain { config, sweep, key } => {
            let cfg = match load_with_sweeps(&config.config, std::slice::from_ref(&sweep)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            super::explain::run(&cfg, &sweep, &key).await
        }
        Command::Check { config } => {
            let cfg = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            super::check::run(&cfg).await
        }
        Command::Migrate { config, print } => {
            let cfg = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if print {
                print!("{}", super::history::migration_script(&cfg));
                Ok(EXIT_OK)
            } else {
                migrate(&cfg).await
            }
        }
        Command::History {
            config,
            sweep,
            key,
            since,
            limit,
            format,
        } => {
            let cfg = match load_with_sweeps(&config.config, std::slice::from_ref(&sweep)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            super::history::run(
                &cfg,
                &sweep,
                key.as_deref(),
                since,
                limit,
                format == HistoryFormat::Json,
            )
            .await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sweeper: {e:#}");
            EXIT_USAGE
        }
    }
}

/// Load the config and check the `--sweep` names it is asked for.
fn load_with_sweeps(path: &std::path::Path, sweeps: &[String]) -> Result<Config, u8> {
    let cfg = load_config(path)?;
    check_sweep_names(&cfg, sweeps)?;
    Ok(cfg)
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::config::validate::parse_duration(s)
}

fn check_sweep_names(cfg: &Config, names: &[String]) -> Result<(), u8> {
    for n in names {
        if cfg.sweep(n).is_none() {
            let known: Vec<&str> = cfg.sweeps.iter().map(|s| s.name.as_str()).collect();
            eprintln!(
                "sweeper: unknown sweep {n:?} (defined: {})",
                known.join(", ")
            );
            return Err(EXIT_USAGE);
        }
    }
    Ok(())
}

/// Run one pass and print its report; exit 1 when anything failed.
pub async fn pass_and_print(
    cfg: &Config,
    opts: &PassOptions,
    format: Format,
) -> anyhow::Result<u8> {
    let mut conns = Connections::new();
    let result = run_pass(cfg, &mut conns, opts, chrono::Utc::now()).await;
    conns.close().await;
    let text = match format {
        Format::Text => render_text(&result.report, std::io::stdout().is_terminal()),
        Format::Markdown => render_markdown(&result.report),
        Format::Json => render_json(&result.report),
    };
    print!("{text}");
    if format == Format::Json {
        println!();
    }
    Ok(if result.failed() {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}

async fn migrate(cfg: &Config) -> anyhow::Result<u8> {
    for (name, dcfg) in &cfg.databases {
        let db = crate::adapters::db::Db::connect(dcfg)
            .await
            .with_context(|| format!("migrating database {name}"))?;
        db.ensure_tables()
            .await
            .with_context(|| format!("migrating database {name}"))?;
        println!(
            "database {name}: ledger table {} and history table {} ready",
            dcfg.ledger_table, dcfg.history_table
        );
        db.close().await;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag of every command, with the command path, lacking help.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                out.push(format!("{path} --{}", a.get_long().unwrap_or(id)));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                out.push(format!("{path} {} (no about)", sub.get_name()));
            }
            undocumented(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_of_every_command_has_a_one_line_help() {
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "sweeper", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    #[test]
    fn help_names_the_config_search_and_where_the_example_is() {
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains("$SWEEPER_CONFIG"), "{top}");
        let mut cli = Cli::command();
        let check = cli
            .find_subcommand_mut("check")
            .expect("check exists")
            .render_long_help()
            .to_string();
        assert!(check.contains("config/example.yaml"), "{check}");
    }
}
