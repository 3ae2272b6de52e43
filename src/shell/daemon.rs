//! `sweeper run`: the daemon. Every sweep on its own schedule, metrics and
//! health on HTTP, SIGHUP reloads the config, SIGTERM/SIGINT stop cleanly.
//!
//! Owns: wiring the scheduler to real passes, the HTTP listener, signals and
//! the shutdown deadline. Does not own: scheduling rules (`schedule`),
//! passes (`pass`), metric definitions (`metrics`).

use super::explain;
use super::metrics::Metrics;
use super::pass::{run_pass, Connections, PassOptions, PassResult};
use super::schedule::{drive, Control, Runner, Schedule};
use super::status::StatusBoard;
use super::web;
use crate::config::{self, Config};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

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
    /// What the status pages show, fed by the same passes as the metrics.
    pub board: StatusBoard,
    /// The running config (replaced on reload): the auth and the sweeps the
    /// pages and a row's explain use.
    pub cfg: RwLock<Arc<Config>>,
}

impl AppState {
    pub fn new(cfg: Config) -> AppState {
        let board = StatusBoard::new(chrono::Utc::now());
        board.configure(&sweep_names(&cfg));
        let metrics = Metrics::new();
        metrics.register_config(&cfg);
        AppState {
            metrics,
            ready: RwLock::new(Readiness::default()),
            board,
            cfg: RwLock::new(Arc::new(cfg)),
        }
    }

    fn config(&self) -> Arc<Config> {
        self.cfg.read().expect("config lock").clone()
    }
}

fn sweep_names(cfg: &Config) -> Vec<String> {
    cfg.sweeps.iter().map(|s| s.name.clone()).collect()
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

/// `metrics.auth`, when set, on every route but `/healthz` and `/readyz`.
async fn require_auth(
    State(s): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let cfg = s.config();
    let Some(auth) = &cfg.metrics.auth else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if web::authorized(auth, header) {
        return next.run(req).await;
    }
    let challenge = match auth {
        config::HttpAuth::Basic { .. } => "Basic realm=\"sweeper\", charset=\"UTF-8\"",
        config::HttpAuth::Bearer(_) => "Bearer realm=\"sweeper\"",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        "credentials required (metrics.auth)\n",
    )
        .into_response()
}

fn html(m: maud::Markup) -> axum::response::Response {
    axum::response::Html(m.into_string()).into_response()
}

fn not_found(what: String) -> axum::response::Response {
    (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
}

async fn index_page(State(s): State<Arc<AppState>>) -> axum::response::Response {
    html(web::index(&s.board.snapshot(), chrono::Utc::now()))
}

async fn sweep_page(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<web::PlanQuery>,
) -> axum::response::Response {
    match s.board.sweep(&name) {
        Some((st, _)) => html(web::sweep_page(&st, &q, chrono::Utc::now())),
        None => not_found(format!("no sweep {name:?}")),
    }
}

async fn row_page(
    State(s): State<Arc<AppState>>,
    Path((name, key)): Path<(String, String)>,
) -> axum::response::Response {
    let cfg = s.config();
    match explain::explain_text(&cfg, &name, &key, false).await {
        Ok((text, ok)) => html(web::row_page(&name, &key, &text, ok)),
        Err(e) => not_found(e.to_string()),
    }
}

async fn api_sweeps(State(s): State<Arc<AppState>>) -> axum::response::Response {
    let mut snap = s.board.snapshot();
    for st in &mut snap.sweeps {
        st.plan = Vec::new();
    }
    Json(snap).into_response()
}

async fn api_sweep(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<web::PlanQuery>,
) -> axum::response::Response {
    let Some((mut st, _)) = s.board.sweep(&name) else {
        return not_found(format!("no sweep {name:?}"));
    };
    let (rows, matching) = q.select(&st.plan);
    let rows: Vec<_> = rows.into_iter().cloned().collect();
    st.plan = Vec::new();
    Json(serde_json::json!({
        "sweep": st,
        "plan": {
            "rows": rows,
            "matching": matching,
            "page": q.page.unwrap_or(1).max(1),
            "page_rows": web::PAGE_ROWS,
        },
    }))
    .into_response()
}

async fn api_row(
    State(s): State<Arc<AppState>>,
    Path((name, key)): Path<(String, String)>,
) -> axum::response::Response {
    let cfg = s.config();
    match explain::explain_text(&cfg, &name, &key, false).await {
        Ok((text, ok)) => Json(serde_json::json!({
            "sweep": name, "key": key, "explained": ok, "text": text,
        }))
        .into_response(),
        Err(e) => not_found(e.to_string()),
    }
}

pub fn router(state: Arc<AppState>) -> axum::Router {
    let open = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/", get(index_page))
        .route("/sweeps/{name}", get(sweep_page))
        .route("/sweeps/{name}/rows/{key}", get(row_page))
        .route("/api/sweeps", get(api_sweeps))
        .route("/api/sweeps/{name}", get(api_sweep))
        .route("/api/sweeps/{name}/rows/{key}", get(api_row))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_auth,
        ))
        .merge(open)
        .with_state(state)
}

/// The real runner: passes against the configured databases and queues.
/// Each sweep's pass runs as a task of its own, with the sweep's own queue
/// connections (kept between its passes) and the shared database pools and
/// log tailers; at most `max_connections` passes run against one database
/// at a time.
pub struct PassRunner {
    pub path: PathBuf,
    pub cfg: Arc<Config>,
    /// Database pools and log tailers every pass shares.
    pub conns: Connections,
    pub state: Arc<AppState>,
    pub stop: Arc<AtomicBool>,
    /// Per sweep: its connections between passes, for this config
    /// generation.
    idle: Arc<Mutex<HashMap<String, Connections>>>,
    generation: Arc<AtomicU64>,
    /// Per database: passes that may run against it at once.
    limits: HashMap<String, Arc<Semaphore>>,
}

