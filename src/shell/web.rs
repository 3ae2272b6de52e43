//! The daemon's read-only status pages and their JSON twins, on the metrics
//! listener: `/` (every sweep), `/sweeps/{name}` (the latest plan, paged and
//! filtered), `/sweeps/{name}/rows/{key}` (`explain`, as HTML), and `/api/…`.
//!
//! Owns: rendering from plain data (`status::Snapshot`), with templates
//! checked at compile time (maud, which escapes every value: a row key or a
//! log line is text, never markup), the embedded stylesheet, and HTTP
//! authentication (`metrics.auth`). Does not own: the data (`status`), or
//! any query — only a row page runs the single-row dry run `explain` runs.
//! Nothing is loaded from elsewhere; no JavaScript is needed.

use super::status::{PassSummary, Sample, Snapshot, SweepStatus, HISTORY};
use crate::config::HttpAuth;
use crate::core::model::{Action, RowState, Timestamp};
use crate::core::report::{human_age, RowReport};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use std::collections::BTreeMap;

/// Plan rows per page.
pub const PAGE_ROWS: usize = 50;

const CSS: &str = r#"
:root{--fg:#1d2330;--mute:#5d6678;--line:#d9dee7;--bg:#fff;--warn:#a15c00;--bad:#b3261e;--ok:#1b7f3b;--pend:#2f5fb3;--send:#9a4dc2}
*{box-sizing:border-box}body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg);margin:0 auto;max-width:72rem;padding:.75rem}
h1{font-size:1.3rem;margin:.2rem 0 .6rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}h3{font-size:.95rem;margin:.8rem 0 .3rem}
a{color:var(--pend)}.mute{color:var(--mute)}.bad{color:var(--bad)}.ok{color:var(--ok)}.warn{color:var(--warn)}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.2rem 0 .6rem;min-width:16rem}th,td{text-align:left;padding:.25rem .6rem .25rem 0;border-bottom:1px solid var(--line);vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(17rem,1fr));gap:0 1.5rem}
code,pre,.key{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.88em;overflow-wrap:anywhere}pre{white-space:pre-wrap;margin:0}
form{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin:.4rem 0}label{display:flex;flex-direction:column;font-size:.85rem;color:var(--mute)}
select,button{font:inherit;padding:.2rem .4rem}svg{width:100%;max-width:40rem;height:auto}nav{margin:.3rem 0 .6rem}
"#;

fn page(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="60"; }
                title { (title) " · sweeper" }
                style { (PreEscaped(CSS)) }
            }
            body { (body) }
        }
    }
}

/// A URL path segment: everything but unreserved characters percent-encoded.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn ago(now: Timestamp, t: Timestamp) -> String {
    format!(
        "{} ago",
        human_age((now - t).num_milliseconds() as f64 / 1000.0)
    )
}

/// A metric's series, as `/metrics` names it.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", l.join(","))
}

fn count_cell(metric: String, v: u64) -> Markup {
    html! { td.n data-metric=(metric) data-value=(v) { (v) } }
}

/// Stuck counts over the chart's reach, as an SVG line chart.
pub fn chart(history: &[Sample], now: Timestamp) -> Markup {
    let (w, h, pad) = (600.0_f64, 150.0_f64, 28.0_f64);
    let reach = HISTORY.as_secs_f64();
    let max = history
        .iter()
        .map(|s| s.pending.max(s.sending))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |t: Timestamp| {
        let age = ((now - t).num_milliseconds() as f64 / 1000.0).clamp(0.0, reach);
        pad + (w - pad - 4.0) * (1.0 - age / reach)
    };
    let y = |v: u64| 6.0 + (h - 24.0) * (1.0 - v as f64 / max);
    let line = |f: &dyn Fn(&Sample) -> u64| {
        history
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at), y(f(s))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let hours = (reach / 3600.0) as i64;
    html! {
        svg viewBox=(format!("0 0 {w} {h}")) role="img" aria-label="stuck rows over the last hours" {
            line x1=(pad) y1=(y(0)) x2=(w - 4.0) y2=(y(0)) stroke="#d9dee7" {}
            text x="2" y="14" font-size="11" fill="#5d6678" { (max as u64) }
            text x="2" y=(y(0)) font-size="11" fill="#5d6678" { "0" }
            text x=(pad) y=(h - 4.0) font-size="11" fill="#5d6678" { (hours) "h ago" }
            text x=(w - 30.0) y=(h - 4.0) font-size="11" fill="#5d6678" { "now" }
            polyline points=(line(&|s| s.pending)) fill="none" stroke="#2f5fb3" stroke-width="2" {}
            polyline points=(line(&|s| s.sending)) fill="none" stroke="#9a4dc2" stroke-width="2" stroke-dasharray="5 3" {}
            // The latest point as dots: one pass is a point, not a line.
            @if let Some(last) = history.last() {
                circle cx=(format!("{:.1}", x(last.at))) cy=(format!("{:.1}", y(last.pending))) r="3" fill="#2f5fb3" {}
                circle cx=(format!("{:.1}", x(last.at))) cy=(format!("{:.1}", y(last.sending))) r="3" fill="#9a4dc2" {}
            }
        }
        p.mute { span style="color:#2f5fb3" { "━ pending" } " · " span style="color:#9a4dc2" { "┅ sending" } " (stuck rows, one point per pass)" }
    }
}

