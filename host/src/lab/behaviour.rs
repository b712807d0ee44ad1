//! How a lab pod is told to misbehave, so probes have something to catch: a
//! health check that starts failing, slow answers, a slow start, ports that
//! stop accepting, a process that exits.
//!
//! A Pod asks for it with annotations; the lab's kubelet turns them into
//! `--behave KEY=VALUE` arguments of the pod server (the pod server cannot
//! read the Pod), which parses them back. Every time is measured from the
//! start of the pod server.

use std::collections::BTreeMap;
use std::time::Duration;

const PREFIX: &str = "switchyard.dev/";

/// `/healthz` answers 500 and gRPC health NOT_SERVING from this long after start.
pub const HEALTHZ_FAIL_AFTER: &str = "switchyard.dev/healthz-fail-after";
/// Every answer (HTTP, gRPC, line echo) is delayed this long.
pub const RESPOND_DELAY: &str = "switchyard.dev/respond-delay";
/// The ports are bound only this long after start.
pub const START_DELAY: &str = "switchyard.dev/start-delay";
/// The TCP listeners are closed this long after start: connections are refused.
pub const REFUSE_AFTER: &str = "switchyard.dev/refuse-after";
/// The process exits this long after start.
pub const EXIT_AFTER: &str = "switchyard.dev/exit-after";
/// The exit code for `exit-after` (1 by default).
pub const EXIT_CODE: &str = "switchyard.dev/exit-code";
/// On SIGTERM, keep serving this long before exiting (agnhost's
/// `--delay-shutdown`): the pod's endpoints are serving and terminating
/// meanwhile. Without it the server exits at once.
pub const SHUTDOWN_DELAY: &str = "switchyard.dev/shutdown-delay";

/// Every annotation this module reads.
pub const ANNOTATIONS: &[&str] = &[
    HEALTHZ_FAIL_AFTER,
    RESPOND_DELAY,
    START_DELAY,
    REFUSE_AFTER,
    EXIT_AFTER,
    EXIT_CODE,
    SHUTDOWN_DELAY,
];

/// The misbehaviours of one pod; the default is a well-behaved pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behaviour {
    pub healthz_fail_after: Option<Duration>,
    pub respond_delay: Option<Duration>,
    pub start_delay: Option<Duration>,
    pub refuse_after: Option<Duration>,
    pub exit_after: Option<Duration>,
    pub exit_code: Option<i32>,
    pub shutdown_delay: Option<Duration>,
}