fn sweeps_of(cfg: &Config) -> Vec<(String, Duration)> {
    cfg.sweeps
        .iter()
        .map(|s| (s.name.clone(), s.every))
        .collect()
}

fn limits_of(cfg: &Config) -> HashMap<String, Arc<Semaphore>> {
    cfg.databases
        .iter()
        .map(|(name, d)| {
            (
                name.clone(),
                Arc::new(Semaphore::new(d.max_connections.max(1) as usize)),
            )
        })
        .collect()
}

impl PassRunner {
    pub fn new(path: PathBuf, cfg: Config, state: Arc<AppState>, stop: Arc<AtomicBool>) -> Self {
        PassRunner {
            path,
            limits: limits_of(&cfg),
            cfg: Arc::new(cfg),
            conns: Connections::new(),
            state,
            stop,
            idle: Arc::new(Mutex::new(HashMap::new())),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

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

    /// Close every connection (at shutdown, once no pass runs).
    pub async fn close(&mut self) {
        let idle: Vec<Connections> = self
            .idle
            .lock()
            .expect("idle connections lock")
            .drain()
            .map(|(_, c)| c)
            .collect();
        for mut c in idle {
            c.close().await;
        }
        self.conns.close().await;
    }
}

/// Metrics, readiness and logs from one finished pass.
fn observe(state: &AppState, cfg: &Config, result: &PassResult) {
    let now = chrono::Utc::now();
    let now_unix = now.timestamp() as f64 + f64::from(now.timestamp_subsec_millis()) / 1e3;
    state.metrics.observe(result, now_unix);
    state
        .board
        .observe(&result.report.sweeps, &result.sources, now);
    {
        let mut ready = state.ready.write().expect("readiness lock");
        for s in &result.report.sweeps {
            let Some(sweep) = cfg.sweep(&s.name) else {
                continue;
            };
            // Say what is wrong — a missing table or column reads as
            // such, not as an unreachable database.
            let prefix = format!("database {}: ", sweep.database);
            let fetch_err = s
                .errors
                .iter()
                .find(|e| e.stage == crate::core::model::Stage::Fetch)
                .map(|e| {
                    let what = e.message.strip_prefix(&prefix).unwrap_or(&e.message);
                    format!("sweep {}: {what}", s.name)
                });
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
}

impl Runner for PassRunner {
    fn pass(&mut self, sweep: String) -> impl Future<Output = bool> + Send + 'static {
        let cfg = self.cfg.clone();
        let state = self.state.clone();
        let stop = self.stop.clone();
        let idle = self.idle.clone();
        let generation = self.generation.clone();
        let started_in = generation.load(Ordering::SeqCst);
        let conns = idle
            .lock()
            .expect("idle connections lock")
            .remove(&sweep)
            .unwrap_or_else(|| self.conns.fork());
        let limit = cfg
            .sweep(&sweep)
            .and_then(|s| self.limits.get(&s.database))
            .cloned();
        async move {
            let _permit = match &limit {
                Some(l) => l.clone().acquire_owned().await.ok(),
                None => None,
            };
            let opts = PassOptions {
                only: vec![sweep.clone()],
                incremental: true,
                stop: Some(stop),
                max_rows: Some(cfg.metrics.status_rows),
                ..Default::default()
            };
            let mut conns = conns;
            let result = run_pass(&cfg, &mut conns, &opts, chrono::Utc::now()).await;
            observe(&state, &cfg, &result);
            if generation.load(Ordering::SeqCst) == started_in {
                idle.lock()
                    .expect("idle connections lock")
                    .insert(sweep.clone(), conns);
            }
            !result.failed()
        }
    }

    async fn reload(&mut self) -> Option<Vec<(String, Duration)>> {
        match config::load(&self.path) {
            Ok(new) => {
                tracing::info!(config = %self.path.display(), sweeps = new.sweeps.len(), "config reloaded");
                // Passes in progress finish with the connections they hold;
                // new passes use the new config's.
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.idle.lock().expect("idle connections lock").clear();
                self.conns = Connections::new();
                self.state.metrics.register_config(&new);
                self.state.board.configure(&sweep_names(&new));
                self.state.metrics.reloaded(true);
                if new.metrics.listen != self.cfg.metrics.listen {
                    tracing::warn!("metrics.listen changed: takes effect on restart");
                }
                self.limits = limits_of(&new);
                self.cfg = Arc::new(new);
                *self.state.cfg.write().expect("config lock") = self.cfg.clone();
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

/// Run the daemon until SIGTERM/SIGINT. `shutdown_timeout` bounds the time
/// from the signal to exit.
pub async fn run(
    path: PathBuf,
    cfg: Config,
    shutdown_timeout: Duration,
    initial_delay: Option<Duration>,
) -> anyhow::Result<u8> {
    let state = Arc::new(AppState::new(cfg.clone()));
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
        status = %format!("http://{local}/"),
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
    let mut runner = PassRunner::new(path, cfg, state.clone(), stop);
    runner.probe().await;
    drive(&mut schedule, &mut runner, &mut rx, &mut rand).await;

    tracing::info!("shutting down");
    runner.close().await;
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
        tracing::error!(
            "shutdown deadline passed with a pass still running; exiting now with status 1 \
             (open transactions roll back; the abandoned rows are picked up by the next pass)"
        );
        std::process::exit(i32::from(super::cli::EXIT_FAILED));
    });
    Ok(())
}
