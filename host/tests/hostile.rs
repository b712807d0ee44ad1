//! The hostile module suite: modules that loop, hoard memory, recurse, trap,
//! panic, flood, return huge or invalid plans, break their grants, call the
//! host with bad arguments, or do not have the right shape. For each, the
//! agent keeps serving, the call fails within twice its deadline, memory stays
//! bounded, the error names the module and the cause and is recorded in the
//! module's status, and under KeepLastGood the last good plan stays in force.

// `serial()` is held for a whole test on purpose: it keeps the tests that
// assert on timing from running at once; each test has its own runtime.
#![allow(clippy::await_holding_lock)]

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::cni::journal::Journal;
use switchyard::cni::store::AttachmentStore;
use switchyard::cni::{CniService, StickyPods};
use switchyard::contract::bindings::imports::switchyard::plugin::cni_types::CniRequest;
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::model::{FailurePolicy, ObjectKind, ObjectRef, Role};
use switchyard::plan::PlanStore;
use switchyard::registry::source::ModuleSource;
use switchyard::runtime::{
    Attachment, CallErrorKind, CniVerb, Effect, HostServices, Limits, LoadError, Runtime,
    RuntimeConfig,
};

const BEHAVIOUR: &str = "hostile.switchyard.dev/behaviour";

fn kind_name(k: &CallErrorKind) -> &'static str {
    match k {
        CallErrorKind::Deadline { .. } => "deadline",
        CallErrorKind::Memory { .. } => "memory",
        CallErrorKind::Fuel { .. } => "fuel",
        CallErrorKind::StackOverflow => "stack",
        CallErrorKind::Trap { .. } => "trap",
        CallErrorKind::Output { .. } => "output",
        CallErrorKind::LogBudget { .. } => "log",
        CallErrorKind::HostCall { .. } => "host-call",
        CallErrorKind::Module { .. } => "module",
        CallErrorKind::InvalidResult { .. } => "invalid",
        CallErrorKind::Instantiate { .. } => "instantiate",
        CallErrorKind::Internal { .. } => "internal",
    }
}

