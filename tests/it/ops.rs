//! The operational artefacts: alert rules (promtool), the Grafana
//! dashboard and the deploy examples stay true to the code.

use crate::support::*;
use std::collections::BTreeSet;
use std::process::Command;

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(root().join("config"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is required (run scripts/test, which installs it): {e}")
        })
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let o = promtool(&["check", "rules", "alerts.yml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// Metric names sweeper exports (histograms with their series suffixes).
fn exported() -> BTreeSet<String> {
    let m = sweeper::shell::metrics::Metrics::new();
    let env = |k: &str| (k == "DATABASE_URL").then(|| "sqlite:///tmp/x.db".to_string());
    let text = std::fs::read_to_string(root().join("config/example.yaml")).unwrap();
    let cfg = sweeper::config::load_str(&text, "example", &env).unwrap();
    m.register_config(&cfg);
    let mut names = BTreeSet::new();
    for line in m.render().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        }
    }
    names.extend(m.names().iter().cloned());
    names
}

/// `sweeper_…` identifiers in a PromQL expression.
fn referenced(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sweeper_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn alerts_and_dashboard_only_use_exported_metrics() {
    let names = exported();
    for want in [
        "sweeper_rows",
        "sweeper_stuck_rows",
        "sweeper_oldest_stuck_age_seconds",
        "sweeper_actions_total",
        "sweeper_errors_total",
        "sweeper_pass_duration_seconds_bucket",
        "sweeper_last_success_timestamp_seconds",
        "sweeper_evidence_lookups_total",
    ] {
        assert!(names.contains(want), "the metrics contract names {want}");
    }
    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("config/alerts.yml")).unwrap())
            .unwrap();
    let mut exprs: Vec<String> = Vec::new();
    for g in alerts["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            exprs.push(r["expr"].as_str().unwrap().to_string());
            let url = r["annotations"]["runbook_url"].as_str().unwrap();
            let anchor = url.split('#').nth(1).unwrap();
            let runbook = std::fs::read_to_string(root().join("docs/runbook.md")).unwrap();
            let alert = r["alert"].as_str().unwrap();
            assert_eq!(anchor, alert.to_lowercase(), "runbook anchor of {alert}");
            assert!(
                runbook.contains(&format!("## {alert}")),
                "runbook section for {alert}"
            );
        }
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 20);
    for e in &exprs {
        for name in referenced(e) {
            assert!(names.contains(&name), "{name} (in `{e}`) is not exported");
        }
    }
}

#[test]
fn the_kubernetes_example_config_is_valid() {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let cfg_text = cm["data"]["sweeper.yaml"].as_str().unwrap();
    let env = |k: &str| match k {
        "DATABASE_URL" => Some("postgres://u@db/app".to_string()),
        "REDIS_URL" => Some("redis://redis:6379/0".to_string()),
        _ => None,
    };
    sweeper::config::load_str(cfg_text, "deploy/kubernetes.yaml", &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let unit = std::fs::read_to_string(root().join("deploy/sweeper.service")).unwrap();
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("RestartPreventExitStatus=78"));
}

/// ARCHITECTURE invariant 1: the core does no I/O and reads no clock —
/// nothing under src/core reaches for the file system, the network, the
/// environment, processes, async runtimes, database or HTTP clients, or the
/// time of day.
#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    let forbidden = [
        "std::fs",
        "std::net",
        "std::env",
        "std::process",
        "std::thread",
        "tokio",
        "sqlx",
        "reqwest",
        "redis::",
        "lapin",
        "axum",
        "Utc::now",
        "Local::now",
        "SystemTime",
        "Instant::now",
        "std::io::stdin",
        "std::io::stdout",
        "std::io::stderr",
    ];
    let mut found = Vec::new();
    let mut files = 0;
    let mut stack = vec![root().join("src/core")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for f in forbidden {
                    if code.contains(f) {
                        found.push(format!(
                            "{}:{}: {f}: {}",
                            path.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(files >= 10, "scanned {files} files under src/core");
    assert!(
        found.is_empty(),
        "I/O or a clock in the core:\n{}",
        found.join("\n")
    );
}
