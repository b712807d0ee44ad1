//! Call statistics per loaded module version.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// Latency percentiles are taken over this many most recent calls.
const WINDOW: usize = 1024;

#[derive(Debug, Default)]
pub struct CallStats {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: u64,
    errors: u64,
    consecutive_errors: u64,
    last_error: Option<LastError>,
    recent_us: VecDeque<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// A snapshot for status and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    pub calls: u64,
    pub errors: u64,
    /// Calls that failed since the last one that succeeded.
    pub consecutive_errors: u64,
    pub last_error: Option<LastError>,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

impl CallStats {
    pub fn record(&self, elapsed: Duration, error: Option<&str>) {
        let mut s = self.inner.lock();
        s.calls += 1;
        if s.recent_us.len() == WINDOW {
            s.recent_us.pop_front();
        }
        s.recent_us.push_back(elapsed.as_micros() as u64);
        if error.is_none() {
            s.consecutive_errors = 0;
        }
        if let Some(e) = error {
            s.errors += 1;
            s.consecutive_errors += 1;
            s.last_error = Some(LastError {
                message: e.to_string(),
                at: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            });
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let s = self.inner.lock();
        let mut v: Vec<u64> = s.recent_us.iter().copied().collect();
        v.sort_unstable();
        let pct = |p: usize| (!v.is_empty()).then(|| v[((v.len() - 1) * p).div_ceil(100)]);
        StatsSnapshot {
            calls: s.calls,
            errors: s.errors,
            consecutive_errors: s.consecutive_errors,
            last_error: s.last_error.clone(),
            latency_p50_us: pct(50),
            latency_p99_us: pct(99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_window() {
        let s = CallStats::default();
        for us in 1..=100 {
            s.record(Duration::from_micros(us), None);
        }
        s.record(Duration::from_micros(5), Some("boom"));
        let snap = s.snapshot();
        assert_eq!((snap.calls, snap.errors), (101, 1));
        assert_eq!(snap.latency_p50_us, Some(50));
        assert_eq!(snap.latency_p99_us, Some(99));
        assert_eq!(snap.last_error.unwrap().message, "boom");
    }
}
