//! `switchyard module inspect` and `validate` on every module the build makes.

use std::process::Command;

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (crate, role it is built for, whether it is a valid module of that role,
/// a phrase `validate` prints).
const EXPECTED: &[(&str, &str, bool, &str)] = &[
    (
        "cni-bridge",
        "cni",
        true,
        "ok: cni-bridge 0.1.0 is a valid cni module",
    ),
    (
        "example-egress-allowlist",
        "network-policy",
        true,
        "ok: egress-allowlist 0.1.0 is a valid network-policy module",
    ),
    (
        "example-namespace-isolation",
        "network-policy",
        true,
        "ok: namespace-isolation 0.1.0 is a valid network-policy module",
    ),
    (
        "example-scheduler",
        "scheduler",
        true,
        "ok: least-latency 0.1.0 is a valid scheduler module",
    ),
    (
        "proxy-nftables",
        "service-proxy",
        true,
        "ok: proxy-nftables 0.1.0 is a valid service-proxy module",
    ),
    (
        "policy-kubernetes",
        "network-policy",
        true,
        "ok: policy-kubernetes 0.1.0 is a valid network-policy module",
    ),
    (
        "hostile-proxy",
        "service-proxy",
        true,
        "ok: hostile-proxy 0.1.0",
    ),
    (
        "hostile-policy",
        "network-policy",
        true,
        "ok: hostile-policy 0.1.0 is a valid network-policy module",
    ),
    (
        "hostile-cni",
        "cni",
        true,
        "ok: hostile-cni 0.1.0 is a valid cni module",
    ),
    (
        "hostile-no-describe",
        "service-proxy",
        false,
        "no export `describe` found",
    ),
    (
        "hostile-wrong-world",
        "service-proxy",
        false,
        "no export `render-service` found",
    ),
    (
        "hostile-slow-describe",
        "scheduler",
        false,
        "deadline of 100 ms exceeded",
    ),
];

#[test]
fn every_built_module_is_covered() {
    let mut built: Vec<&str> = switchyard::modules::ALL.iter().map(|(n, _)| *n).collect();
    let mut expected: Vec<&str> = EXPECTED.iter().map(|e| e.0).collect();
    built.sort();
    expected.sort();
    assert_eq!(built, expected, "add new modules to EXPECTED");
}

#[test]
fn inspect_and_validate_every_built_module() {
    for (name, role, valid, phrase) in EXPECTED {
        let path = switchyard::modules::ALL
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1;
        let (code, out, err) = switchyard(&["module", "inspect", path]);
        assert!(
            out.contains(&format!(
                "sha256:   {}",
                switchyard::runtime::sha256_hex(&std::fs::read(path).unwrap())
            )),
            "{name}: {out}"
        );
        assert!(
            out.contains("exports:") && out.contains("imports:"),
            "{name}: {out}"
        );
        assert_eq!(code == 0, *valid, "{name}: inspect exit {code}: {out}{err}");
        if *valid {
            assert!(
                out.contains(&format!("role:        {role}")),
                "{name}: {out}"
            );
        }

        let (code, out, err) = switchyard(&["module", "validate", path, "--role", role]);
        assert_eq!(
            code == 0,
            *valid,
            "{name}: validate exit {code}: {out}{err}"
        );
        assert!(
            out.contains(phrase) || err.contains(phrase),
            "{name}: expected {phrase:?} in {out}{err}"
        );
    }
}

#[test]
fn inspect_json_is_machine_readable() {
    let (code, out, _) = switchyard(&[
        "module",
        "inspect",
        switchyard::modules::PROXY_NFTABLES,
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["roles"][0], "service-proxy");
    assert_eq!(v["describe"]["name"], "proxy-nftables");
    assert_eq!(v["describe"]["configSchema"]["type"], "object");
    assert!(
        v["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "render-service")
    );
}

#[test]
fn validate_checks_config_and_digest_and_reports_clearly() {
    let p = switchyard::modules::EXAMPLE_SCHEDULER;
    let (code, _, err) = switchyard(&[
        "module",
        "validate",
        p,
        "--role",
        "scheduler",
        "--config",
        r#"{"unknownLatencyUs": "fast"}"#,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("config.unknownLatencyUs: \"fast\" is not of type \"integer\""),
        "{err}"
    );
    let (code, _, err) = switchyard(&[
        "module",
        "validate",
        p,
        "--role",
        "scheduler",
        "--sha256",
        &"0".repeat(64),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("was required"), "{err}");
    let (code, _, err) = switchyard(&["module", "validate", p, "--role", "router"]);
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("unknown role \"router\""), "{err}");
    let (code, _, err) = switchyard(&[
        "module",
        "validate",
        p,
        "--role",
        "scheduler",
        "--config",
        "{nope",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--config is not valid JSON"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, r#"{"maxLatencyUs": 500}"#).unwrap();
    let (code, out, _) = switchyard(&[
        "module",
        "validate",
        p,
        "--role",
        "scheduler",
        "--config",
        &format!("@{}", cfg.display()),
    ]);
    assert_eq!(code, 0, "{out}");
}