fn applied(p: &PassSummary, a: Action) -> u64 {
    p.applied.get(&a).copied().unwrap_or(0)
}

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "ok" => "ok",
        "failed" => "bad",
        _ => "warn",
    }
}

fn sweep_card(s: &SweepStatus, now: Timestamp) -> Markup {
    let n = s.name.as_str();
    html! {
        section id=(format!("sweep-{n}")) {
            h2 { a href=(format!("/sweeps/{}", segment(n))) { (n) } }
            @match &s.counts {
                None => p.mute { "no pass has counted this sweep yet" },
                Some(c) => {
                    div.grid {
                        div.scroll {
                            h3 { "Rows" }
                            table {
                                tr { th { "state" } th.n { "rows" } th.n { "stuck" } th.n { "oldest stuck" } }
                                @for st in RowState::ALL {
                                    tr {
                                        td { (st.as_str()) }
                                        (count_cell(series("sweeper_rows", &[("sweep", n), ("state", st.as_str())]), c.totals_of(st)))
                                        (count_cell(series("sweeper_stuck_rows", &[("sweep", n), ("state", st.as_str())]), c.stuck.get(st)))
                                        @let oldest = c.oldest_stuck_age_seconds.get(st).unwrap_or(0.0);
                                        td.n data-metric=(series("sweeper_oldest_stuck_age_seconds", &[("sweep", n), ("state", st.as_str())])) data-value=(oldest) {
                                            @if oldest > 0.0 { (human_age(oldest)) } @else { "—" }
                                        }
                                    }
                                }
                                tr {
                                    td { "error" }
                                    (count_cell(series("sweeper_rows", &[("sweep", n), ("state", "error")]), c.totals.error))
                                    td.n.mute { "" } td.n.mute { "" }
                                }
                            }
                        }
                        div.scroll {
                            h3 { "Held rows by reason" }
                            table {
                                @for r in super::metrics::HOLD_REASONS {
                                    tr {
                                        td { (r.as_str()) }
                                        (count_cell(series("sweeper_held_rows", &[("sweep", n), ("reason", r.as_str())]), c.reasons.get(&r).copied().unwrap_or(0)))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(l) = &s.last {
                h3 { "Last pass" }
                p {
                    span class=(outcome_class(l.outcome)) { (l.outcome) }
                    " · " (ago(now, l.at)) " · took " (format!("{:.2}", l.duration_seconds)) " s · "
                    (l.examined) " rows examined"
                    @if let Some(why) = &l.skipped { " · " (why) }
                }
                @if !l.errors.is_empty() {
                    ul.bad { @for e in &l.errors { li { (e.stage.as_str()) ": " (e.message) } } }
                }
            } @else {
                p.mute { "no pass yet" }
            }
            @if !s.recent.is_empty() {
                h3 { "Recent passes" }
                div.scroll { table {
                    tr { th { "when" } th { "outcome" } th.n { "s" } th.n { "requeued" } th.n { "marked sent" } th.n { "marked error" } th.n { "already moved" } th.n { "failed" } }
                    @for p in &s.recent {
                        tr {
                            td { (ago(now, p.at)) } td class=(outcome_class(p.outcome)) { (p.outcome) }
                            td.n { (format!("{:.2}", p.duration_seconds)) }
                            td.n { (applied(p, Action::Requeue)) } td.n { (applied(p, Action::MarkSent)) } td.n { (applied(p, Action::MarkError)) }
                            td.n { (p.already_moved) } td.n { (p.failed) }
                        }
                    }
                } }
            }
            h3 { "Stuck rows, last " (HISTORY.as_secs() / 3600) " hours" }
            (chart(&s.history.iter().copied().collect::<Vec<_>>(), now))
        }
    }
}

trait TotalsOf {
    fn totals_of(&self, s: RowState) -> u64;
}

impl TotalsOf for crate::core::report::SweepReport {
    fn totals_of(&self, s: RowState) -> u64 {
        match s {
            RowState::Pending => self.totals.pending,
            RowState::Sending => self.totals.sending,
        }
    }
}

fn sources_table(sources: &BTreeMap<String, Option<String>>) -> Markup {
    html! {
        h2 { "Evidence sources" }
        @if sources.is_empty() {
            p.mute { "none read yet" }
        } @else {
            div.scroll { table {
                @for (name, err) in sources {
                    tr {
                        td { (name) }
                        @match err {
                            None => td.ok data-metric=(series("sweeper_evidence_source_up", &[("source", name)])) data-value="1" { "up" },
                            Some(e) => td.bad data-metric=(series("sweeper_evidence_source_up", &[("source", name)])) data-value="0" { "down: " (e) },
                        }
                    }
                }
            } }
        }
    }
}

/// `/`: every sweep.
pub fn index(snap: &Snapshot, now: Timestamp) -> Markup {
    page(
        "status",
        true,
        html! {
            h1 { "sweeper" }
            p.mute {
                @if let Some(t) = snap.started_at { "running since " (ago(now, t)) " · " }
                (snap.sweeps.len()) " sweep(s) · " a href="/metrics" { "metrics" } " · " a href="/api/sweeps" { "JSON" }
            }
            @for s in &snap.sweeps { (sweep_card(s, now)) }
            (sources_table(&snap.sources))
        },
    )
}

/// Filters and page of `/sweeps/{name}`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct PlanQuery {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub page: Option<usize>,
}

impl PlanQuery {
    fn want(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }

    pub fn keeps(&self, r: &RowReport) -> bool {
        Self::want(&self.state).is_none_or(|s| r.state.as_str() == s)
            && Self::want(&self.decision).is_none_or(|d| r.decision.as_str() == d)
            && Self::want(&self.reason).is_none_or(|x| r.reason.as_str() == x)
    }

    /// The matching rows of page `page` (from 1), and how many match.
    pub fn select<'r>(&self, rows: &'r [RowReport]) -> (Vec<&'r RowReport>, usize) {
        let all: Vec<&RowReport> = rows.iter().filter(|r| self.keeps(r)).collect();
        let page = self.page.unwrap_or(1).max(1);
        let n = all.len();
        let rows = all
            .into_iter()
            .skip((page - 1) * PAGE_ROWS)
            .take(PAGE_ROWS)
            .collect();
        (rows, n)
    }

    fn link(&self, page: usize) -> String {
        let mut q = vec![format!("page={page}")];
        for (k, v) in [
            ("state", &self.state),
            ("decision", &self.decision),
            ("reason", &self.reason),
        ] {
            if let Some(v) = Self::want(v) {
                q.push(format!("{k}={}", segment(v)));
            }
        }
        format!("?{}", q.join("&"))
    }
}

fn select_box(name: &str, current: &Option<String>, options: &[&str]) -> Markup {
    let cur = current.as_deref().unwrap_or("");
    html! {
        label { (name)
            select name=(name) {
                option value="" selected[cur.is_empty()] { "any" }
                @for o in options { option value=(o) selected[cur == *o] { (o) } }
            }
        }
    }
}

fn outcome_text(o: &crate::core::model::Outcome) -> Markup {
    use crate::core::model::Outcome;
    html! {
        @match o {
            Outcome::Applied => span.ok { "applied" },
            Outcome::AlreadyMoved => span.warn { "already moved" },
            Outcome::Failed { stage, error } => span.bad title=(error) { "failed at " (stage.as_str()) },
            Outcome::NotApplied => span.mute { "—" },
        }
    }
}

fn evidence_summary(r: &RowReport) -> Markup {
    html! {
        @for e in &r.evidence {
            div { code { (e.source) } ": " (e.verdict.label()) @if !e.detail.is_empty() { " — " (e.detail) } }
        }
    }
}

/// `/sweeps/{name}`: the plan of the latest pass.
pub fn sweep_page(s: &SweepStatus, q: &PlanQuery, now: Timestamp) -> Markup {
    let n = s.name.as_str();
    let (rows, matching) = q.select(&s.plan);
    let page_no = q.page.unwrap_or(1).max(1);
    let pages = matching.div_ceil(PAGE_ROWS).max(1);
    let mut reasons: Vec<&str> = s.plan.iter().map(|r| r.reason.as_str()).collect();
    reasons.sort_unstable();
    reasons.dedup();
    let decisions: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    page(
        n,
        true,
        html! {
            nav { a href="/" { "← all sweeps" } }
            h1 { "sweep " (n) }
            p.mute {
                @match s.plan_at {
                    Some(t) => { "plan of the pass " (ago(now, t)) ": " (s.plan.len()) " stuck row(s) listed" }
                    None => { "no pass has walked this sweep yet" }
                }
                @if s.plan_omitted > 0 { " (" (s.plan_omitted) " more not kept: metrics.status_rows)" }
                " · " a href=(format!("/api/sweeps/{}", segment(n))) { "JSON" }
            }
            form method="get" {
                (select_box("state", &q.state, &["pending", "sending"]))
                (select_box("decision", &q.decision, &decisions))
                (select_box("reason", &q.reason, &reasons))
                button type="submit" { "filter" }
            }
            p.mute { (matching) " matching · page " (page_no) " of " (pages) }
            div.scroll { table #plan {
                tr { th { "key" } th { "state" } th.n { "age" } th { "decision" } th { "reason" } th.n { "attempt" } th { "outcome" } th { "evidence" } }
                @for r in &rows {
                    tr {
                        td.key { a href=(format!("/sweeps/{}/rows/{}", segment(n), segment(&r.key))) { (r.key) } }
                        td { (r.state.as_str()) }
                        td.n { (human_age(r.age_seconds as f64)) }
                        td { (r.decision.as_str()) }
                        td { (r.reason.as_str()) }
                        td.n { @if let Some(a) = r.attempt { (a) } }
                        td { (outcome_text(&r.outcome)) }
                        td { (evidence_summary(r)) }
                    }
                }
            } }
            nav {
                @if page_no > 1 { a href=(q.link(page_no - 1)) { "← previous" } " " }
                @if page_no < pages { a href=(q.link(page_no + 1)) { "next →" } }
            }
        },
    )
}

/// `explain`'s lines as (label, text) pairs: a label line is two spaces, a
/// word, padding; a continuation line is indented to the text column.
pub fn explain_sections(text: &str) -> (String, Vec<(String, String)>) {
    let mut lines = text.lines();
    let head = lines.next().unwrap_or("").to_string();
    let mut out: Vec<(String, String)> = Vec::new();
    for l in lines {
        let label = l.get(2..14).map(str::trim).unwrap_or("");
        let body = l.get(14..).unwrap_or_else(|| l.trim());
        if l.starts_with("  ") && !l.starts_with("   ") && !label.is_empty() {
            out.push((label.to_string(), body.to_string()));
        } else if let Some(last) = out.last_mut() {
            last.1.push('\n');
            last.1.push_str(l.trim_start());
        } else {
            out.push((String::new(), l.trim().to_string()));
        }
    }
    (head, out)
}

/// `/sweeps/{name}/rows/{key}`: `sweeper explain` as HTML.
pub fn row_page(sweep: &str, key: &str, explain: &str, ok: bool) -> Markup {
    let (head, sections) = explain_sections(explain);
    page(
        key,
        false,
        html! {
            nav { a href="/" { "all sweeps" } " · " a href=(format!("/sweeps/{}", segment(sweep))) { "← sweep " (sweep) } }
            h1 { "row " span.key { (key) } }
            p.mute { (head) }
            @if !ok { p.bad { "this row could not be fully explained (see below)" } }
            div.scroll { table #explain {
                @for (label, body) in &sections {
                    tr { th { (label) } td { pre { (body) } } }
                }
            } }
            p.mute { "a dry run of this one row now, as " code { "sweeper explain --sweep " (sweep) " --key …" } " prints it" }
        },
    )
}

/// Whether a request's `Authorization` header satisfies `auth`.
pub fn authorized(auth: &HttpAuth, header: Option<&str>) -> bool {
    use base64::Engine as _;
    let Some(h) = header else { return false };
    let (scheme, value) = h.split_once(' ').unwrap_or((h, ""));
    let value = value.trim();
    match auth {
        HttpAuth::Bearer(token) => {
            scheme.eq_ignore_ascii_case("bearer")
                && same(value.as_bytes(), token.expose().as_bytes())
        }
        HttpAuth::Basic { username, password } => {
            if !scheme.eq_ignore_ascii_case("basic") {
                return false;
            }
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(value) else {
                return false;
            };
            let want = format!("{username}:{}", password.expose());
            same(&raw, want.as_bytes())
        }
    }
}

/// Equal, comparing every byte whatever differs first.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::core::model::{Outcome, Reason};

    fn row(key: &str, state: RowState, decision: Action, reason: Reason) -> RowReport {
        RowReport {
            key: key.into(),
            state,
            age_seconds: 600,
            decision,
            reason,
            attempt: None,
            evidence: vec![],
            evidence_expires_at: None,
            outcome: Outcome::NotApplied,
        }
    }

    #[test]
    fn row_keys_and_log_lines_render_as_text() {
        let key = "<script>alert(1)</script>";
        let s = SweepStatus {
            name: "n".into(),
            plan: vec![row(
                key,
                RowState::Pending,
                Action::Requeue,
                Reason::StalePending,
            )],
            ..SweepStatus::default()
        };
        let html = sweep_page(&s, &PlanQuery::default(), chrono::Utc::now()).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("/sweeps/n/rows/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"));
        let page = row_page(
            "n",
            key,
            "sweep n\n  evidence    <b>line</b> mail.log:3\n",
            true,
        )
        .into_string();
        assert!(
            !page.contains("<b>") && !page.contains("<script>"),
            "{page}"
        );
    }

    #[test]
    fn plan_filters_and_pages() {
        let mut plan: Vec<RowReport> = (0..120)
            .map(|i| {
                row(
                    &i.to_string(),
                    RowState::Pending,
                    Action::Requeue,
                    Reason::StalePending,
                )
            })
            .collect();
        plan.push(row(
            "s1",
            RowState::Sending,
            Action::MarkSent,
            Reason::Delivered,
        ));
        let q = PlanQuery::default();
        let (rows, n) = q.select(&plan);
        assert_eq!((rows.len(), n), (PAGE_ROWS, 121));
        let q = PlanQuery {
            page: Some(3),
            ..PlanQuery::default()
        };
        assert_eq!(q.select(&plan).0.len(), 21);
        let q = PlanQuery {
            state: Some("sending".into()),
            ..PlanQuery::default()
        };
        assert_eq!(q.select(&plan).0[0].key, "s1");
        let q = PlanQuery {
            decision: Some("requeue".into()),
            reason: Some("delivered".into()),
            ..PlanQuery::default()
        };
        assert_eq!(q.select(&plan).1, 0);
        let q = PlanQuery {
            reason: Some("".into()),
            ..PlanQuery::default()
        };
        assert_eq!(q.select(&plan).1, 121, "an empty filter is no filter");
    }

    #[test]
    fn explain_text_splits_into_labelled_sections() {
        let text = "sweep s · table t · id = 7\n  state       sending, since x\n  evidence    postfix — lookup\n              mail.log:12  status=sent\n";
        let (head, s) = explain_sections(text);
        assert_eq!(head, "sweep s · table t · id = 7");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].0, "evidence");
        assert_eq!(s[1].1, "postfix — lookup\nmail.log:12  status=sent");
    }

    #[test]
    fn credentials_are_checked_exactly() {
        let bearer = HttpAuth::Bearer(Secret::new("t0k"));
        let basic = HttpAuth::Basic {
            username: "on".into(),
            password: Secret::new("call"),
        };
        let table: [(&HttpAuth, Option<&str>, bool); 8] = [
            (&bearer, Some("Bearer t0k"), true),
            (&bearer, Some("bearer t0k"), true),
            (&bearer, Some("Bearer t0"), false),
            (&bearer, Some("Bearer t0kk"), false),
            (&bearer, None, false),
            (&basic, Some("Basic b246Y2FsbA=="), true),
            (&basic, Some("Basic b246Y2FsbA"), false),
            (&basic, Some("Bearer call"), false),
        ];
        for (auth, header, ok) in table {
            assert_eq!(authorized(auth, header), ok, "{header:?}");
        }
        assert_eq!(segment("a b/ü"), "a%20b%2F%C3%BC");
    }
}
