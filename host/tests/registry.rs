//! The module registry: sources and digests, config schemas, hot swap with
//! calls in flight, status.

// `serial()` is held for a whole test on purpose: it keeps the tests that
// assert on timing from running at once; each test has its own runtime.
#![allow(clippy::await_holding_lock)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;
use switchyard::model::Role;
use switchyard::registry::source::ModuleSource;
use switchyard::runtime::{LoadError, sha256_hex};

const BEHAVIOUR: &str = "hostile.switchyard.dev/behaviour";

/// Serve `body` over HTTP on loopback for `requests` requests; returns the URL.
fn serve(body: Vec<u8>, requests: usize) -> (String, std::thread::JoinHandle<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/modules/m.wasm", l.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut served = 0;
        for stream in l.incoming().take(requests) {
            let mut s = stream.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .unwrap();
            s.write_all(&body).unwrap();
            served += 1;
        }
        served
    });
    (url, h)
}

#[test]
fn a_module_from_a_url_is_verified_and_cached_by_digest() {
    let _serial = serial();
    let env = env();
    let bytes = std::fs::read(switchyard::modules::EXAMPLE_SCHEDULER).unwrap();
    let digest = sha256_hex(&bytes);
    let (url, server) = serve(bytes.clone(), 1);
    let mut spec = builtin("sched", "-", Role::Scheduler);
    spec.source = ModuleSource::Url(url.clone());
    spec.sha256 = Some(format!("sha256:{digest}"));
    let active = env.registry.apply(spec.clone()).unwrap();
    assert_eq!(active.digest(), digest);
    assert_eq!(server.join().unwrap(), 1);
    assert!(
        env.dir
            .path()
            .join(format!("modules/sha256-{digest}.wasm"))
            .is_file()
    );
    // The server is gone; the cache serves the same digest.
    spec.generation = 2;
    env.registry.apply(spec).unwrap();
    assert_eq!(
        env.registry
            .binding("sched")
            .unwrap()
            .condition()
            .observed_generation,
        2
    );
}

#[test]
fn a_wrong_digest_or_a_missing_source_degrades_and_the_old_version_keeps_serving() {
    let _serial = serial();
    let env = env();
    let reg = &env.registry;
    let good = reg
        .apply(builtin("sched", "example-scheduler", Role::Scheduler))
        .unwrap();

    let bytes = std::fs::read(switchyard::modules::EXAMPLE_SCHEDULER).unwrap();
    let (url, _server) = serve(bytes, 1);
    let mut bad = builtin("sched", "-", Role::Scheduler);
    bad.source = ModuleSource::Url(url);
    bad.sha256 = Some("0".repeat(64));
    let e = reg.apply(bad).unwrap_err();
    assert!(matches!(e, LoadError::DigestMismatch { .. }), "{e}");
    let c = reg.binding("sched").unwrap().condition();
    assert_eq!((c.ready, c.reason.as_str()), (false, "DigestMismatch"));
    assert!(
        c.message
            .ends_with("the previously loaded version keeps serving"),
        "{}",
        c.message
    );
    assert_eq!(
        reg.binding("sched").unwrap().active().unwrap().digest(),
        good.digest()
    );

    let mut missing = builtin("sched", "-", Role::Scheduler);
    missing.source = ModuleSource::File("/nonexistent/m.wasm".into());
    let e = reg.apply(missing).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("module sched: cannot read file /nonexistent/m.wasm"),
        "{e}"
    );
    assert_eq!(
        reg.binding("sched").unwrap().condition().reason,
        "FetchFailed"
    );

    let mut unreachable = builtin("sched", "-", Role::Scheduler);
    unreachable.source = ModuleSource::Url("http://127.0.0.1:9/m.wasm".into());
    unreachable.sha256 = Some("a".repeat(64));
    assert!(matches!(
        reg.apply(unreachable),
        Err(LoadError::Fetch { .. })
    ));
    assert_eq!(
        reg.binding("sched").unwrap().active().unwrap().digest(),
        good.digest()
    );
}

#[test]
fn config_is_checked_against_the_module_schema() {
    let _serial = serial();
    let env = env();
    let mut spec = builtin("sched", "example-scheduler", Role::Scheduler);
    spec.config = serde_json::json!({"unknownLatencyUs": 0, "color": "red"});
    let e = env.registry.apply(spec.clone()).unwrap_err().to_string();
    assert!(
        e.starts_with("module sched: config does not fit the module's schema:"),
        "{e}"
    );
    assert!(
        e.contains("config.unknownLatencyUs: 0 is less than the minimum of 1"),
        "{e}"
    );
    assert!(e.contains("color"), "{e}");
    spec.config = serde_json::json!({"unknownLatencyUs": 500});
    env.registry.apply(spec).unwrap();
}

