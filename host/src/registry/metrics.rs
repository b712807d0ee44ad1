//! Module bindings as Prometheus metrics: whether each serves, its calls,
//! its failures (in a row too: what `CallsFailing` is decided from) and its
//! call latency. Counters are per serving version: a swap starts them
//! again, which Prometheus reads as a counter reset.

use super::ModuleStatus;
use std::fmt::Write as _;

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of `modules`.
pub fn text(modules: &[ModuleStatus]) -> String {
    let mut t = String::new();
    let labels = |m: &ModuleStatus| {
        format!(
            "module=\"{}\",role=\"{}\"",
            label(&m.name),
            m.role.map(|r| r.to_string()).unwrap_or_default()
        )
    };
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(t, "# HELP {name} {help}");
        let _ = writeln!(t, "# TYPE {name} {kind}");
        for (l, v) in rows {
            let _ = writeln!(t, "{name}{{{l}}} {v}");
        }
    };
    family(
        "switchyard_module_ready",
        "gauge",
        "1 while the binding serves; 0 when it failed to load or its calls keep failing (reason says which).",
        modules
            .iter()
            .map(|m| {
                (
                    format!("{},reason=\"{}\"", labels(m), label(&m.condition.reason)),
                    u8::from(m.condition.ready).to_string(),
                )
            })
            .collect(),
    );
    family(
        "switchyard_module_calls_total",
        "counter",
        "Calls into the binding's serving version.",
        modules
            .iter()
            .map(|m| (labels(m), m.stats.calls.to_string()))
            .collect(),
    );
    family(
        "switchyard_module_call_errors_total",
        "counter",
        "Calls that failed (trap, deadline, invalid plan, refused by the kernel, ...).",
        modules
            .iter()
            .map(|m| (labels(m), m.stats.errors.to_string()))
            .collect(),
    );
    family(
        "switchyard_module_consecutive_call_errors",
        "gauge",
        "Calls that failed since the last one that succeeded.",
        modules
            .iter()
            .map(|m| (labels(m), m.stats.consecutive_errors.to_string()))
            .collect(),
    );
    let mut latency = vec![];
    for m in modules {
        for (q, v) in [
            ("0.5", m.stats.latency_p50_us),
            ("0.99", m.stats.latency_p99_us),
        ] {
            if let Some(us) = v {
                latency.push((
                    format!("{},quantile=\"{q}\"", labels(m)),
                    format!("{}", us as f64 / 1e6),
                ));
            }
        }
    }
    family(
        "switchyard_module_call_duration_seconds",
        "gauge",
        "Call latency over the recent calls, by quantile.",
        latency,
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;
    use crate::registry::Condition;
    use crate::registry::stats::StatsSnapshot;

    #[test]
    fn a_failing_module_shows_in_its_metrics() {
        let m = ModuleStatus {
            name: "proxy".into(),
            role: Some(Role::ServiceProxy),
            condition: Condition {
                ready: false,
                reason: "CallsFailing".into(),
                message: "10 calls failed".into(),
                since: 0,
                observed_generation: 0,
            },
            digest: None,
            module: None,
            version: None,
            failure_policy: None,
            stats: StatsSnapshot {
                calls: 12,
                errors: 11,
                consecutive_errors: 10,
                last_error: None,
                latency_p50_us: Some(250),
                latency_p99_us: None,
            },
        };
        let t = text(&[m]);
        for line in [
            "switchyard_module_ready{module=\"proxy\",role=\"service-proxy\",reason=\"CallsFailing\"} 0",
            "switchyard_module_calls_total{module=\"proxy\",role=\"service-proxy\"} 12",
            "switchyard_module_call_errors_total{module=\"proxy\",role=\"service-proxy\"} 11",
            "switchyard_module_consecutive_call_errors{module=\"proxy\",role=\"service-proxy\"} 10",
            "switchyard_module_call_duration_seconds{module=\"proxy\",role=\"service-proxy\",quantile=\"0.5\"} 0.00025",
            "# TYPE switchyard_module_calls_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} not in:\n{t}");
        }
        assert!(!t.contains("quantile=\"0.99\""), "{t}");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
