//! `least-latency`: a scheduler for the userspace proxy that sends each new
//! connection to the ready backend with the lowest expected wait, where the
//! wait is the backend's last probe latency times the connections it already
//! holds, divided by its weight.
//!
//! It is the SDK's worked example: see README.md next to this file for the
//! path from `cargo new` to a module loaded by the agent.

use serde::Deserialize;
use switchyard_sdk::scheduler::{Backend, Connection, Guest};
use switchyard_sdk::types::{ModuleError, ModuleInfo, Role};

/// The module's config, as its schema below describes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct Config {
    /// Latency assumed for a backend that has not been probed yet.
    unknown_latency_us: u32,
    /// Backends slower than this are used only when no other is ready.
    max_latency_us: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            unknown_latency_us: 1000,
            max_latency_us: None,
        }
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "unknownLatencyUs": {"type": "integer", "minimum": 1, "maximum": 10000000,
      "description": "Latency assumed for a backend without a probe result."},
    "maxLatencyUs": {"type": "integer", "minimum": 1,
      "description": "Backends slower than this are used only when no other is ready."}
  }
}"#;

struct LeastLatency;

impl Guest for LeastLatency {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "least-latency",
            env!("CARGO_PKG_VERSION"),
            Role::Scheduler,
            "Sends each connection to the ready backend with the lowest latency x load.",
            SCHEMA,
        )
    }

    fn pick(conn: Connection, backends: Vec<Backend>, config: String) -> Result<u32, ModuleError> {
        let config: Config = switchyard_sdk::config::parse(&config)?;
        choose(&conn, &backends, &config)
            .map(|i| i as u32)
            .ok_or_else(|| {
                switchyard_sdk::warn!(
                    "{}: no ready backend among {}",
                    conn.service,
                    backends.len()
                );
                ModuleError::InvalidInput(format!("service {} has no ready backend", conn.service))
            })
    }
}

/// Expected wait at a backend, in microsecond-connections per unit of weight.
fn cost(b: &Backend, config: &Config) -> u64 {
    let latency = b.latency_us.unwrap_or(config.unknown_latency_us).max(1) as u64;
    latency * (b.active_connections as u64 + 1) * 1000 / b.weight.max(1) as u64
}

fn choose(conn: &Connection, backends: &[Backend], config: &Config) -> Option<usize> {
    let ready = || backends.iter().enumerate().filter(|(_, b)| b.ready);
    let fast_enough = |b: &Backend| match (config.max_latency_us, b.latency_us) {
        (Some(max), Some(l)) => l <= max,
        _ => true,
    };
    let pool: Vec<(usize, &Backend)> = if ready().any(|(_, b)| fast_enough(b)) {
        ready().filter(|(_, b)| fast_enough(b)).collect()
    } else {
        ready().collect()
    };
    let best = pool.iter().map(|(_, b)| cost(b, config)).min()?;
    let ties: Vec<usize> = pool
        .iter()
        .filter(|(_, b)| cost(b, config) == best)
        .map(|(i, _)| *i)
        .collect();
    // Spread ties by a hash of the client's port, so equal backends share
    // the load. (Not the port itself: Linux gives connect() even ports, so
    // `port % 2` would always pick the same one of two.)
    let h = (conn.client_port as u32).wrapping_mul(0x9e37_79b1) >> 16;
    Some(ties[h as usize % ties.len()])
}

switchyard_sdk::export_scheduler!(LeastLatency);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::testing::Harness;
    use switchyard_sdk::types::Protocol;

    fn backend(ip: &str, latency_us: Option<u32>, active: u32, ready: bool) -> Backend {
        Backend {
            address: ip.parse().unwrap(),
            port: 8080,
            weight: 1,
            active_connections: active,
            ready,
            latency_us,
            node: None,
            zone: None,
        }
    }

    fn conn(client_port: u16) -> Connection {
        Connection {
            client: "10.244.2.9".parse().unwrap(),
            client_port,
            service_address: "10.96.0.10".parse().unwrap(),
            service_port: 80,
            protocol: Protocol::Tcp,
            service: "default/web".into(),
        }
    }

    #[test]
    fn prefers_the_fastest_ready_backend() {
        let b = vec![
            backend("10.244.1.2", Some(900), 0, true),
            backend("10.244.1.3", Some(300), 0, true),
            backend("10.244.1.4", Some(100), 0, false),
        ];
        assert_eq!(LeastLatency::pick(conn(1), b, "{}".into()), Ok(1));
    }

    #[test]
    fn load_counts_against_latency() {
        // 300us with 5 open connections costs more than 900us with none.
        let b = vec![
            backend("10.244.1.2", Some(900), 0, true),
            backend("10.244.1.3", Some(300), 5, true),
        ];
        assert_eq!(LeastLatency::pick(conn(1), b, String::new()), Ok(0));
    }

    #[test]
    fn ties_are_spread_by_client_port() {
        let b = vec![
            backend("10.244.1.2", None, 0, true),
            backend("10.244.1.3", None, 0, true),
        ];
        // Even ports only, as Linux gives connect(): both still get a share.
        let picks: Vec<u32> = (0..200)
            .map(|p| LeastLatency::pick(conn(40000 + 2 * p), b.clone(), String::new()).unwrap())
            .collect();
        let first = picks.iter().filter(|&&i| i == 0).count();
        assert!((70..=130).contains(&first), "{first} of 200 to the first");
    }

    #[test]
    fn max_latency_is_a_preference_not_a_wall() {
        let config = r#"{"maxLatencyUs": 500}"#.to_string();
        let b = vec![backend("10.244.1.2", Some(900), 0, true)];
        assert_eq!(LeastLatency::pick(conn(1), b, config), Ok(0));
    }

    #[test]
    fn no_ready_backend_is_an_error_and_a_warning() {
        let h = Harness::new();
        let b = vec![backend("10.244.1.2", Some(100), 0, false)];
        let err = LeastLatency::pick(conn(1), b, String::new()).unwrap_err();
        assert!(matches!(err, ModuleError::InvalidInput(m) if m.contains("default/web")));
        assert_eq!(
            h.logs(),
            vec!["warn: default/web: no ready backend among 1"]
        );
    }

    #[test]
    fn bad_config_is_reported() {
        let b = vec![backend("10.244.1.2", Some(100), 0, true)];
        let err = LeastLatency::pick(conn(1), b, r#"{"nope": 1}"#.into()).unwrap_err();
        assert!(matches!(err, ModuleError::InvalidConfig(m) if m.contains("nope")));
    }
}
