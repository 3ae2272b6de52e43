//! `sweeper run`: the daemon. Every sweep on its own schedule, metrics and
//! health on HTTP, SIGHUP reloads the config, SIGTERM/SIGINT stop cleanly.
//!
//! Owns: wiring the scheduler to real passes, the HTTP listener, signals and
//! the shutdown deadline. Does not own: scheduling rules (`schedule`),
//! passes (`pass`), metric definitions (`metrics`).

use super::metrics::Metrics;
use super::pass::{run_pass, Connections, PassOptions};
use super::schedule::{drive, Control, Runner, Schedule};
use crate::config::{self, Config};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// What `/readyz` answers from.
#[derive(Debug, Default)]
pub struct Readiness {
    pub config_loaded: bool,
    /// Per database: `None` reachable, else the last error.
    pub databases: BTreeMap<String, Option<String>>,
}

pub struct AppState {
    pub metrics: Metrics,
    pub ready: RwLock<Readiness>,
}

async fn metrics_handler(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let r = s.ready.read().expect("readiness lock");
    let mut body = String::new();
    let mut ok = r.config_loaded;
    if !r.config_loaded {
        body.push_str("config: not loaded\n");
    }
    for (db, err) in &r.databases {
        match err {
            None => body.push_str(&format!("database {db}: reachable\n")),
            Some(e) => {
                ok = false;
                body.push_str(&format!("database {db}: {e}\n"));
            }
        }
    }
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The real runner: passes against the configured databases and queues.
pub struct PassRunner {
    pub path: PathBuf,
    pub cfg: Config,
    pub conns: Connections,
    pub state: Arc<AppState>,
    pub stop: Arc<AtomicBool>,
}

fn sweeps_of(cfg: &Config) -> Vec<(String, Duration)> {
    cfg.sweeps
        .iter()
        .map(|s| (s.name.clone(), s.every))
        .collect()
}

impl PassRunner {
    /// Ping every database (startup readiness).
    pub async fn probe(&mut self) {
        let mut dbs = BTreeMap::new();
        for name in self.cfg.databases.keys() {
            let r = match self.conns.db(&self.cfg, name).await {
                Ok(db) => db.ping().await.err().map(|e| e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            dbs.insert(name.clone(), r);
        }
        let mut ready = self.state.ready.write().expect("readiness lock");
        ready.config_loaded = true;
        ready.databases = dbs;
    }
}

impl Runner for PassRunner {
    async fn run(&mut self, sweeps: Vec<String>) -> Vec<(String, bool)> {
        {
            let opts = PassOptions {
                only: sweeps,
                incremental: true,
                stop: Some(self.stop.clone()),
                max_rows: Some(0),
                ..Default::default()
            };
            let result = run_pass(&self.cfg, &mut self.conns, &opts, chrono::Utc::now()).await;
            let now = chrono::Utc::now();
            let now_unix = now.timestamp() as f64 + f64::from(now.timestamp_subsec_millis()) / 1e3;
            self.state.metrics.observe(&result, now_unix);
            {
                let mut ready = self.state.ready.write().expect("readiness lock");
                for s in &result.report.sweeps {
                    let Some(sweep) = self.cfg.sweep(&s.name) else {
                        continue;
                    };
                    let fetch_err = s
                        .errors
                        .iter()
                        .find(|e| e.stage == crate::core::model::Stage::Fetch)
                        .map(|e| e.message.clone());
                    ready.databases.insert(sweep.database.clone(), fetch_err);
                }
            }
            for s in &result.report.sweeps {
                if s.failed() {
                    for e in &s.errors {
                        tracing::warn!(sweep = %s.name, stage = %e.stage, error = %e.message, "pass error");
                    }
                }
                tracing::debug!(
                    sweep = %s.name,
                    stuck_pending = s.stuck.pending,
                    stuck_sending = s.stuck.sending,
                    duration = s.duration_seconds,
                    "pass done"
                );
            }
            result
                .report
                .sweeps
                .iter()
                .map(|s| (s.name.clone(), !s.failed()))
                .collect()
        }
    }

    async fn reload(&mut self) -> Option<Vec<(String, Duration)>> {
        {
            match config::load(&self.path) {
                Ok(new) => {
                    tracing::info!(config = %self.path.display(), sweeps = new.sweeps.len(), "config reloaded");
                    self.conns.close().await;
                    self.conns = Connections::new();
                    self.state.metrics.register_config(&new);
                    self.state.metrics.reloaded(true);
                    if new.metrics.listen != self.cfg.metrics.listen {
                        tracing::warn!("metrics.listen changed: takes effect on restart");
                    }
                    self.cfg = new;
                    self.probe().await;
                    Some(sweeps_of(&self.cfg))
                }
                Err(e) => {
                    self.state.metrics.reloaded(false);
                    tracing::error!(config = %self.path.display(), error = %e, "config reload failed; keeping the running config");
                    None
                }
            }
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT. `shutdown_timeout` bounds the time
/// from the signal to exit.
pub async fn run(
    path: PathBuf,
    cfg: Config,
    shutdown_timeout: Duration,
    initial_delay: Option<Duration>,
) -> anyhow::Result<u8> {
    let state = Arc::new(AppState {
        metrics: Metrics::new(),
        ready: RwLock::new(Readiness::default()),
    });
    state.metrics.register_config(&cfg);
    let listen: SocketAddr = cfg.metrics.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (metrics.listen): {e}"))?;
    let local = listener.local_addr()?;
    let (http_stop_tx, mut http_stop_rx) = tokio::sync::watch::channel(false);
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop_rx.wait_for(|v| *v).await;
            })
            .await;
    });
    tracing::info!(
        sweeps = cfg.sweeps.len(),
        metrics = %format!("http://{local}/metrics"),
        "sweeper running"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel(8);
    spawn_signals(tx, stop.clone(), shutdown_timeout)?;

    let mut rand = || fastrand::f64();
    let mut schedule = Schedule::new(&sweeps_of(&cfg), tokio::time::Instant::now(), &mut rand);
    if let Some(d) = initial_delay {
        schedule.start_at(tokio::time::Instant::now() + d);
    }
    let mut runner = PassRunner {
        path,
        cfg,
        conns: Connections::new(),
        state: state.clone(),
        stop,
    };
    runner.probe().await;
    drive(&mut schedule, &mut runner, &mut rx, &mut rand).await;

    tracing::info!("shutting down");
    runner.conns.close().await;
    let _ = http_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("stopped");
    Ok(super::cli::EXIT_OK)
}

/// SIGTERM/SIGINT: set the stop flag (the pass in hand finishes its batch
/// and applies no more), tell the loop, and exit anyway after the deadline.
/// SIGHUP: reload.
fn spawn_signals(
    tx: mpsc::Sender<Control>,
    stop: Arc<AtomicBool>,
    deadline: Duration,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = tx.send(Control::Reload).await;
                }
            }
        }
        tracing::info!(deadline = ?deadline, "stop requested: finishing the batch in hand");
        stop.store(true, Ordering::SeqCst);
        let _ = tx.send(Control::Shutdown).await;
        tokio::time::sleep(deadline).await;
        tracing::error!("shutdown deadline passed; exiting now (open transactions roll back)");
        std::process::exit(0);
    });
    Ok(())
}