impl Behaviour {
    /// Read the behaviour from a Pod's annotations. Annotations this module
    /// does not know are ignored (other parts of Switchyard have their own);
    /// a bad value is an error naming the annotation and the value.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Behaviour, String> {
        let mut b = Behaviour::default();
        for name in ANNOTATIONS {
            if let Some(value) = annotations.get(*name) {
                let key = &name[PREFIX.len()..];
                b.set(key, value.trim())
                    .map_err(|e| format!("annotation {name}: {e}"))?;
            }
        }
        Ok(b)
    }

    /// The pod server's arguments for this behaviour: `--behave KEY=VALUE`
    /// per field set, none for a well-behaved pod.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![];
        let mut push = |key: &str, value: String| {
            args.push("--behave".to_string());
            args.push(format!("{key}={value}"));
        };
        let durations = [
            ("healthz-fail-after", self.healthz_fail_after),
            ("respond-delay", self.respond_delay),
            ("start-delay", self.start_delay),
            ("refuse-after", self.refuse_after),
            ("exit-after", self.exit_after),
            ("shutdown-delay", self.shutdown_delay),
        ];
        for (key, d) in durations {
            if let Some(d) = d {
                push(key, format_duration(d));
            }
        }
        if let Some(code) = self.exit_code {
            push("exit-code", code.to_string());
        }
        args
    }

    /// Apply one `KEY=VALUE` argument (the value of a `--behave`), with the
    /// annotation names without their `switchyard.dev/` prefix as keys.
    pub fn parse_arg(&mut self, arg: &str) -> Result<(), String> {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("--behave {arg:?}: expected KEY=VALUE"))?;
        self.set(key.trim(), value.trim())
            .map_err(|e| format!("--behave {arg:?}: {e}"))
    }

    /// Parse a list of `KEY=VALUE` arguments into a behaviour.
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Result<Behaviour, String> {
        let mut b = Behaviour::default();
        for a in args {
            b.parse_arg(a.as_ref())?;
        }
        Ok(b)
    }

    /// The code `exit-after` exits with.
    pub fn exit_code(&self) -> i32 {
        self.exit_code.unwrap_or(1)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let slot = match key {
            "healthz-fail-after" => &mut self.healthz_fail_after,
            "respond-delay" => &mut self.respond_delay,
            "start-delay" => &mut self.start_delay,
            "refuse-after" => &mut self.refuse_after,
            "exit-after" => &mut self.exit_after,
            "shutdown-delay" => &mut self.shutdown_delay,
            "exit-code" => {
                let code = value
                    .parse::<i32>()
                    .map_err(|_| format!("{value:?} is not an exit code (an integer)"))?;
                self.exit_code = Some(code);
                return Ok(());
            }
            _ => {
                return Err(format!(
                    "unknown behaviour {key:?} (known: {})",
                    ANNOTATIONS
                        .iter()
                        .map(|a| &a[PREFIX.len()..])
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        };
        *slot = Some(parse_duration(value)?);
        Ok(())
    }
}

/// Parse a duration such as `500ms`, `3s`, `1.5s`, `2m` (also `ns`, `us`, `h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (like 500ms, 3s, 1.5s, 2m)");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let nanos_per_unit: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    // Integer arithmetic, so that 1.5s is exactly 1500ms.
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') || fraction.len() > 18 {
        return Err(bad());
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| bad())?
    };
    let nanos = whole
        .checked_mul(nanos_per_unit)
        .and_then(|n| {
            n.checked_add(fraction_value * nanos_per_unit / 10u128.pow(fraction.len() as u32))
        })
        .ok_or_else(bad)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A duration in the form `parse_duration` reads back exactly.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "", "3", "s", "1.s", ".5s", "-1s", "3 s", "3sec", "1e3s", "1..2s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn durations_round_trip() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(10),
            Duration::from_millis(1500),
            Duration::from_micros(2500),
            Duration::from_nanos(7),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
    }

    #[test]
    fn no_annotations_is_well_behaved_and_has_no_args() {
        let b = Behaviour::from_annotations(&annotations(&[
            ("switchyard.dev/sticky-ip", "10.0.0.1"),
            ("other", "x"),
        ]))
        .unwrap();
        assert_eq!(b, Behaviour::default());
        assert!(b.to_args().is_empty());
        assert_eq!(b.exit_code(), 1);
    }

    #[test]
    fn annotations_become_args_and_back() {
        let b = Behaviour::from_annotations(&annotations(&[
            (HEALTHZ_FAIL_AFTER, "10s"),
            (RESPOND_DELAY, "1.5s"),
            (START_DELAY, "500ms"),
            (REFUSE_AFTER, "2m"),
            (EXIT_AFTER, " 30s "),
            (EXIT_CODE, "3"),
        ]))
        .unwrap();
        assert_eq!(b.healthz_fail_after, Some(Duration::from_secs(10)));
        assert_eq!(b.respond_delay, Some(Duration::from_millis(1500)));
        assert_eq!(b.start_delay, Some(Duration::from_millis(500)));
        assert_eq!(b.refuse_after, Some(Duration::from_secs(120)));
        assert_eq!(b.exit_after, Some(Duration::from_secs(30)));
        assert_eq!(b.exit_code(), 3);
        let args = b.to_args();
        assert_eq!(
            args,
            [
                "--behave",
                "healthz-fail-after=10s",
                "--behave",
                "respond-delay=1500ms",
                "--behave",
                "start-delay=500ms",
                "--behave",
                "refuse-after=120s",
                "--behave",
                "exit-after=30s",
                "--behave",
                "exit-code=3",
            ]
        );
        let values: Vec<&String> = args.iter().skip(1).step_by(2).collect();
        assert_eq!(Behaviour::from_args(&values), Ok(b));
    }

    #[test]
    fn bad_values_name_the_annotation_and_the_value() {
        let e = Behaviour::from_annotations(&annotations(&[(RESPOND_DELAY, "soon")])).unwrap_err();
        assert!(e.contains(RESPOND_DELAY) && e.contains("\"soon\""), "{e}");
        let e = Behaviour::from_annotations(&annotations(&[(EXIT_CODE, "one")])).unwrap_err();
        assert!(e.contains(EXIT_CODE) && e.contains("\"one\""), "{e}");

        let mut b = Behaviour::default();
        let e = b.parse_arg("start-delay=3x").unwrap_err();
        assert!(e.contains("start-delay=3x") && e.contains("\"3x\""), "{e}");
        assert!(b.parse_arg("start-delay").is_err());
        let e = b.parse_arg("healthz-fail-afer=1s").unwrap_err();
        assert!(e.contains("unknown behaviour"), "{e}");
        assert_eq!(b, Behaviour::default());
    }
}
