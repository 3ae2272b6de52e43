//! The daemon's scheduler: when each sweep runs next.
//!
//! Owns: intervals with jitter, exponential backoff after failures, and the
//! loop that starts each due sweep's pass as its own task — sweeps run
//! concurrently, so a storm in one never delays the others, while a sweep's
//! pass never overlaps its own next one — listening for shutdown and reload. Time comes
//! from tokio (`tokio::time::pause()` in tests); randomness is injected.
//! Does not own: what a pass does (the `Runner`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Jitter: each interval is stretched by up to this fraction.
pub const JITTER: f64 = 0.1;
/// First retry after a failed pass.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(5);
/// Retries never wait longer than this (or `every`, if longer).
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    every: Duration,
    due: Instant,
    failures: u32,
    /// A pass of this sweep is in progress (it is not due again until it
    /// finishes).
    running: bool,
}

/// Next due time per sweep.
#[derive(Debug, Default)]
pub struct Schedule {
    entries: BTreeMap<String, Entry>,
}

/// The interval after a successful pass, stretched by `r ∈ [0, 1)`.
pub fn interval(every: Duration, r: f64) -> Duration {
    every + every.mul_f64(JITTER * r.clamp(0.0, 1.0))
}

/// The wait after `failures` consecutive failed passes (≥ 1): 5 s doubling,
/// capped at the larger of `every` and 5 minutes.
pub fn backoff(every: Duration, failures: u32) -> Duration {
    let cap = every.max(BACKOFF_MAX);
    let exp = failures.saturating_sub(1).min(30);
    BACKOFF_INITIAL.saturating_mul(1u32 << exp).min(cap)
}

impl Schedule {
    /// Sweeps (name, every), first runs spread over up to a tenth of each
    /// interval (at most 5 s) by `rand`.
    pub fn new(
        sweeps: &[(String, Duration)],
        now: Instant,
        rand: &mut dyn FnMut() -> f64,
    ) -> Schedule {
        let mut s = Schedule::default();
        s.update(sweeps, now, rand);
        s
    }

    /// Replace the set of sweeps (config reload): kept sweeps keep their due
    /// time (clamped to their new interval), new ones start soon.
    pub fn update(
        &mut self,
        sweeps: &[(String, Duration)],
        now: Instant,
        rand: &mut dyn FnMut() -> f64,
    ) {
        let mut entries = BTreeMap::new();
        for (name, every) in sweeps {
            let e = match self.entries.remove(name) {
                Some(mut e) => {
                    e.every = *every;
                    e.due = e.due.min(now + *every);
                    e
                }
                None => {
                    let spread = every.mul_f64(JITTER).min(Duration::from_secs(5));
                    Entry {
                        every: *every,
                        due: now + spread.mul_f64(rand().clamp(0.0, 1.0)),
                        failures: 0,
                        running: false,
                    }
                }
            };
            entries.insert(name.clone(), e);
        }
        self.entries = entries;
    }

    /// Make every sweep's first run wait until `at`.
    pub fn start_at(&mut self, at: Instant) {
        for e in self.entries.values_mut() {
            e.due = at;
        }
    }

    /// When the next idle sweep is due (`None` when none is idle).
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.running)
            .map(|e| e.due)
            .min()
    }

    /// Idle sweeps due at `now`.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.due <= now && !e.running)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Record that a pass of `name` started.
    pub fn started(&mut self, name: &str) {
        if let Some(e) = self.entries.get_mut(name) {
            e.running = true;
        }
    }

    /// Record a finished pass of `name` at `now`.
    pub fn finished(&mut self, name: &str, ok: bool, now: Instant, rand: &mut dyn FnMut() -> f64) {
        if let Some(e) = self.entries.get_mut(name) {
            e.running = false;
            if ok {
                e.failures = 0;
                e.due = now + interval(e.every, rand());
            } else {
                e.failures += 1;
                e.due = now + backoff(e.every, e.failures);
            }
        }
    }

    pub fn failures(&self, name: &str) -> u32 {
        self.entries.get(name).map_or(0, |e| e.failures)
    }
}

/// Messages to the running loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Shutdown,
    Reload,
}

/// What the loop drives.
pub trait Runner {
    /// A pass of `sweep`, to run as a task of its own; resolves to whether
    /// it succeeded. The runner bounds how many run against one database.
    fn pass(&mut self, sweep: String) -> impl Future<Output = bool> + Send + 'static;
    /// Reload the configuration; `Some(sweeps)` when the new one is in use.
    fn reload(&mut self) -> impl Future<Output = Option<Vec<(String, Duration)>>> + Send;
}

