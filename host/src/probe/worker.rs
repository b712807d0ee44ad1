//! One probe's state, as the kubelet's probe worker keeps it
//! (`pkg/kubelet/prober/worker.go`): when it is due, and how attempts become
//! a result through the thresholds. Time is passed in, so the rules are
//! tested without sleeping.
//!
//! - The first attempt is `initialDelaySeconds` after the container started,
//!   the next ones every `periodSeconds` after an attempt began.
//! - An attempt gives Success, Failure or Unknown (the probe could not be
//!   run: the kubelet throws such a result away, and so do we, apart from
//!   reporting it).
//! - The result changes to Failure after `failureThreshold` failures in a
//!   row, and to Success after `successThreshold` successes in a row.
//! - Before any attempt the result is the kubelet's initial one: Failure
//!   for readiness (not ready until shown ready), Success for liveness,
//!   Unknown for startup.
//! - A liveness or startup Failure puts the worker on hold until the
//!   container restarts; a startup Success ends the startup probe.

use super::spec::{ProbeKind, ProbeSpec};
pub use crate::datapath::probes::ProbeResult;
use std::time::{Duration, Instant};

/// What one attempt gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Success,
    Failure(String),
    /// The probe could not be run (no address yet, a failed exec, ...).
    Unknown(String),
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub spec: ProbeSpec,
    /// The result after thresholds: what readiness, restarts and modules see.
    pub result: ProbeResult,
    /// The raw result of the last attempt, and how many in a row gave it.
    last: Option<ProbeResult>,
    run: u32,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub last_latency: Option<Duration>,
    pub last_message: Option<String>,
    pub attempts: u64,
    next_due: Instant,
    in_flight: bool,
    /// After a liveness or startup Failure, until the container restarts.
    on_hold: bool,
    /// A startup probe that succeeded is not run again.
    done: bool,
}

fn initial(kind: ProbeKind) -> ProbeResult {
    match kind {
        ProbeKind::Readiness => ProbeResult::Failure,
        ProbeKind::Liveness => ProbeResult::Success,
        ProbeKind::Startup => ProbeResult::Unknown,
    }
}

impl Worker {
    /// A worker for a container that started at `started`.
    pub fn new(spec: ProbeSpec, started: Instant) -> Worker {
        Worker {
            result: initial(spec.kind),
            last: None,
            run: 0,
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_latency: None,
            last_message: None,
            attempts: 0,
            next_due: started + spec.initial_delay,
            in_flight: false,
            on_hold: false,
            done: false,
            spec,
        }
    }

    /// Whether an attempt should begin now.
    pub fn due(&self, now: Instant) -> bool {
        !self.in_flight && !self.on_hold && !self.done && now >= self.next_due
    }

    /// When the next attempt is due (for sleeping until then).
    pub fn next_due(&self) -> Option<Instant> {
        (!self.in_flight && !self.on_hold && !self.done).then_some(self.next_due)
    }

    /// An attempt begins at `now`.
    pub fn begin(&mut self, now: Instant) {
        self.in_flight = true;
        // Periods are counted from the start of attempts, not their end, so
        // a slow probe does not stretch the period.
        self.next_due = now + self.spec.period;
    }

    /// The raw result of the last attempt that counted (before thresholds).
    pub fn last_attempt(&self) -> Option<ProbeResult> {
        self.last
    }

    /// The attempt that began last ended. Returns the new result if it
    /// changed.
    pub fn finish(&mut self, attempt: Attempt, latency: Duration) -> Option<ProbeResult> {
        self.in_flight = false;
        self.attempts += 1;
        let raw = match attempt {
            Attempt::Success => {
                self.last_latency = Some(latency);
                self.last_message = None;
                self.consecutive_successes += 1;
                self.consecutive_failures = 0;
                ProbeResult::Success
            }
            Attempt::Failure(m) => {
                self.last_message = Some(m);
                self.consecutive_failures += 1;
                self.consecutive_successes = 0;
                ProbeResult::Failure
            }
            Attempt::Unknown(m) => {
                // Thrown away, as the kubelet does with a prober error.
                self.last_message = Some(m);
                return None;
            }
        };
        if self.last == Some(raw) {
            self.run += 1;
        } else {
            self.last = Some(raw);
            self.run = 1;
        }
        let threshold = match raw {
            ProbeResult::Success => self.spec.success_threshold,
            _ => self.spec.failure_threshold,
        };
        if self.run < threshold.max(1) || self.result == raw {
            return None;
        }
        self.result = raw;
        match (self.spec.kind, raw) {
            (ProbeKind::Liveness | ProbeKind::Startup, ProbeResult::Failure) => {
                self.on_hold = true;
                self.run = 0;
            }
            (ProbeKind::Startup, ProbeResult::Success) => self.done = true,
            _ => {}
        }
        Some(raw)
    }