/// Every render-time misbehaviour, with the cause the host must report and a
/// phrase its message must contain.
const CASES: &[(&str, &str, &str)] = &[
    ("infinite-loop", "deadline", "deadline of 100 ms exceeded"),
    ("memory-bomb", "memory", "memory limit of 64 MiB exceeded"),
    ("deep-recursion", "stack", "call stack exhausted"),
    ("trap", "trap", "unreachable"),
    ("panic", "trap", "panics on purpose"),
    ("huge-plan", "memory", "memory limit of 64 MiB exceeded"),
    ("wide-plan", "output", "more than 16 MiB of data"),
    ("huge-string", "output", "more than 16 MiB of data"),
    // Within the output cap, the message is cut to 4 KiB before it can
    // reach status, the API or the node status file.
    ("big-error", "module", "of 15728640 bytes cut)"),
    ("long-name", "invalid", "chain name must be 1 to 64 bytes"),
    (
        "log-flood",
        "log",
        "logged more than 1 MiB or 10000 records",
    ),
    ("stdout-flood", "deadline", "deadline of 100 ms exceeded"),
    // A guest that waits runs no code for the epoch to interrupt: its
    // timers end at the call's deadline.
    ("sleep", "deadline", "deadline of 100 ms exceeded"),
    ("sleep-loop", "deadline", "deadline of 100 ms exceeded"),
    ("host-call-loop", "deadline", "deadline of 100 ms exceeded"),
    ("grant-violation", "invalid", "not granted routes"),
    (
        "ipvs-plan",
        "invalid",
        "IPVS services are not applied by this agent's datapath yet",
    ),
    (
        "dangling-reference",
        "invalid",
        "\"nowhere\" is not defined",
    ),
    (
        "foreign-vip",
        "invalid",
        "element of service-chains: 8.8.8.8 is not one of this Service's addresses",
    ),
    (
        "foreign-port",
        "invalid",
        "element of service-chains: 53/udp is not a port of this Service (80/tcp)",
    ),
    (
        "foreign-backend",
        "invalid",
        "DNAT to 10.9.9.9: 10.9.9.9 is not an endpoint of this Service",
    ),
    (
        "foreign-endpoint-port",
        "invalid",
        "DNAT to 10.244.1.2 port 22: 22/tcp is not a port of this Service's endpoints (8080/tcp)",
    ),
    (
        "concat-overlap",
        "invalid",
        "this element of interval set ov overlaps item",
    ),
    (
        "foreign-backend-map",
        "invalid",
        "element of backends4-tcp: 10.9.9.9 is not an endpoint of this Service",
    ),
    (
        "foreign-hairpin",
        "invalid",
        "element of hairpin4: 10.9.9.9 is not an endpoint of this Service",
    ),
    (
        "foreign-ipvs",
        "invalid",
        "IPVS service: 10.96.0.250 is not one of this Service's addresses",
    ),
    (
        "other-table",
        "invalid",
        "element for \"ingress-allow-all4\", which is not defined",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_render_fails_cleanly_and_the_agent_keeps_serving() {
    let _serial = serial();
    let env = env();
    let reg = &env.registry;
    reg.apply_async(builtin("hostile", "hostile-proxy", Role::ServiceProxy))
        .await
        .unwrap();
    reg.apply_async(builtin("proxy", "proxy-nftables", Role::ServiceProxy))
        .await
        .unwrap();
    let deadline = Limits::default().deadline;

    // Warm up, then take the memory baseline.
    reg.render_service("hostile", ctx(), service("warm", 1, &[]), endpoints(1))
        .await
        .unwrap();
    let baseline = rss();
    let mut peak = baseline;

    for (i, (behaviour, want, phrase)) in CASES.iter().enumerate() {
        let svc = service(&format!("s{i}"), 10 + i as u8, &[(BEHAVIOUR, behaviour)]);
        let t = Instant::now();
        let err = reg
            .render_service("hostile", ctx(), svc, endpoints(2))
            .await
            .unwrap_err();
        let took = t.elapsed();
        peak = peak.max(rss());
        eprintln!("{behaviour:>20}: {} after {took:?}", kind_name(&err.kind));
        let msg = err.to_string();
        assert_eq!(kind_name(&err.kind), *want, "{behaviour}: {msg}");
        assert!(
            msg.contains(phrase),
            "{behaviour}: message should contain {phrase:?}: {msg}"
        );
        assert!(
            msg.starts_with("module hostile: render-service for Service default/s"),
            "{behaviour}: {msg}"
        );
        assert!(
            took <= 2 * deadline,
            "{behaviour}: failed after {took:?}, more than twice the {deadline:?} deadline"
        );

        // The error is recorded.
        let status = reg
            .status()
            .into_iter()
            .find(|s| s.name == "hostile")
            .unwrap();
        assert_eq!(status.stats.errors, i as u64 + 1, "{behaviour}");
        assert!(
            status
                .stats
                .last_error
                .as_ref()
                .unwrap()
                .message
                .contains(phrase),
            "{behaviour}"
        );
        assert!(
            status.condition.ready,
            "a failing call does not unload the module"
        );

        // The agent keeps serving: the same module renders a good Service, and so does another module.
        let ok = reg
            .render_service("hostile", ctx(), service("fine", 2, &[]), endpoints(1))
            .await;
        assert!(
            ok.is_ok(),
            "{behaviour}: the module stopped serving: {ok:?}"
        );
        let ok = reg
            .render_service("proxy", ctx(), service("web", 3, &[]), endpoints(3))
            .await;
        assert!(
            ok.is_ok(),
            "{behaviour}: another module stopped serving: {ok:?}"
        );
    }

    // Memory stayed bounded: the bombs were capped at 64 MiB of guest memory,
    // and what they held was returned when their stores were dropped.
    let grown = rss().saturating_sub(baseline);
    assert!(
        peak - baseline < 512 << 20,
        "peak RSS grew by {} MiB",
        (peak - baseline) >> 20
    );
    assert!(
        grown < 256 << 20,
        "RSS grew by {} MiB and stayed",
        grown >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_plan_that_fits_in_memory_still_hits_the_output_cap() {
    let _serial = serial();
    // With a 512 MiB memory cap the module can build its two million items;
    // the host still refuses to copy more than 16 MiB out of it.
    let env = env();
    let mut spec = builtin("roomy", "hostile-proxy", Role::ServiceProxy);
    spec.limits.memory_bytes = 512 << 20;
    spec.limits.deadline = Duration::from_secs(2);
    env.registry.apply_async(spec).await.unwrap();
    let before = rss();
    let err = env
        .registry
        .render_service(
            "roomy",
            ctx(),
            service("big", 9, &[(BEHAVIOUR, "huge-plan")]),
            vec![],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, CallErrorKind::Output { limit } if limit == 16 << 20),
        "{err}"
    );
    assert!(rss().saturating_sub(before) < 600 << 20);
}

/// A module that fails every call is loaded but does not serve: after
/// `FAILING_CALLS` failures in a row its condition is Degraded, and one
/// good call makes it Ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_failing_every_call_is_reported_degraded() {
    let _serial = serial();
    let env = env();
    let reg = &env.registry;
    reg.apply_async(builtin("failing", "hostile-proxy", Role::ServiceProxy))
        .await
        .unwrap();
    let condition = || {
        reg.status()
            .into_iter()
            .find(|s| s.name == "failing")
            .unwrap()
            .condition
    };
    for i in 0..switchyard::registry::FAILING_CALLS {
        assert!(condition().ready, "after {i} failures");
        let svc = service("web", 7, &[(BEHAVIOUR, "panic")]);
        reg.render_service("failing", ctx(), svc, endpoints(1))
            .await
            .unwrap_err();
    }
    let c = condition();
    assert!(!c.ready, "{c:?}");
    assert_eq!(c.reason, "CallsFailing");
    assert!(
        c.message.contains("the last 10 calls failed") && c.message.contains("panics on purpose"),
        "{}",
        c.message
    );
    // As the admin API's /metrics says it.
    let metrics = switchyard::registry::metrics::text(&reg.status());
    for line in [
        "switchyard_module_ready{module=\"failing\",role=\"service-proxy\",reason=\"CallsFailing\"} 0",
        "switchyard_module_consecutive_call_errors{module=\"failing\",role=\"service-proxy\"} 10",
        "switchyard_module_call_errors_total{module=\"failing\",role=\"service-proxy\"} 10",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }
    reg.render_service("failing", ctx(), service("web", 7, &[]), endpoints(1))
        .await
        .unwrap();
    let c = condition();
    assert!(c.ready && c.reason == "Loaded", "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_plan_stays_in_force_under_keep_last_good() {
    let _serial = serial();
    let env = env();
    let mut spec = builtin("hostile", "hostile-proxy", Role::ServiceProxy);
    spec.failure_policy = FailurePolicy::KeepLastGood;
    env.registry.apply_async(spec.clone()).await.unwrap();
    let object = ObjectRef::new(ObjectKind::Service, "default", "web");
    let mut store = PlanStore::new();

    let good = env
        .registry
        .render_service("hostile", ctx(), service("web", 7, &[]), endpoints(2))
        .await
        .unwrap();
    store.rendered(good.clone()).unwrap();

    for (behaviour, _, _) in CASES {
        let svc = service("web", 7, &[(BEHAVIOUR, behaviour)]);
        let err = env
            .registry
            .render_service("hostile", ctx(), svc, endpoints(2))
            .await
            .unwrap_err();
        let change = store.failed(&object, err.to_string(), spec.failure_policy, None);
        assert!(
            change.is_noop(),
            "{behaviour}: the datapath must not change"
        );
        let entry = store.entry(&object).unwrap();
        assert_eq!(
            entry.installed.as_deref(),
            Some(&good),
            "{behaviour}: the last good plan must stay installed"
        );
        assert!(
            entry
                .failure
                .as_ref()
                .unwrap()
                .error
                .contains("module hostile"),
            "{behaviour}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn guest_work_never_blocks_the_executor() {
    let _serial = serial();
    // One executor thread: if a guest ran on it, the timer below could not fire
    // until the guest's 300 ms deadline.
    let env = env();
    let mut spec = builtin("hostile", "hostile-proxy", Role::ServiceProxy);
    spec.limits.deadline = Duration::from_millis(300);
    env.registry.apply_async(spec).await.unwrap();
    let reg = env.registry.clone();
    let call = tokio::spawn(async move {
        reg.render_service(
            "hostile",
            ctx(),
            service("spin", 4, &[(BEHAVIOUR, "infinite-loop")]),
            vec![],
        )
        .await
    });
    tokio::task::yield_now().await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let slept = t.elapsed();
    assert!(
        slept < Duration::from_millis(150),
        "the timer fired after {slept:?}"
    );
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(err.kind, CallErrorKind::Deadline { limit_ms: 300 }),
        "{err}"
    );
}

fn cni_request(container: &str, hostile: &str) -> CniRequest {
    CniRequest {
        container_id: container.into(),
        netns: format!("/var/run/netns/{container}"),
        ifname: "eth0".into(),
        args: vec![("HOSTILE".into(), hostile.into())],
        network: "test".into(),
        cni_version: "1.1.0".into(),
        network_config: "{}".into(),
        prev_result: None,
    }
}

#[test]
fn bad_host_calls_are_refused_with_the_reason() {
    let _serial = serial();
    let env = env();
    let active = env
        .registry
        .prepare(&builtin("cni", "hostile-cni", Role::Cni))
        .unwrap();
    let services = env.registry.services().clone();
    let cases = [
        (
            "invalid-cidr",
            "links.add-address refused: invalid CIDR 10.0.0.1/40: the prefix length must be at most 32",
        ),
        (
            "unknown-pool",
            "ipam.allocate refused: unknown pool \"no-such-pool\" (this node has: v4, v6)",
        ),
        ("ignore-errors", "ipam.allocate refused: unknown pool"),
        (
            "foreign-interface",
            "links.delete-link refused: interface \"eth0\" in the node namespace is outside the grant (allowed: sy*)",
        ),
        (
            "pod-foreign-interface",
            "links.add-address refused: interface \"eth1\" in the pod namespace is outside the grant",
        ),
        (
            "vip-address",
            "links.add-address refused: 10.96.0.10 is not an address the IPAM ledger gave this attachment",
        ),
        (
            "node-address",
            "links.add-address refused: 10.96.0.1 is not a pool's gateway",
        ),
        (
            "bad-sysctl",
            "links.set-sysctl refused: sysctl \"kernel.panic\" is not a per-interface key",
        ),
        (
            "route-host-bits",
            "links.add-route refused: invalid CIDR 10.0.0.1/8: host bits are set (did you mean 10.0.0.0/8?)",
        ),
    ];
    for (i, (behaviour, phrase)) in cases.iter().enumerate() {
        let container = format!("c{i}");
        let mut s = active.session(env.registry.runtime(), services.clone());
        s.set_attachment(Some(Attachment {
            container_id: container.clone(),
            ifname: "eth0".into(),
            netns: Some(format!("/var/run/netns/{container}").into()),
            ..Attachment::default()
        }));
        let t = Instant::now();
        let err = s
            .cni(CniVerb::Add, &cni_request(&container, behaviour), "{}")
            .unwrap_err();
        assert!(t.elapsed() < 2 * Limits::default().deadline);
        assert!(
            matches!(err.kind, CallErrorKind::HostCall { .. }),
            "{behaviour}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(phrase), "{behaviour}: {msg}");
        assert!(
            msg.starts_with(&format!("module cni: add for container {container} eth0")),
            "{msg}"
        );
    }
    // Nothing reached the datapath, and no address was handed out.
    assert!(env.links.calls().is_empty(), "{:?}", env.links.calls());
    assert!(env.ledger.all().unwrap().is_empty());

    // The same module, behaving, does real work through the host, journaled.
    let mut s = active.session(env.registry.runtime(), services);
    s.set_attachment(Some(Attachment {
        container_id: "good".into(),
        ifname: "eth0".into(),
        netns: Some("/var/run/netns/good".into()),
        ..Attachment::default()
    }));
    let result = s
        .cni(CniVerb::Add, &cni_request("good", "none"), "{}")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(result.ips.len(), 1);
    let report = s.report();
    assert!(
        matches!(
            report.effects.as_slice(),
            [
                Effect::Allocated { .. },
                Effect::BridgeEnsured { .. },
                Effect::VethCreated { .. },
                Effect::AddressAdded { pod: true, .. }
            ]
        ),
        "{:?}",
        report.effects
    );
    assert_eq!(env.ledger.all().unwrap().len(), 1);
}

#[test]
fn host_calls_outside_a_cni_call_are_refused() {
    let _serial = serial();
    // ipam and links serve only the attachment of a CNI call in progress.
    let env = env();
    let active = env
        .registry
        .prepare(&builtin("cni", "hostile-cni", Role::Cni))
        .unwrap();
    let mut s = active.session(env.registry.runtime(), env.registry.services().clone());
    let err = s
        .cni(CniVerb::Add, &cni_request("x", "none"), "{}")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("ipam.pools refused: only available while serving a CNI call"),
        "{err}"
    );
}

#[test]
fn modules_of_the_wrong_shape_are_refused_at_load() {
    let _serial = serial();
    let env = env();
    let reg = &env.registry;
    let e = reg
        .apply(builtin("nd", "hostile-no-describe", Role::ServiceProxy))
        .unwrap_err();
    assert!(matches!(e, LoadError::WrongWorld { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("module nd does not export the service-proxy world")
            && e.to_string().contains("describe"),
        "{e}"
    );

    let e = reg
        .apply(builtin("ww", "hostile-wrong-world", Role::ServiceProxy))
        .unwrap_err();
    assert!(
        matches!(e, LoadError::WrongWorld { .. }) && e.to_string().contains("render-service"),
        "{e}"
    );
    let e = reg
        .apply(builtin("ww2", "hostile-wrong-world", Role::Scheduler))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "module ww2 describes itself as role service-proxy, but it is bound to role scheduler"
    );

    let e = reg
        .apply(builtin("cni-as-proxy", "hostile-cni", Role::ServiceProxy))
        .unwrap_err();
    assert!(matches!(e, LoadError::ForbiddenImport { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("which the service-proxy role does not provide"),
        "{e}"
    );

    // A module built for a newer contract: the same module with its probes
    // import renamed to version 0.2.0 (a same-length edit of the binary).
    let (_, path) = switchyard::modules::ALL
        .iter()
        .find(|(n, _)| *n == "hostile-proxy")
        .unwrap();
    let bytes = std::fs::read(path).unwrap();
    let (from, to) = (
        b"switchyard:plugin/probes@0.1.0",
        b"switchyard:plugin/probes@0.2.0",
    );
    let mut newer = vec![];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            newer.extend_from_slice(to);
            i += from.len();
        } else {
            newer.push(bytes[i]);
            i += 1;
        }
    }
    assert!(newer != bytes, "the module imports the probes interface");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("newer.wasm");
    std::fs::write(&file, &newer).unwrap();
    let mut spec = builtin("newer", "-", Role::ServiceProxy);
    spec.source = ModuleSource::File(file);
    let e = reg.apply(spec).unwrap_err();
    assert!(matches!(e, LoadError::ContractVersion { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("was built for contract version 0.2.0")
            && e.to_string()
                .contains("this agent speaks switchyard:plugin@0.1.0"),
        "{e}"
    );

    let t = Instant::now();
    let e = reg
        .apply(builtin("slow", "hostile-slow-describe", Role::Scheduler))
        .unwrap_err();
    assert!(t.elapsed() < 2 * Limits::default().deadline + Duration::from_millis(50));
    match &e {
        LoadError::Describe { source, .. } => {
            assert!(matches!(source.kind, CallErrorKind::Deadline { .. }), "{e}")
        }
        other => panic!("{other}"),
    }
    // Each failure is the binding's status, with a reason.
    let status = reg.status();
    let reason = |n: &str| {
        status
            .iter()
            .find(|s| s.name == n)
            .unwrap()
            .condition
            .reason
            .clone()
    };
    assert_eq!(reason("nd"), "WrongWorld");
    assert_eq!(reason("ww2"), "RoleMismatch");
    assert_eq!(reason("cni-as-proxy"), "ForbiddenImport");
    assert_eq!(reason("slow"), "DescribeFailed");
    assert!(status.iter().all(|s| !s.condition.ready));
}

/// A valid component holding one core module of `funcs` functions of
/// `adds` additions each: as slow to compile as it is big.
fn big_component(funcs: u32, adds: u32) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // One type, (i32) -> i32.
    section(1, &[1, 0x60, 1, 0x7f, 1, 0x7f], &mut m);
    let mut f = vec![];
    leb(funcs as u64, &mut f);
    f.extend(std::iter::repeat_n(0u8, funcs as usize));
    section(3, &f, &mut m);
    // Each body: no locals; `local.get 0; i32.const 1; i32.add; local.set 0`
    // `adds` times; `local.get 0; end`.
    let mut body = vec![0u8];
    for _ in 0..adds {
        body.extend_from_slice(&[0x20, 0, 0x41, 1, 0x6a, 0x21, 0]);
    }
    body.extend_from_slice(&[0x20, 0, 0x0b]);
    let mut code = vec![];
    leb(funcs as u64, &mut code);
    for _ in 0..funcs {
        leb(body.len() as u64, &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut m);
    // The component: its header, then the core module section.
    let mut c = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &m, &mut c);
    c
}

/// Compiling cannot be interrupted, so a module that takes longer than the
/// compile deadline is refused at the deadline while its compile finishes
/// in the background, and the next module compiles meanwhile in the other
/// slot. With both slots held, a compile waits for one within its own
/// deadline and is refused saying so. (About 1.3 s of compiling per MiB of
/// these modules on this machine; a real module compiles in ~0.1 s.)
#[test]
fn a_module_that_compiles_too_long_is_refused_at_its_deadline() {
    let _serial = serial();
    let deadline = Duration::from_millis(1000);
    let runtime = Runtime::with_config(RuntimeConfig {
        compile_deadline: deadline,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let late = |name: &str, funcs: u32| {
        let big = big_component(funcs, 150);
        let t = Instant::now();
        let e = runtime
            .compile(name, "big.wasm", &big)
            .map(|_| ())
            .unwrap_err();
        let took = t.elapsed();
        eprintln!("{name}: {} bytes refused after {took:?}: {e}", big.len());
        assert!(matches!(e, LoadError::CompileDeadline { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "module {name}: compiling big.wasm ({} bytes) did not finish within the compile deadline of 1000 ms",
                big.len()
            )),
            "{e}"
        );
        assert!(took < deadline + Duration::from_millis(250), "{took:?}");
        e.to_string()
    };
    // About 3 MiB of code: seconds of compiling.
    let e = late("big", 3000);
    assert!(!e.contains("never started"), "{e}");
    assert_eq!(runtime.compiles_running(), 1, "it runs on");

    // A real module compiles in the other slot meanwhile, in time.
    let (_, path) = switchyard::modules::ALL
        .iter()
        .find(|(n, _)| *n == "hostile-proxy")
        .unwrap();
    let small = std::fs::read(path).unwrap();
    runtime.compile("small", "small.wasm", &small).unwrap();

    // A second overlong module takes the other slot; a third never starts.
    late("big2", 3001);
    assert_eq!(runtime.compiles_running(), 2);
    let e = late("big3", 3002);
    assert!(
        e.contains(
            "(it never started: 2 compiles of earlier modules still run past their deadlines)"
        ),
        "{e}"
    );
    // The abandoned compiles end on their own and give their slots back.
    let t = Instant::now();
    while runtime.compiles_running() > 0 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(runtime.compiles_running(), 0);
    runtime.compile("small", "small.wasm", &small).unwrap();
}

#[test]
fn fuel_bounds_work_when_a_module_is_metered() {
    let _serial = serial();
    // A node that does not meter fuel refuses a fuel limit it cannot enforce.
    let e = env().registry.prepare(&{
        let mut s = builtin("metered", "hostile-proxy", Role::ServiceProxy);
        s.limits.fuel = Some(5_000_000);
        s
    });
    assert!(
        e.unwrap_err()
            .to_string()
            .contains("this agent does not meter fuel")
    );

    let metered = Runtime::with_config(RuntimeConfig {
        fuel: true,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let env = env_on(metered);
    let mut spec = builtin("metered", "hostile-proxy", Role::ServiceProxy);
    spec.limits.fuel = Some(5_000_000);
    let active = env.registry.prepare(&spec).unwrap();
    let mut s = active.session(env.registry.runtime(), HostServices::default());
    let err = s
        .render_service(
            &ctx(),
            &service("f", 1, &[(BEHAVIOUR, "infinite-loop")]),
            &[],
            "{}",
        )
        .unwrap_err();
    assert!(
        matches!(err.kind, CallErrorKind::Fuel { limit: 5_000_000 }),
        "{err}"
    );
    // An honest render fits easily.
    assert!(
        s.render_service(&ctx(), &service("f", 1, &[]), &endpoints(3), "{}")
            .unwrap()
            .is_ok()
    );
}

/// A ClusterIP Service like [`service`], with more of everything a proxy
/// module renders: external and LoadBalancer IPs, a nodePort, a UDP port,
/// both families.
fn big_service(name: &str) -> Service {
    let mut s = service(name, 20, &[]);
    s.service_type = ServiceType::LoadBalancer;
    s.external_ips = vec![IpAddress::Ipv4((192, 0, 2, 10))];
    s.load_balancer_ips = vec![IpAddress::Ipv4((192, 0, 2, 20))];
    s.cluster_ips
        .push(IpAddress::Ipv6((0xfd00, 0x96, 0, 0, 0, 0, 0, 0x20)));
    s.ip_families = vec![IpFamily::Ipv4, IpFamily::Ipv6];
    s.ip_family_policy = IpFamilyPolicy::RequireDualStack;
    s.ports[0].node_port = Some(30080);
    s.ports.push(ServicePort {
        name: "dns".into(),
        protocol: Protocol::Udp,
        port: 53,
        target_port: TargetPort::Number(5353),
        node_port: Some(30053),
    });
    s
}

fn dual_endpoints(n: u8) -> Vec<Endpoint> {
    let mut eps = endpoints(n);
    for (i, e) in eps.clone().into_iter().enumerate() {
        let mut v6 = e.clone();
        v6.address = IpAddress::Ipv6((0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2 + i as u16));
        eps.push(v6);
    }
    for e in &mut eps {
        e.ports.push(EndpointPort {
            name: "dns".into(),
            port: 5353,
            protocol: Protocol::Udp,
        });
    }
    eps[1].node = Some("node-2".into());
    eps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_module_renders_only_its_own_service() {
    let _serial = serial();
    let env = env();
    let reg = &env.registry;
    reg.apply_async(builtin("hostile", "hostile-proxy", Role::ServiceProxy))
        .await
        .unwrap();
    reg.apply_async(builtin("proxy", "proxy-nftables", Role::ServiceProxy))
        .await
        .unwrap();

    // Issue 18's render: Service A sends 8.8.8.8:53 to its own endpoint.
    let a = service("a", 53, &[(BEHAVIOUR, "foreign-vip")]);
    let err = reg
        .render_service("hostile", ctx(), a, endpoints(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, CallErrorKind::InvalidResult { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "module hostile: render-service for Service default/a returned an invalid result: \
             item 1 (dispatch): element of service-chains: 8.8.8.8 is not one of this Service's addresses (10.96.0.53)"
        ),
        "{msg}"
    );
    // The error is the module's, in its status.
    let status = reg
        .status()
        .into_iter()
        .find(|s| s.name == "hostile")
        .unwrap();
    assert!(
        status
            .stats
            .last_error
            .unwrap()
            .message
            .contains("8.8.8.8 is not one of this Service's addresses"),
    );

    // The built-in proxy module names only what each Service owns, in
    // every shape it renders.
    let mut ctx2 = ctx();
    ctx2.families = vec![IpFamily::Ipv4, IpFamily::Ipv6];
    ctx2.cluster_cidrs.push(IpCidr {
        address: IpAddress::Ipv6((0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0)),
        prefix_len: 56,
    });
    let mut shapes = vec![];
    for scheduler in ["random", "rr", "sh", "dh"] {
        let mut s = big_service(&format!("lb-{scheduler}"));
        s.annotations = vec![("switchyard.dev/scheduler".into(), scheduler.into())];
        shapes.push((s, dual_endpoints(3)));
    }
    let mut local = big_service("local");
    local.external_traffic_policy = TrafficPolicy::Local;
    shapes.push((local, dual_endpoints(2)));
    let mut sticky = big_service("sticky");
    sticky.session_affinity_timeout = Some(600);
    shapes.push((sticky, dual_endpoints(2)));
    let mut weighted = dual_endpoints(3);
    weighted[0].weight = 5;
    shapes.push((big_service("weighted"), weighted));
    shapes.push((big_service("empty"), vec![]));
    for (s, eps) in shapes {
        let name = s.name.clone();
        let f = reg
            .render_service("proxy", ctx2.clone(), s, eps)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!f.items.is_empty(), "{name}");
    }
}

fn pod(ns: &str, name: &str, node: &str, ip: (u8, u8, u8, u8)) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        labels: vec![("app".into(), name.into())],
        ips: vec![IpAddress::Ipv4(ip)],
        node: node.into(),
        host_network: false,
        ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        phase: PodPhase::Running,
        ready: true,
    }
}

/// `y/p`, selecting y/p1 (10.244.1.10, on this node) and y/p2 (10.244.2.10,
/// on node-2), with an ingress rule from namespace x on 80/tcp and the
/// named port `http`, and an egress rule to DNS outside 10.0.0.0/8.
fn policy_y(annotations: &[(&str, &str)]) -> Policy {
    let cidr = |a: (u8, u8, u8, u8), l: u8| IpCidr {
        address: IpAddress::Ipv4(a),
        prefix_len: l,
    };
    Policy {
        namespace: "y".into(),
        name: "p".into(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        selected: vec![
            pod("y", "p1", "node-1", (10, 244, 1, 10)),
            pod("y", "p2", "node-2", (10, 244, 2, 10)),
        ],
        directions: vec![PolicyDirection::Ingress, PolicyDirection::Egress],
        ingress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                description: "pods in namespace x".into(),
                addresses: AddressSet {
                    cidrs: vec![cidr((10, 244, 1, 20), 32), cidr((10, 244, 1, 21), 32)],
                    except: vec![],
                },
            }],
            ports: vec![PortRange {
                protocol: Protocol::Tcp,
                first: 80,
                last: 80,
            }],
            named_ports: vec![NamedPort {
                protocol: Protocol::Tcp,
                name: "http".into(),
                targets: vec![
                    PortTarget {
                        address: IpAddress::Ipv4((10, 244, 1, 10)),
                        port: 8080,
                    },
                    PortTarget {
                        address: IpAddress::Ipv4((10, 244, 2, 10)),
                        port: 8080,
                    },
                ],
            }],
        }],
        egress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                description: "ipBlock 0.0.0.0/0 except 10.0.0.0/8".into(),
                addresses: AddressSet {
                    cidrs: vec![cidr((0, 0, 0, 0), 0)],
                    except: vec![cidr((10, 0, 0, 0), 8)],
                },
            }],
            ports: vec![PortRange {
                protocol: Protocol::Udp,
                first: 53,
                last: 53,
            }],
            named_ports: vec![],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_module_renders_only_the_pods_its_policy_selects_here() {
    let _serial = serial();
    let env = env();
    let reg = &env.registry;
    for (name, module) in [
        ("hostile-policy", "hostile-policy"),
        ("kubernetes", "policy-kubernetes"),
        ("isolation", "example-namespace-isolation"),
        ("allowlist", "example-egress-allowlist"),
    ] {
        reg.apply_async(builtin(name, module, Role::NetworkPolicy))
            .await
            .unwrap();
    }
    let render = |module: &'static str, p: Policy| {
        let reg = env.registry.clone();
        async move {
            reg.render_policies(
                module,
                ctx(),
                ObjectKind::WasmNetworkPolicy,
                vec![(p, None)],
            )
            .await
            .unwrap()
            .pop()
            .unwrap()
        }
    };
    let prefix = "module hostile-policy: render-policy for WasmNetworkPolicy y/p returned an invalid result: ";
    let target = "hostile.switchyard.dev/target";
    // x/a and x/b are 10.244.1.20 and .21, on this node; y/p does not
    // select them.
    for (behaviour, victim, want) in [
        (
            "open-target",
            "10.244.1.20",
            "item 2 (hostile): element of ingress-allow-all4: 10.244.1.20 is not a pod this policy selects on this node (10.244.1.10)",
        ),
        (
            "isolate-target",
            "10.244.1.21",
            "item 2 (hostile): element of ingress-isolated4: 10.244.1.21 is not a pod this policy selects on this node (10.244.1.10)",
        ),
        (
            "every-node",
            "",
            "item 2 (ingress/isolate/10.244.2.10): element of ingress-isolated4: 10.244.2.10 is not a pod this policy selects on this node",
        ),
        (
            "prefix-pod",
            "",
            "item 2 (hostile): element of ingress-allow-all4: 10.0.0.0/8 is a prefix; this position takes a single address",
        ),
        (
            "other-table",
            "",
            "item 2 (hostile): element for \"service-ips\", which is not defined in this fragment or by the host",
        ),
    ] {
        let p = policy_y(&[(BEHAVIOUR, behaviour), (target, victim)]);
        let err = render("hostile-policy", p).await.unwrap_err();
        assert!(
            matches!(err.kind, CallErrorKind::InvalidResult { .. }),
            "{behaviour}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{prefix}{want}")),
            "{behaviour}: {msg}"
        );
    }

    // The same module behaving, and every built-in policy module, name
    // only y/p1 in the pod position.
    for module in ["hostile-policy", "kubernetes", "isolation", "allowlist"] {
        let f = render(module, policy_y(&[]))
            .await
            .unwrap_or_else(|e| panic!("{module}: {e}"));
        assert!(!f.items.is_empty(), "{module}");
        for i in &f.items {
            let PlanBody::NftElement(e) = &i.body else {
                panic!("{module}: {:?}", i.body)
            };
            assert_eq!(
                e.key[0],
                NftValue::Address(IpAddress::Ipv4((10, 244, 1, 10))),
                "{module}: {}",
                i.rule_id
            );
        }
    }
}

#[test]
fn a_cni_result_claims_only_the_addresses_the_ledger_gave() {
    common::netns::require_root();
    let _serial = serial();
    let env = env();
    env.registry
        .apply(builtin("cni", "hostile-cni", Role::Cni))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cni = CniService::new(
        env.registry.clone(),
        "cni",
        env.ledger.clone(),
        env.links.clone(),
        AttachmentStore::open(&dir.path().join("attachments.redb")).unwrap(),
        Journal::new(&dir.path().join("journal")).unwrap(),
        Arc::new(StickyPods::default()),
        2,
    );
    let pod_ns = common::netns::Netns::new("claim");
    let add = |container: &str, hostile: &str| {
        cni.handle_sync(&switchyard_cni::Request {
            env: switchyard_cni::Env {
                command: switchyard_cni::Command::Add,
                container_id: container.into(),
                netns: pod_ns.path.display().to_string(),
                ifname: "eth0".into(),
                args: vec![("HOSTILE".into(), hostile.into())],
                path: String::new(),
            },
            config: serde_json::json!({"cniVersion": "1.1.0", "name": "pods", "type": "switchyard-cni"}),
            cni_version: "1.1.0".into(),
        })
    };
    let veths = || {
        env.links
            .links(&switchyard::datapath::links::Netns::Node)
            .into_iter()
            .filter(|l| l.name.starts_with("syv"))
            .count()
    };
    for (container, behaviour, claims) in [
        // Another pod's address beside its own.
        ("other", "claim-other", "(ips[1])"),
        // A Service VIP instead of its own.
        ("vip", "claim-vip", "claims 10.96.0.10 (ips[0])"),
    ] {
        let e = match add(container, behaviour) {
            switchyard_cni::Response::Error(e) => e,
            ok => panic!("{behaviour}: the runtime got {ok:?}"),
        };
        assert_eq!(e.code, 100, "{behaviour}: {e:?}");
        assert!(
            e.msg.starts_with(&format!(
                "the CNI module cni's ADD result for container {container} interface eth0 claims "
            )) && e.msg.contains(claims)
                && e.msg.contains(
                    "which the IPAM ledger did not give this attachment (it holds: 10.244.1."
                ),
            "{behaviour}: {}",
            e.msg
        );
        // Rolled back as any failed ADD is: no address held, no record,
        // no veth left.
        assert!(env.ledger.all().unwrap().is_empty(), "{behaviour}");
        assert!(cni.store().all().unwrap().is_empty(), "{behaviour}");
        assert_eq!(veths(), 0, "{behaviour}");
    }
    // The same module, honest, gets its pod set up.
    match add("good", "none") {
        switchyard_cni::Response::Ok(Some(r)) => {
            assert_eq!(r["ips"].as_array().unwrap().len(), 1, "{r}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.ledger.all().unwrap().len(), 1);
    assert_eq!(veths(), 1);
}