/// Run due sweeps until shutdown, each pass as a task of its own. Passes in
/// progress are never interrupted by the loop: on shutdown it waits for
/// them (the runner watches its own stop flag to cut a long pass short).
pub async fn drive<R: Runner>(
    schedule: &mut Schedule,
    runner: &mut R,
    controls: &mut mpsc::Receiver<Control>,
    rand: &mut (dyn FnMut() -> f64 + Send),
) {
    let mut running: JoinSet<bool> = JoinSet::new();
    let mut names: HashMap<tokio::task::Id, String> = HashMap::new();
    'run: loop {
        // Controls that arrived meanwhile come first.
        loop {
            match controls.try_recv() {
                Ok(Control::Shutdown) | Err(mpsc::error::TryRecvError::Disconnected) => break 'run,
                Ok(Control::Reload) => {
                    if let Some(sweeps) = runner.reload().await {
                        schedule.update(&sweeps, Instant::now(), rand);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        let wake = schedule
            .next_due()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            ctl = controls.recv() => match ctl {
                None | Some(Control::Shutdown) => break 'run,
                Some(Control::Reload) => {
                    if let Some(sweeps) = runner.reload().await {
                        schedule.update(&sweeps, Instant::now(), rand);
                    }
                }
            },
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                finish(schedule, &mut names, done, rand);
            }
            _ = tokio::time::sleep_until(wake) => {
                for name in schedule.due(Instant::now()) {
                    schedule.started(&name);
                    let handle = running.spawn(runner.pass(name.clone()));
                    names.insert(handle.id(), name);
                }
            }
        }
    }
    while let Some(done) = running.join_next_with_id().await {
        finish(schedule, &mut names, done, rand);
    }
}

/// Record a finished pass task; a pass that panicked counts as failed.
fn finish(
    schedule: &mut Schedule,
    names: &mut HashMap<tokio::task::Id, String>,
    done: Result<(tokio::task::Id, bool), tokio::task::JoinError>,
    rand: &mut (dyn FnMut() -> f64 + Send),
) {
    let (id, ok) = match done {
        Ok((id, ok)) => (id, ok),
        Err(e) => {
            tracing::error!(error = %e, "a pass task failed");
            (e.id(), false)
        }
    };
    if let Some(name) = names.remove(&id) {
        schedule.finished(&name, ok, Instant::now(), rand);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[test]
    fn backoff_doubles_and_caps() {
        let every = Duration::from_secs(60);
        let table = [
            (1, 5),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 80),
            (6, 160),
            (7, 300),
            (40, 300),
        ];
        for (failures, secs) in table {
            assert_eq!(
                backoff(every, failures),
                Duration::from_secs(secs),
                "{failures}"
            );
        }
        // A sweep that runs hourly may wait up to its interval.
        assert_eq!(
            backoff(Duration::from_secs(3600), 12),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        let every = Duration::from_secs(60);
        assert_eq!(interval(every, 0.0), every);
        assert_eq!(interval(every, 0.999_999).as_secs(), 65);
        assert!(
            interval(every, 0.999_999) < every + every.mul_f64(JITTER) + Duration::from_millis(1)
        );
        assert_eq!(
            interval(every, 7.0),
            every + every.mul_f64(JITTER),
            "clamped"
        );
    }

    type Runs = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;
    type FailFn = Box<dyn FnMut(&str, Instant) -> bool + Send>;

    /// Records every run; each pass takes `pass` (or `slow[sweep]`) and
    /// fails when `fail` says so.
    struct FakeRunner {
        runs: Runs,
        in_flight: Arc<Mutex<HashSet<String>>>,
        pass: Duration,
        slow: HashMap<String, Duration>,
        fail: FailFn,
        reload_to: Option<Vec<(String, Duration)>>,
        start: Instant,
    }

    impl Runner for FakeRunner {
        fn pass(&mut self, sweep: String) -> impl Future<Output = bool> + Send + 'static {
            let runs = self.runs.clone();
            let flight = self.in_flight.clone();
            let pass = self.slow.get(&sweep).copied().unwrap_or(self.pass);
            let ok = !(self.fail)(&sweep, Instant::now());
            let _ = self.start;
            async move {
                assert!(
                    flight.lock().unwrap().insert(sweep.clone()),
                    "passes of {sweep} overlap"
                );
                runs.lock()
                    .unwrap()
                    .push((Instant::now(), vec![sweep.clone()]));
                tokio::time::sleep(pass).await;
                flight.lock().unwrap().remove(&sweep);
                ok
            }
        }

        fn reload(&mut self) -> impl Future<Output = Option<Vec<(String, Duration)>>> + Send {
            let r = self.reload_to.clone();
            async move { r }
        }
    }

    fn fake(pass: Duration, start: Instant) -> (FakeRunner, Runs) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        (
            FakeRunner {
                runs: runs.clone(),
                in_flight: Arc::new(Mutex::new(HashSet::new())),
                pass,
                slow: HashMap::new(),
                fail: Box::new(|_, _| false),
                reload_to: None,
                start,
            },
            runs,
        )
    }

    fn secs_since(start: Instant, runs: &[(Instant, Vec<String>)], sweep: &str) -> Vec<f64> {
        runs.iter()
            .filter(|(_, s)| s.iter().any(|x| x == sweep))
            .map(|(t, _)| (*t - start).as_secs_f64())
            .collect()
    }

    async fn drive_for(
        schedule: &mut Schedule,
        runner: &mut FakeRunner,
        for_: Duration,
        rand: &mut (dyn FnMut() -> f64 + Send),
    ) -> mpsc::Sender<Control> {
        let (tx, mut rx) = mpsc::channel(4);
        let stopper = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(for_).await;
            let _ = stopper.send(Control::Shutdown).await;
        });
        drive(schedule, runner, &mut rx, rand).await;
        tx
    }

    #[tokio::test(start_paused = true)]
    async fn each_sweep_runs_on_its_own_interval() {
        let start = Instant::now();
        let (mut runner, runs) = fake(Duration::from_millis(100), start);
        let mut rand = || 0.0;
        let sweeps = vec![
            ("fast".to_string(), Duration::from_secs(10)),
            ("slow".to_string(), Duration::from_secs(30)),
        ];
        let mut schedule = Schedule::new(&sweeps, start, &mut rand);
        drive_for(
            &mut schedule,
            &mut runner,
            Duration::from_secs(65),
            &mut rand,
        )
        .await;
        let runs = runs.lock().unwrap();
        let fast = secs_since(start, &runs, "fast");
        let slow = secs_since(start, &runs, "slow");
        // Next run = end of the previous pass + every (passes take 0.1 s).
        assert_eq!(fast.len(), 7, "{fast:?}");
        for w in fast.windows(2) {
            assert!((w[1] - w[0] - 10.1).abs() < 0.01, "{fast:?}");
        }
        assert_eq!(slow.len(), 3, "{slow:?}");
        assert!((slow[1] - slow[0] - 30.1).abs() < 0.01, "{slow:?}");
        // Sweeps due together start together, each in a pass of its own.
        assert_eq!((fast[0], slow[0]), (0.0, 0.0));
        assert_eq!(runs[0].1.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_spreads_runs_within_bounds() {
        let start = Instant::now();
        let (mut runner, runs) = fake(Duration::ZERO, start);
        let mut n = 0u32;
        let mut rand = move || {
            n += 1;
            f64::from(n % 10) / 10.0
        };
        let sweeps = vec![("s".to_string(), Duration::from_secs(100))];
        let mut schedule = Schedule::new(&sweeps, start, &mut rand);
        drive_for(
            &mut schedule,
            &mut runner,
            Duration::from_secs(2000),
            &mut rand,
        )
        .await;
        let runs = runs.lock().unwrap();
        let t = secs_since(start, &runs, "s");
        assert!(t[0] <= 5.0, "first run within the start spread: {t:?}");
        let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| (100.0..=110.0).contains(g)), "{gaps:?}");
        assert!(
            gaps.iter().any(|g| *g > 100.5),
            "jitter varies the gaps: {gaps:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_then_recover() {
        let start = Instant::now();
        let (mut runner, runs) = fake(Duration::ZERO, start);
        // Fails for the first 60 seconds.
        runner.fail = Box::new(move |_, now| now - start < Duration::from_secs(60));
        let mut rand = || 0.0;
        let sweeps = vec![("s".to_string(), Duration::from_secs(30))];
        let mut schedule = Schedule::new(&sweeps, start, &mut rand);
        drive_for(
            &mut schedule,
            &mut runner,
            Duration::from_secs(200),
            &mut rand,
        )
        .await;
        let runs = runs.lock().unwrap();
        let t = secs_since(start, &runs, "s");
        // 0 fail, +5 fail, +10 fail, +20 fail, +40 (=75, ok), then every 30.
        let want = [0.0, 5.0, 15.0, 35.0, 75.0, 105.0, 135.0, 165.0, 195.0];
        assert_eq!(t.len(), want.len(), "{t:?}");
        for (got, want) in t.iter().zip(want) {
            assert!((got - want).abs() < 0.01, "{t:?}");
        }
        assert_eq!(schedule.failures("s"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_pass_never_overlaps_its_own_next() {
        let start = Instant::now();
        // Passes take 25 s on a 10 s interval.
        let (mut runner, runs) = fake(Duration::from_secs(25), start);
        let mut rand = || 0.0;
        let sweeps = vec![
            ("a".to_string(), Duration::from_secs(10)),
            ("b".to_string(), Duration::from_secs(10)),
        ];
        let mut schedule = Schedule::new(&sweeps, start, &mut rand);
        drive_for(
            &mut schedule,
            &mut runner,
            Duration::from_secs(100),
            &mut rand,
        )
        .await;
        let runs = runs.lock().unwrap();
        for sweep in ["a", "b"] {
            let t = secs_since(start, &runs, sweep);
            // The FakeRunner asserts no overlap; runs are 35 s apart:
            // 0, 35, 70 within 100 s.
            assert_eq!(t.len(), 3, "{sweep}: {t:?}");
            for w in t.windows(2) {
                assert!((w[1] - w[0] - 35.0).abs() < 0.01, "{sweep}: {t:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_in_one_sweep_does_not_delay_the_others() {
        let start = Instant::now();
        let (mut runner, runs) = fake(Duration::from_millis(100), start);
        // The storm sweep's pass takes 50 s; the quiet one runs every 10 s.
        runner
            .slow
            .insert("storm".to_string(), Duration::from_secs(50));
        let mut rand = || 0.0;
        let sweeps = vec![
            ("storm".to_string(), Duration::from_secs(10)),
            ("quiet".to_string(), Duration::from_secs(10)),
        ];
        let mut schedule = Schedule::new(&sweeps, start, &mut rand);
        drive_for(
            &mut schedule,
            &mut runner,
            Duration::from_secs(45),
            &mut rand,
        )
        .await;
        let runs = runs.lock().unwrap();
        let quiet = secs_since(start, &runs, "quiet");
        assert_eq!(
            quiet.len(),
            5,
            "quiet ran on time during the storm: {quiet:?}"
        );
        for w in quiet.windows(2) {
            assert!((w[1] - w[0] - 10.1).abs() < 0.01, "{quiet:?}");
        }
        assert_eq!(secs_since(start, &runs, "storm"), [0.0]);
        // Shutdown waited for the storm's pass to end.
        assert!((Instant::now() - start).as_secs_f64() >= 50.0);
    }

    #[tokio::test(start_paused = true)]
    async fn reload_adds_removes_and_retimes_sweeps() {
        let start = Instant::now();
        let (mut runner, runs) = fake(Duration::ZERO, start);
        runner.reload_to = Some(vec![
            ("kept".to_string(), Duration::from_secs(5)),
            ("new".to_string(), Duration::from_secs(50)),
        ]);
        let mut rand = || 0.0;
        let sweeps = vec![
            ("kept".to_string(), Duration::from_secs(100)),
            ("gone".to_string(), Duration::from_secs(10)),
        ];
        let mut schedule = Schedule::new(&sweeps, start, &mut rand);
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            tx.send(Control::Reload).await.unwrap();
            tokio::time::sleep(Duration::from_secs(20)).await;
            tx.send(Control::Shutdown).await.unwrap();
        });
        drive(&mut schedule, &mut runner, &mut rx, &mut rand).await;
        let runs = runs.lock().unwrap();
        let gone = secs_since(start, &runs, "gone");
        assert_eq!(gone, [0.0, 10.0], "stops after the reload at 15 s");
        let kept = secs_since(start, &runs, "kept");
        // Ran at 0; after the reload its 100 s wait is clamped to the new 5 s.
        assert_eq!(kept[0], 0.0);
        assert!((kept[1] - 20.0).abs() < 0.01, "{kept:?}");
        let new = secs_since(start, &runs, "new");
        assert_eq!(new, [15.0], "a new sweep starts right after the reload");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_pass_ends_after_it() {
        let start = Instant::now();
        let (mut runner, runs) = fake(Duration::from_secs(20), start);
        let mut rand = || 0.0;
        let sweeps = vec![("s".to_string(), Duration::from_secs(1))];
        let mut schedule = Schedule::new(&sweeps, start, &mut rand);
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(Control::Shutdown).await.unwrap();
        });
        drive(&mut schedule, &mut runner, &mut rx, &mut rand).await;
        assert_eq!(runs.lock().unwrap().len(), 1);
        assert_eq!(
            (Instant::now() - start).as_secs(),
            20,
            "the pass finished first"
        );
    }
}