    /// The container restarted at `now`: start over as for a new one.
    pub fn restarted(&mut self, now: Instant) {
        *self = Worker::new(self.spec.clone(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::spec::Handler;

    fn spec(kind: ProbeKind, delay: u64, period: u64, success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            kind,
            container: "c".into(),
            handler: Handler::Tcp {
                host: None,
                port: 80,
            },
            initial_delay: Duration::from_secs(delay),
            period: Duration::from_secs(period),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    /// Runs attempts on schedule for `secs` seconds; `outcome(t)` is the
    /// attempt at second t. Returns (second, new result) changes.
    fn drive(
        w: &mut Worker,
        t0: Instant,
        secs: u64,
        outcome: impl Fn(u64) -> Attempt,
    ) -> Vec<(u64, ProbeResult)> {
        let mut changes = vec![];
        for s in 0..=secs {
            let now = t0 + Duration::from_secs(s);
            if w.due(now) {
                w.begin(now);
                if let Some(r) = w.finish(outcome(s), Duration::from_millis(1)) {
                    changes.push((s, r));
                }
            }
        }
        changes
    }

    #[test]
    fn readiness_starts_not_ready_and_follows_the_thresholds() {
        let t0 = Instant::now();
        let mut w = Worker::new(spec(ProbeKind::Readiness, 5, 2, 2, 3), t0);
        assert_eq!(w.result, ProbeResult::Failure);
        assert!(!w.due(t0 + Duration::from_secs(4)), "initial delay");
        // Succeeds until second 20, then fails.
        let changes = drive(&mut w, t0, 40, |s| {
            if s < 20 {
                Attempt::Success
            } else {
                Attempt::Failure("500".into())
            }
        });
        // Attempts at 5, 7, 9, ...: ready after the second success (7),
        // not ready after the third failure (20, 22, 24 → 24... attempts at
        // 21, 23, 25).
        assert_eq!(
            changes,
            vec![(7, ProbeResult::Success), (25, ProbeResult::Failure)]
        );
        assert_eq!(w.consecutive_failures, 10);
    }

    #[test]
    fn unknown_attempts_change_nothing() {
        let t0 = Instant::now();
        let mut w = Worker::new(spec(ProbeKind::Readiness, 0, 1, 1, 1), t0);
        let changes = drive(&mut w, t0, 5, |_| Attempt::Unknown("no address".into()));
        assert!(changes.is_empty());
        assert_eq!(w.result, ProbeResult::Failure);
        assert_eq!(w.last_message.as_deref(), Some("no address"));
    }

    #[test]
    fn liveness_failure_holds_until_the_restart() {
        let t0 = Instant::now();
        let mut w = Worker::new(spec(ProbeKind::Liveness, 0, 1, 1, 3), t0);
        assert_eq!(w.result, ProbeResult::Success);
        let changes = drive(&mut w, t0, 10, |_| Attempt::Failure("refused".into()));
        assert_eq!(changes, vec![(2, ProbeResult::Failure)]);
        assert!(w.next_due().is_none(), "on hold");
        w.restarted(t0 + Duration::from_secs(11));
        assert_eq!(w.result, ProbeResult::Success);
        assert!(w.due(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn startup_ends_at_its_first_success() {
        let t0 = Instant::now();
        let mut w = Worker::new(spec(ProbeKind::Startup, 0, 1, 1, 30), t0);
        assert_eq!(w.result, ProbeResult::Unknown);
        let changes = drive(&mut w, t0, 10, |s| {
            if s >= 4 {
                Attempt::Success
            } else {
                Attempt::Failure("refused".into())
            }
        });
        assert_eq!(changes, vec![(4, ProbeResult::Success)]);
        assert!(w.next_due().is_none(), "not run again");
    }

    #[test]
    fn a_slow_attempt_does_not_stretch_the_period() {
        let t0 = Instant::now();
        let mut w = Worker::new(spec(ProbeKind::Readiness, 0, 2, 1, 3), t0);
        w.begin(t0);
        assert!(!w.due(t0 + Duration::from_secs(3)), "in flight");
        w.finish(Attempt::Success, Duration::from_secs(3));
        assert!(w.due(t0 + Duration::from_secs(3)));
        assert_eq!(w.next_due(), Some(t0 + Duration::from_secs(2)));
    }
}