#[test]
fn not_a_component_is_refused_with_advice() {
    let _serial = serial();
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let mut spec = builtin("core", "-", Role::Scheduler);
    spec.source = ModuleSource::File(core);
    let e = env.registry.apply(spec).unwrap_err().to_string();
    assert!(e.contains("is not a WebAssembly component: it is a core WebAssembly module; build it for wasm32-wasip2"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_lets_calls_in_flight_finish_on_the_old_version() {
    let _serial = serial();
    let env = env();
    let reg = env.registry.clone();
    let mut v1 = builtin("proxy", "hostile-proxy", Role::ServiceProxy);
    v1.limits.deadline = Duration::from_secs(2);
    let old = reg.apply_async(v1).await.unwrap();

    // A call that takes 300 ms starts on v1 ...
    let r = reg.clone();
    let slow = tokio::spawn(async move {
        r.render_service(
            "proxy",
            ctx(),
            service("slow", 5, &[(BEHAVIOUR, "busy:300")]),
            vec![],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ... and v2 takes over while it runs.
    let new = reg
        .apply_async(builtin("proxy", "proxy-nftables", Role::ServiceProxy))
        .await
        .unwrap();
    assert_ne!(old.digest(), new.digest());
    let fresh = reg
        .render_service("proxy", ctx(), service("web", 6, &[]), endpoints(2))
        .await
        .unwrap();
    assert_eq!(
        fresh.digest,
        new.digest(),
        "new calls go to the new version at once"
    );
    let finished = slow.await.unwrap().unwrap();
    assert_eq!(
        finished.digest,
        old.digest(),
        "the call in flight finished on the old version"
    );
    let c = reg.binding("proxy").unwrap().condition();
    assert!(
        c.ready && c.message.contains("replaced digest"),
        "{}",
        c.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_calls_errors_and_latency() {
    let _serial = serial();
    let env = env();
    let reg = env.registry.clone();
    reg.apply_async(builtin("proxy", "hostile-proxy", Role::ServiceProxy))
        .await
        .unwrap();
    for i in 0..20 {
        reg.render_service("proxy", ctx(), service("web", i, &[]), endpoints(1))
            .await
            .unwrap();
    }
    reg.render_service(
        "proxy",
        ctx(),
        service("bad", 99, &[(BEHAVIOUR, "panic")]),
        vec![],
    )
    .await
    .unwrap_err();
    let s = reg
        .status()
        .into_iter()
        .find(|s| s.name == "proxy")
        .unwrap();
    assert_eq!((s.stats.calls, s.stats.errors), (21, 1));
    assert!(s.stats.latency_p50_us.unwrap() > 0);
    assert!(s.stats.latency_p99_us.unwrap() >= s.stats.latency_p50_us.unwrap());
    assert_eq!(s.module.as_deref(), Some("hostile-proxy"));
    let last = s.stats.last_error.unwrap();
    assert!(
        last.message.contains("panics on purpose") && last.at > 0,
        "{}",
        last.message
    );
    let json = serde_json::to_value(reg.status()).unwrap();
    assert_eq!(json[0]["condition"]["reason"], "Loaded");
    assert_eq!(json[0]["errors"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_priority_module_serves_a_role() {
    let _serial = serial();
    let env = env();
    let reg = env.registry.clone();
    let mut a = builtin("a", "proxy-nftables", Role::ServiceProxy);
    a.priority = 10;
    reg.apply_async(a).await.unwrap();
    reg.apply_async(builtin("b", "hostile-proxy", Role::ServiceProxy))
        .await
        .unwrap();
    assert_eq!(reg.active_for(Role::ServiceProxy).unwrap().spec.name, "a");
    assert!(reg.remove("a"));
    assert_eq!(reg.active_for(Role::ServiceProxy).unwrap().spec.name, "b");
    assert!(reg.active_for(Role::Cni).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_index_is_checked() {
    let _serial = serial();
    use switchyard::contract::bindings::imports::switchyard::plugin::types::{IpAddress, Protocol};
    use switchyard::contract::bindings::scheduler::{Backend, Connection};
    let env = env();
    env.registry
        .apply_async(builtin("ll", "example-scheduler", Role::Scheduler))
        .await
        .unwrap();
    let conn = Connection {
        client: IpAddress::Ipv4((10, 244, 2, 9)),
        client_port: 40000,
        service_address: IpAddress::Ipv4((10, 96, 0, 10)),
        service_port: 80,
        protocol: Protocol::Tcp,
        service: "default/web".into(),
    };
    let b = |last: u8, lat: u32| Backend {
        address: IpAddress::Ipv4((10, 244, 1, last)),
        port: 8080,
        weight: 1,
        active_connections: 0,
        ready: true,
        latency_us: Some(lat),
        node: None,
        zone: None,
    };
    assert_eq!(
        env.registry
            .pick("ll", conn.clone(), vec![b(2, 900), b(3, 100)])
            .await
            .unwrap(),
        1
    );
    let e = env.registry.pick("ll", conn, vec![]).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("service default/web has no ready backend"),
        "{e}"
    );
}
