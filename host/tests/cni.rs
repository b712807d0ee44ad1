//! Pod networking end to end (root): a real agent in a node namespace of its
//! own, the real plugin exec'd as a runtime execs it, pods as namespaces this
//! test creates, real packets. Each test checks the kernel and the ledger for
//! leftovers when it is done.

mod common;

use common::agent::{AgentProc, cni, held, result_ips, verb, verb_if};
use common::netns::{Netns, require_root, wait_for};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use switchyard::datapath::ipam::Ipam;

const V4: &str = "10.71.0.0/24";
const V6: &str = "fd71::/64";

fn pools() -> [(&'static str, &'static str); 2] {
    [("v4", V4), ("v6", V6)]
}

fn with_prev(config: &Value, prev: &Value) -> Value {
    let mut c = config.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn add_check_del_in_both_families_with_real_traffic() {
    require_root();
    let mut agent = AgentProc::start("cni-a", &[V4, V6], None);
    let (a, b) = (Netns::new("pa"), Netns::new("pb"));
    let conf = agent.conf("1.1.0");

    let ra = verb("ADD", "ctr-a", &a.path, &conf);
    let res = ra.ok().clone();
    assert_eq!(res["cniVersion"], "1.1.0");
    assert_eq!(res["interfaces"][1]["name"], "eth0");
    assert_eq!(
        res["interfaces"][1]["sandbox"],
        a.path.display().to_string()
    );
    assert_eq!(res["interfaces"][1]["mtu"], 1500);
    assert_eq!(res["ips"][0]["gateway"], "10.71.0.1");
    assert_eq!(res["ips"][1]["gateway"], "fd71::1");
    assert_eq!(res["routes"].as_array().unwrap().len(), 2);
    let rb = verb("ADD", "ctr-b", &b.path, &conf);
    let ips_b = result_ips(rb.ok());

    // The kernel agrees with the result, and packets flow both ways.
    let addrs = a.ip(&["-br", "addr", "show", "eth0"]);
    for ip in result_ips(&res) {
        assert!(addrs.contains(&ip), "{ip} not on eth0: {addrs}");
    }
    assert!(a.ping(&ips_b[0]), "IPv4 pod to pod");
    assert!(a.ping(&ips_b[1]), "IPv6 pod to pod");
    assert!(b.ping("10.71.0.1"), "pod to its gateway");
    // The sysctls a pod needs are set inside it.
    let ra = String::from_utf8(
        a.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/accept_ra"])
            .stdout,
    )
    .unwrap();
    assert_eq!(ra.trim(), "0");

    // CHECK passes, then fails once the address is gone.
    assert_eq!(
        verb("CHECK", "ctr-a", &a.path, &with_prev(&conf, &res)).code,
        0
    );
    a.ip(&[
        "addr",
        "del",
        &format!("{}/24", result_ips(&res)[0]),
        "dev",
        "eth0",
    ]);
    let c = verb("CHECK", "ctr-a", &a.path, &with_prev(&conf, &res));
    assert_eq!(c.error_code(), 103, "{}", c.raw);
    assert!(
        c.out["msg"]
            .as_str()
            .unwrap()
            .contains("is missing from eth0"),
        "{}",
        c.raw
    );
    // CHECK of a container that was never added.
    assert_eq!(
        verb("CHECK", "ctr-x", &a.path, &with_prev(&conf, &res)).error_code(),
        3
    );

    // DEL removes everything; again is fine; so is DEL without a namespace.
    assert_eq!(
        verb("DEL", "ctr-a", &a.path, &with_prev(&conf, &res)).code,
        0
    );
    assert_eq!(verb("DEL", "ctr-a", &a.path, &conf).code, 0);
    let no_ns = cni(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "ctr-a"),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf.to_string(),
    );
    assert_eq!(no_ns.code, 0, "{}", no_ns.raw);
    assert!(!a.ip(&["-br", "link"]).contains("eth0"));
    assert_eq!(agent.pod_veths().len(), 1, "only pod b's veth is left");
    assert!(!b.ping(&result_ips(&res)[0]));
    assert_eq!(verb("DEL", "ctr-b", &b.path, &conf).code, 0);

    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 0, "no address stays held");
    assert!(agent.pod_veths().is_empty());
}

#[test]
fn every_spec_version_gets_its_own_result_shape() {
    require_root();
    let agent = AgentProc::start("cni-v", &[V4, V6], None);
    let version = cni(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(
        version.ok()["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    assert_eq!(version.out["cniVersion"], "1.0.0");
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let p = Netns::new("pv");
        let r = verb("ADD", &format!("ctr-{i}"), &p.path, &agent.conf(v));
        let out = r.ok().clone();
        assert_eq!(out["cniVersion"], *v);
        let before_1 = v.starts_with("0.");
        assert_eq!(
            out["ips"][0].get("version").is_some(),
            before_1,
            "{v}: {out}"
        );
        if before_1 {
            assert_eq!(out["ips"][0]["version"], "4", "{out}");
            assert_eq!(out["ips"][1]["version"], "6", "{out}");
            assert_eq!(out["ips"][0]["interface"], 1, "{out}");
        }
        // CHECK exists from 0.4.0 on.
        let c = verb(
            "CHECK",
            &format!("ctr-{i}"),
            &p.path,
            &with_prev(&agent.conf(v), &out),
        );
        if v.starts_with("0.3") {
            assert_eq!(c.error_code(), 1, "{v}: {}", c.raw);
        } else {
            assert_eq!(c.code, 0, "{v}: {}", c.raw);
        }
        assert_eq!(
            out["interfaces"][1].get("mtu").is_some(),
            *v == "1.1.0",
            "{v}: {out}"
        );
        assert_eq!(
            verb("DEL", &format!("ctr-{i}"), &p.path, &agent.conf(v)).code,
            0
        );
    }
    // 1.1's cniVersions picks the highest both sides speak.
    let mut c = agent.conf("1.0.0");
    c["cniVersions"] = json!(["1.0.0", "1.1.0", "2.0.0"]);
    let p = Netns::new("pv");
    assert_eq!(
        verb("ADD", "ctr-n", &p.path, &c).ok()["cniVersion"],
        "1.1.0"
    );
    assert_eq!(verb("DEL", "ctr-n", &p.path, &c).code, 0);
}

#[test]
fn bad_input_gets_the_right_code_and_leaves_nothing_behind() {
    require_root();
    let mut agent = AgentProc::start("cni-b", &[V4, V6], None);
    let p = Netns::new("pbad");
    let ns = p.path.display().to_string();
    let conf = agent.conf("1.0.0").to_string();
    let env = |cmd: &'static str,
               id: &'static str,
               ifname: &'static str|
     -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.into()),
            ("CNI_CONTAINERID", id.into()),
            ("CNI_NETNS", ns.clone()),
            ("CNI_IFNAME", ifname.into()),
            ("CNI_PATH", "/opt/cni/bin".into()),
        ]
    };
    let run = |vars: Vec<(&str, String)>, stdin: &str| {
        let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cni(&v, stdin)
    };
    let mut c = agent.conf("1.0.0");
    c["brige"] = json!("sy0");
    let typo = c.to_string();
    let mut c = agent.conf("1.0.0");
    c["ipam"] = json!({"type": "host-local"});
    let ipam = c.to_string();
    let mut c = agent.conf("1.0.0");
    c.as_object_mut().unwrap().remove("cniVersion");
    let no_version = c.to_string();
    /// (what, expected code, environment, stdin)
    type Case<'a> = (&'a str, u64, Vec<(&'a str, String)>, String);
    let cases: Vec<Case<'_>> = vec![
        (
            "malformed JSON",
            6,
            env("ADD", "c1", "eth0"),
            "{\"cniVersion\":".into(),
        ),
        ("unknown field", 2, env("ADD", "c1", "eth0"), typo),
        ("an ipam section", 2, env("ADD", "c1", "eth0"), ipam),
        (
            "unsupported version",
            1,
            env("ADD", "c1", "eth0"),
            agent.conf("0.2.0").to_string(),
        ),
        (
            "no cniVersion (0.1.0, as libcni reads it)",
            1,
            env("ADD", "c1", "eth0"),
            no_version,
        ),
        (
            "a cniVersion that is not a version",
            6,
            env("ADD", "c1", "eth0"),
            agent.conf("1.x").to_string(),
        ),
        ("no CNI_COMMAND", 4, vec![], conf.clone()),
        (
            "bad container id",
            4,
            env("ADD", "-c1", "eth0"),
            conf.clone(),
        ),
        (
            "interface name too long",
            4,
            env("ADD", "c1", "eth0-is-far-too-long"),
            conf.clone(),
        ),
        (
            "no CNI_NETNS",
            4,
            env("ADD", "c1", "eth0")
                .into_iter()
                .filter(|(k, _)| *k != "CNI_NETNS")
                .collect(),
            conf.clone(),
        ),
        (
            "netns that does not exist",
            3,
            vec![
                ("CNI_COMMAND", "ADD".into()),
                ("CNI_CONTAINERID", "c1".into()),
                ("CNI_NETNS", "/var/run/netns/sy-none".into()),
                ("CNI_IFNAME", "eth0".into()),
            ],
            conf.clone(),
        ),
        (
            "netns that is not a namespace",
            4,
            vec![
                ("CNI_COMMAND", "ADD".into()),
                ("CNI_CONTAINERID", "c1".into()),
                ("CNI_NETNS", "/tmp".into()),
                ("CNI_IFNAME", "eth0".into()),
            ],
            conf.clone(),
        ),
    ];
    for (what, code, vars, stdin) in cases {
        let r = run(vars, &stdin);
        assert_eq!(r.error_code(), code, "{what}: {}", r.raw);
        assert!(
            !r.out["msg"].as_str().unwrap_or_default().is_empty(),
            "{what}: a message says what to fix"
        );
    }
    // Messages that say all of what to fix.
    let r = run(vec![("CNI_COMMAND", "ADD".into())], &conf);
    assert_eq!(r.error_code(), 4, "{}", r.raw);
    assert!(
        r.out["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS"),
        "every missing variable is named: {}",
        r.raw
    );
    let mut c = agent.conf("1.0.0");
    c["brige"] = json!("sy9");
    let r = run(env("ADD", "c1", "eth0"), &c.to_string());
    assert!(
        r.out["msg"]
            .as_str()
            .unwrap()
            .contains(r#""brige" = "sy9""#),
        "{}",
        r.raw
    );
    // Over 1 MiB: refused as invalid, not "agent not reachable" (retried forever).
    let mut c = agent.conf("1.0.0");
    c["args"] = json!({"padding": "x".repeat(2 << 20)});
    let r = run(env("ADD", "c1", "eth0"), &c.to_string());
    assert_eq!(r.error_code(), 7, "{}", &r.raw[..r.raw.len().min(500)]);
    assert!(
        r.out["msg"].as_str().unwrap().contains("at most 1048576"),
        "{}",
        r.raw
    );
    // A 256-character container id (the spec sets no limit) is served.
    let long = "c".repeat(256);
    let vars = |cmd: &str| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", long.clone()),
            ("CNI_NETNS", ns.clone()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    };
    let r = run(vars("ADD"), &conf);
    assert_eq!(r.code, 0, "{}", r.raw);
    assert_eq!(run(vars("CHECK"), &conf).code, 0);
    assert_eq!(run(vars("DEL"), &conf).code, 0);
    assert!(agent.pod_veths().is_empty());

    // An interface that already exists in the pod.
    p.ip(&["link", "add", "eth0", "type", "bridge"]);
    let r = run(env("ADD", "c2", "eth0"), &conf);
    assert_eq!(r.error_code(), 102, "{}", r.raw);
    assert!(
        r.out["details"]
            .as_str()
            .unwrap()
            .contains("eth0 exists in the pod namespace"),
        "{}",
        r.raw
    );
    assert!(
        agent.pod_veths().is_empty(),
        "the failed ADD was rolled back"
    );

    agent.stop();
    assert_eq!(
        held(&agent.ledger(&pools())),
        0,
        "no address leaked by a failed ADD"
    );
}

#[test]
fn an_exhausted_pool_is_reported_and_rolled_back() {
    require_root();
    let mut agent = AgentProc::start("cni-x", &["10.72.0.0/30"], None);
    let (a, b) = (Netns::new("px"), Netns::new("py"));
    let conf = agent.conf("1.1.0");
    verb("ADD", "one", &a.path, &conf).ok();
    let r = verb("ADD", "two", &b.path, &conf);
    assert_eq!(r.error_code(), 101, "{}", r.raw);
    assert!(
        r.out["msg"]
            .as_str()
            .unwrap()
            .contains("has no free address"),
        "{}",
        r.raw
    );
    assert_eq!(agent.pod_veths().len(), 1);
    assert!(!b.ip(&["-br", "link"]).contains("eth0"));
    // STATUS says what ADD would meet, and recovers with the address.
    let status = || cni(&[("CNI_COMMAND", "STATUS")], &conf.to_string());
    let s = status();
    assert_eq!(s.error_code(), 50, "{}", s.raw);
    assert!(
        s.out["msg"]
            .as_str()
            .unwrap()
            .contains("pool v4 (10.72.0.0/30) has no free address"),
        "{}",
        s.raw
    );
    assert_eq!(verb("DEL", "one", &a.path, &conf).code, 0);
    assert_eq!(status().code, 0, "{}", status().raw);
    verb("ADD", "two", &b.path, &conf).ok();
    agent.stop();
    assert_eq!(held(&agent.ledger(&[("v4", "10.72.0.0/30")])), 1);
}

#[test]
fn without_an_agent_add_says_try_again_and_status_says_not_available() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": "pods", "type": "switchyard-cni", "socket": dir.path().join("absent.sock")});
    let p = Netns::new("pn");
    assert_eq!(verb("ADD", "c1", &p.path, &conf).error_code(), 11);
    assert_eq!(verb("DEL", "c1", &p.path, &conf).error_code(), 11);
    let s = cni(&[("CNI_COMMAND", "STATUS")], &conf.to_string());
    assert_eq!(s.error_code(), 50, "{}", s.raw);
    assert!(s.out["msg"].as_str().unwrap().contains("not reachable"));
}

#[test]
fn status_reports_a_node_without_pod_cidr() {
    require_root();
    let agent = AgentProc::start("cni-s", &[], None);
    let s = cni(
        &[("CNI_COMMAND", "STATUS")],
        &agent.conf("1.1.0").to_string(),
    );
    assert_eq!(s.error_code(), 50, "{}", s.raw);
    assert!(
        s.out["msg"].as_str().unwrap().contains("no pod CIDR"),
        "{}",
        s.raw
    );
    let p = Netns::new("pz");
    let r = verb("ADD", "c1", &p.path, &agent.conf("1.1.0"));
    assert_eq!(r.error_code(), 11, "{}", r.raw);
    let ok = AgentProc::start("cni-t", &[V4], None);
    assert_eq!(
        cni(&[("CNI_COMMAND", "STATUS")], &ok.conf("1.1.0").to_string()).code,
        0
    );
    // STATUS is a 1.1 verb.
    assert_eq!(
        cni(&[("CNI_COMMAND", "STATUS")], &ok.conf("1.0.0").to_string()).error_code(),
        1
    );
}

#[test]
fn del_succeeds_when_the_namespace_is_already_gone() {
    require_root();
    let mut agent = AgentProc::start("cni-d", &[V4, V6], None);
    let p = Netns::new("pgone");
    let path = p.path.clone();
    let conf = agent.conf("1.1.0");
    verb("ADD", "gone", &path, &conf).ok();
    drop(p);
    // The kernel removes the veth pair with the namespace.
    assert!(wait_for(Duration::from_secs(5), || agent
        .pod_veths()
        .is_empty()));
    let r = verb("DEL", "gone", &path, &conf);
    assert_eq!(r.code, 0, "{}", r.raw);
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 0);
}

#[test]
fn fifty_concurrent_adds_get_distinct_addresses_and_dels_clean_up() {
    require_root();
    let mut agent = AgentProc::start("cni-c", &[V4, V6], None);
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("pc")).collect();
    let conf = agent.conf("1.1.0");
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let conf = &conf;
                s.spawn(move || verb("ADD", &format!("c{i}"), &p.path, conf))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().ok().clone())
            .collect()
    });
    let all: Vec<String> = results.iter().flat_map(result_ips).collect();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 100);
    assert_eq!(distinct.len(), 100, "no address was handed out twice");
    let last = result_ips(&results[49]);
    assert!(pods[0].ping(&last[0]) && pods[0].ping(&last[1]));
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let conf = &conf;
            s.spawn(move || assert_eq!(verb("DEL", &format!("c{i}"), &p.path, conf).code, 0));
        }
    });
    assert!(agent.pod_veths().is_empty());
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 0);
}

#[test]
fn gc_tears_down_attachments_that_are_not_valid() {
    require_root();
    let mut agent = AgentProc::start("cni-g", &[V4, V6], None);
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("pg")).collect();
    let conf = agent.conf("1.1.0");
    for (i, p) in pods.iter().enumerate() {
        verb("ADD", &format!("g{i}"), &p.path, &conf).ok();
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g0", "ifname": "eth0"}]);
    let r = cni(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &gc.to_string(),
    );
    assert_eq!(r.code, 0, "{}", r.raw);
    assert!(r.raw.trim().is_empty(), "GC prints nothing on success");
    assert_eq!(agent.pod_veths().len(), 1);
    assert!(pods[0].ip(&["-br", "link"]).contains("eth0"));
    assert!(!pods[1].ip(&["-br", "link"]).contains("eth0"));
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 1);
}

#[test]
fn gc_touches_only_its_network_and_needs_the_list() {
    require_root();
    let mut agent = AgentProc::start("cni-gn", &[V4, V6], None);
    let pods = agent.conf("1.1.0");
    let mut other = pods.clone();
    other["name"] = json!("other");
    let (a, b) = (Netns::new("pga"), Netns::new("pgb"));
    verb("ADD", "in-pods", &a.path, &pods).ok();
    verb("ADD", "in-other", &b.path, &other).ok();
    let gc = |config: &Value| {
        cni(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
            &config.to_string(),
        )
    };
    // A GC without the list is refused and touches nothing.
    let r = gc(&other);
    assert_eq!(r.error_code(), 7, "{}", r.raw);
    assert!(
        r.out["msg"]
            .as_str()
            .unwrap()
            .contains("cni.dev/valid-attachments"),
        "{}",
        r.raw
    );
    assert_eq!(agent.pod_veths().len(), 2, "{:?}", agent.pod_veths());
    // GC of network "other" with nothing valid leaves the pods of "pods".
    let mut empty = other.clone();
    empty["cni.dev/valid-attachments"] = json!([]);
    let r = gc(&empty);
    assert_eq!(r.code, 0, "{}", r.raw);
    assert!(
        a.ip(&["-br", "link"]).contains("eth0"),
        "pods' pod lost eth0"
    );
    assert!(!b.ip(&["-br", "link"]).contains("eth0"));
    assert_eq!(agent.pod_veths().len(), 1, "{:?}", agent.pod_veths());
    assert_eq!(
        verb("CHECK", "in-pods", &a.path, &pods).code,
        0,
        "network pods is intact"
    );
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 1);
}

#[test]
fn check_accepts_other_plugins_addresses_and_del_tolerates_a_bad_prev_result() {
    require_root();
    let mut agent = AgentProc::start("cni-p", &[V4, V6], None);
    let p = Netns::new("pprev");
    let conf = agent.conf("1.1.0");
    // A plugin before us in the chain made lo's and another address.
    let before = json!({"cniVersion": "1.1.0",
        "interfaces": [{"name": "lo", "sandbox": p.path}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}, {"address": "192.0.2.9/32", "interface": 0}]});
    let res = verb("ADD", "chained", &p.path, &with_prev(&conf, &before))
        .ok()
        .clone();
    assert_eq!(res["ips"].as_array().unwrap().len(), 4, "{res}");
    assert_eq!(res["ips"][2]["interface"], 2, "ours shift past lo: {res}");
    let c = verb("CHECK", "chained", &p.path, &with_prev(&conf, &res));
    assert_eq!(c.code, 0, "{}", c.raw);
    // An address of our pools that we do not hold is still our business.
    let mut wrong = res.clone();
    wrong["ips"][2]["address"] = json!("10.71.0.200/24");
    let c = verb("CHECK", "chained", &p.path, &with_prev(&conf, &wrong));
    assert_eq!(c.error_code(), 103, "{}", c.raw);
    // A prevResult DEL cannot read does not stop DEL; other verbs refuse it.
    for bad in [json!("garbage"), json!([1, 2])] {
        assert_eq!(
            verb("CHECK", "chained", &p.path, &with_prev(&conf, &bad)).error_code(),
            7
        );
    }
    let d = verb(
        "DEL",
        "chained",
        &p.path,
        &with_prev(&conf, &json!("garbage")),
    );
    assert_eq!(d.code, 0, "{}", d.raw);
    assert!(agent.pod_veths().is_empty());
    assert_eq!(
        verb("DEL", "chained", &p.path, &with_prev(&conf, &json!([1]))).code,
        0
    );
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 0);
}

#[test]
fn a_repeated_add_answers_only_while_the_kernel_matches() {
    require_root();
    let mut agent = AgentProc::start("cni-2", &[V4, V6], None);
    let p = Netns::new("ptwice");
    let conf = agent.conf("1.1.0");
    let first = verb("ADD", "twice", &p.path, &conf).ok().clone();
    // A runtime that lost the answer asks again: the same result.
    let again = verb("ADD", "twice", &p.path, &conf);
    assert_eq!(again.ok(), &first);
    assert_eq!(agent.pod_veths().len(), 1);
    // The pod's interface deleted by hand (the veth pair goes with it).
    p.ip(&["link", "del", "eth0"]);
    assert!(wait_for(Duration::from_secs(5), || agent
        .pod_veths()
        .is_empty()));
    let r = verb("ADD", "twice", &p.path, &conf);
    assert_eq!(r.error_code(), 102, "{}", r.raw);
    let msg = r.out["msg"].as_str().unwrap();
    assert!(
        msg.contains("ADD without DEL") && msg.contains("DEL it, then ADD again"),
        "{}",
        r.raw
    );
    // DEL, then ADD, works.
    assert_eq!(verb("DEL", "twice", &p.path, &conf).code, 0);
    let fresh = verb("ADD", "twice", &p.path, &conf).ok().clone();
    assert!(
        p.ip(&["-br", "addr", "show", "eth0"])
            .contains(&result_ips(&fresh)[0])
    );
    assert_eq!(verb("DEL", "twice", &p.path, &conf).code, 0);
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 0);
}

#[test]
fn start_up_tears_down_attachments_whose_namespace_is_gone() {
    require_root();
    let mut agent = AgentProc::start("cni-r", &[V4, V6], None);
    let keep = Netns::new("pk");
    let lose = Netns::new("pl");
    let conf = agent.conf("1.1.0");
    verb("ADD", "keep", &keep.path, &conf).ok();
    verb("ADD", "lose", &lose.path, &conf).ok();
    agent.stop();
    drop(lose);
    agent.spawn();
    assert!(agent.log().contains("gone=1"), "{}", agent.log());
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 1);
}

#[test]
fn kill_9_at_any_moment_leaks_nothing_and_duplicates_nothing() {
    require_root();
    let mut agent = AgentProc::start("cni-k", &[V4, V6], None);
    let conf = agent.conf("1.1.0");
    let pods: Vec<Netns> = (0..24).map(|_| Netns::new("pk9")).collect();
    let mut added: Vec<(usize, Value)> = vec![];
    // Kill the agent while ADDs are in flight, several times, at different moments.
    for round in 0..4 {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|j| {
                    let i = round * 6 + j;
                    let (p, conf) = (&pods[i], &conf);
                    s.spawn(move || (i, verb("ADD", &format!("k{i}"), &p.path, conf)))
                })
                .collect();
            // Early (before ADDs reach the agent), during, and late (after some finished).
            std::thread::sleep(Duration::from_millis([3, 30, 80, 200][round]));
            agent.kill9();
            for h in handles {
                let (i, r) = h.join().unwrap();
                if r.code == 0 {
                    added.push((i, r.out));
                }
            }
        });
        agent.spawn();
    }
    // The crash really happened in the middle of ADDs: some failed, some
    // succeeded, and restarts found interrupted ADDs to undo.
    let interrupted: usize = agent
        .log()
        .lines()
        .filter_map(|l| {
            l.split("interrupted=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    eprintln!(
        "{} of 24 ADDs succeeded; restarts undid {interrupted} interrupted ADDs",
        added.len()
    );
    assert!(
        !added.is_empty() && added.len() < 24,
        "{} of 24 ADDs succeeded",
        added.len()
    );
    // The runtime DELs every container whose ADD failed; the rest stay up.
    let ok: HashSet<usize> = added.iter().map(|(i, _)| *i).collect();
    for (i, p) in pods.iter().enumerate() {
        if !ok.contains(&i) {
            assert_eq!(verb("DEL", &format!("k{i}"), &p.path, &conf).code, 0);
        }
    }
    // What survives is whole and unique: every live pod has its addresses, no
    // address is on two pods, and every pod veth belongs to a live pod.
    let mut seen = HashSet::new();
    for (i, out) in &added {
        let addrs = pods[*i].ip(&["-br", "addr", "show", "eth0"]);
        for ip in result_ips(out) {
            assert!(addrs.contains(&ip), "pod {i} lost {ip}");
            assert!(seen.insert(ip.clone()), "{ip} is on two pods");
        }
    }
    assert_eq!(
        agent.pod_veths().len(),
        added.len(),
        "veths: {:?}",
        agent.pod_veths()
    );
    agent.stop();
    assert_eq!(
        held(&agent.ledger(&pools())),
        added.len(),
        "the ledger holds exactly the live pods"
    );
    agent.spawn();
    for (i, _) in &added {
        assert_eq!(verb("DEL", &format!("k{i}"), &pods[*i].path, &conf).code, 0);
    }
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 0);
    assert!(agent.pod_veths().is_empty());
}

const STATEFUL: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: prod
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: 11111111-2222-3333-4444-555555555555}]
spec:
  containers: [{name: db, image: postgres}]
"#;

#[test]
fn a_re_created_statefulset_pod_gets_its_address_back() {
    require_root();
    let mut agent = AgentProc::start("cni-ss", &[V4, V6], Some(STATEFUL));
    let conf = agent.conf("1.1.0");
    let add = |id: &str, ns: &Netns, pod: &str| {
        let netns = ns.path.display().to_string();
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME={pod}");
        cni(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            &conf.to_string(),
        )
    };
    let first = Netns::new("db");
    let before = result_ips(add("db-0-a", &first, "db-0").ok());
    assert_eq!(verb("DEL", "db-0-a", &first.path, &conf).code, 0);
    drop(first);
    // Other pods come and go meanwhile, and do not get its address.
    let others: Vec<Netns> = (0..3).map(|_| Netns::new("web")).collect();
    for (i, o) in others.iter().enumerate() {
        let got = result_ips(add(&format!("web-{i}"), o, &format!("web-{i}")).ok());
        assert!(
            got.iter().all(|ip| !before.contains(ip)),
            "{got:?} took the StatefulSet pod's address"
        );
    }
    let second = Netns::new("db");
    let after = result_ips(add("db-0-b", &second, "db-0").ok());
    assert_eq!(before, after, "the re-created pod has the same addresses");
    agent.stop();
}

/// How many veths the effect journals in `dir` intend without saying
/// whether the kernel made them (a crash between the two lines).
fn unconfirmed_veths(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut open = HashSet::new();
        for l in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(l) else {
                continue;
            };
            let host = v["host_name"].as_str().unwrap_or_default().to_string();
            match v["effect"].as_str() {
                Some("vethIntent") => {
                    open.insert(host);
                }
                Some("vethCreated" | "vethRefused") => {
                    open.remove(&host);
                }
                _ => {}
            }
        }
        n += open.len();
    }
    n
}

/// Whether the namespace has a link named `name`.
fn has_link(ns: &Netns, name: &str) -> bool {
    common::netns::run("ip", &["-n", &ns.name, "link", "show", name])
        .status
        .success()
}

/// The window the effect journal must cover: the agent killed after the
/// kernel made a pod's veth and before the ADD's answer. Rounds of
/// concurrent ADDs are killed at different moments until the kill has
/// caught ADDs in that window (bounded in rounds and time). After each
/// restart the node must hold no link without an attachment (a host veth
/// on the bridge, an eth0 in a pod), the ledger no address without one,
/// and a retried ADD of every interrupted container must succeed.
#[test]
fn kill_9_between_creating_a_veth_and_answering_leaves_no_link() {
    require_root();
    const PER_ROUND: usize = 8;
    const MAX_ROUNDS: usize = 40;
    const WANTED: usize = 3;
    let budget = Duration::from_secs(240);
    let started = std::time::Instant::now();
    let mut agent = AgentProc::start("cni-kw", &[V4, V6], None);
    let conf = agent.conf("1.1.0");
    let (mut rounds, mut caught, mut interrupted, mut retried, mut exact) = (0, 0, 0, 0, 0);
    while (caught < WANTED || exact == 0) && rounds < MAX_ROUNDS && started.elapsed() < budget {
        let pods: Vec<Netns> = (0..PER_ROUND).map(|_| Netns::new("pkw")).collect();
        let id = |i: usize| format!("kw{rounds}-{i}");
        // ADDs reach the agent a few ms after they start; sweep the kill
        // across the time the round's ADDs take.
        let delay = Duration::from_millis(4 + (rounds as u64 * 5) % 45);
        let runs: Vec<(usize, common::agent::Run)> = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (conf, id) = (&conf, id(i));
                    s.spawn(move || (i, verb("ADD", &id, &p.path, conf)))
                })
                .collect();
            std::thread::sleep(delay);
            agent.kill9();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: HashSet<usize> = runs
            .iter()
            .filter(|(_, r)| r.code == 0)
            .map(|(i, _)| *i)
            .collect();
        // What the kill left: ADDs that failed although their pod has eth0.
        let in_window: Vec<usize> = (0..PER_ROUND)
            .filter(|i| !ok.contains(i) && has_link(&pods[*i], "eth0"))
            .collect();
        caught += in_window.len();
        interrupted += PER_ROUND - ok.len();
        // Of those, the ones the kernel had made and the journal did not
        // yet list as made: only the intent journaled before covers them.
        let unconfirmed = unconfirmed_veths(&agent.dir.path().join("data/journal"));
        exact += unconfirmed;

        // Restart (start-up recovery runs before the socket serves), then
        // look at the node and the agent's records with the agent stopped.
        agent.spawn();
        agent.stop();
        let records = agent.records();
        let ours: HashSet<(String, String)> = records
            .iter()
            .map(|r| (r.container_id.clone(), r.ifname.clone()))
            .collect();
        let host_ends: HashSet<String> = records
            .iter()
            .filter_map(|r| r.result.as_ref()?["interfaces"][0]["name"].as_str())
            .map(str::to_string)
            .collect();
        let stray_host: std::collections::BTreeSet<String> = agent
            .bridge_ports("sy0")
            .into_iter()
            .chain(agent.pod_veths())
            .filter(|n| !host_ends.contains(n))
            .collect();
        let stray_pod: Vec<String> = (0..PER_ROUND)
            .filter(|i| has_link(&pods[*i], "eth0") && !ours.contains(&(id(*i), "eth0".into())))
            .map(id)
            .collect();
        let ledger: HashSet<(String, String)> = agent
            .ledger(&pools())
            .attachments()
            .unwrap()
            .into_iter()
            .map(|k| (k.container_id, k.ifname))
            .collect();
        eprintln!(
            "round {rounds} (kill after {delay:?}): {} of {PER_ROUND} ADDs answered, {} killed after their veth was made ({unconfirmed} before the journal said so); after the restart {} stray host veths, {} stray pod interfaces",
            ok.len(),
            in_window.len(),
            stray_host.len(),
            stray_pod.len()
        );
        assert!(
            stray_host.is_empty() && stray_pod.is_empty(),
            "round {rounds}: links without an attachment after the restart: host {stray_host:?}, pods {stray_pod:?}"
        );
        assert_eq!(
            ledger, ours,
            "round {rounds}: the ledger holds exactly the recorded attachments"
        );
        for i in &ok {
            assert!(
                ours.contains(&(id(*i), "eth0".into())),
                "round {rounds}: answered ADD {} was forgotten",
                id(*i)
            );
        }

        // The runtime retries every ADD that failed: each succeeds, with
        // its address on eth0.
        agent.spawn();
        for i in (0..PER_ROUND).filter(|i| !ok.contains(i)) {
            let r = verb("ADD", &id(i), &pods[i].path, &conf);
            assert_eq!(
                r.code,
                0,
                "round {rounds}: retried ADD {}: {}",
                id(i),
                r.raw
            );
            let addrs = pods[i].ip(&["-br", "addr", "show", "eth0"]);
            for ip in result_ips(&r.out) {
                assert!(
                    addrs.contains(&ip),
                    "{ip} not on eth0 of {}: {addrs}",
                    id(i)
                );
            }
            retried += 1;
        }
        for (i, p) in pods.iter().enumerate() {
            assert_eq!(verb("DEL", &id(i), &p.path, &conf).code, 0);
        }
        assert!(agent.pod_veths().is_empty(), "{:?}", agent.pod_veths());
        rounds += 1;
    }
    eprintln!(
        "{rounds} rounds of {PER_ROUND} ADDs in {:?}: {interrupted} ADDs interrupted, {caught} of them after their veth was made ({exact} before the journal listed it as made), {retried} retried ADDs succeeded",
        started.elapsed()
    );
    assert!(
        caught > 0 && exact > 0,
        "in {rounds} rounds no kill landed between a veth's creation and the answer ({caught}), or before the journal listed it as made ({exact})"
    );
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 0);
}

const SIDE: &str = "10.77.0.0/24";

/// Multus's case: a pod on the cluster network (eth0) gets a second
/// interface (net1) on another network, with its own bridge and pool. Only
/// eth0 takes the default route; packets to the other network leave through
/// net1; both carry traffic; each CHECKs; DEL of net1 leaves eth0 whole.
#[test]
fn a_second_network_in_a_pod_gets_its_own_pool_and_not_the_default_route() {
    require_root();
    let mut agent = AgentProc::start_with(
        "cni-mn",
        &[V4, V6],
        None,
        &["--pool", &format!("side={SIDE}")],
    );
    let pods = agent.conf("1.1.0");
    let mut side = pods.clone();
    side["name"] = json!("side");
    side["pools"] = json!(["side"]);
    side["bridge"] = json!("sy1");
    let (a, b) = (Netns::new("pma"), Netns::new("pmb"));
    let mut first = vec![];
    let mut second = vec![];
    for (id, p) in [("m-a", &a), ("m-b", &b)] {
        let r = verb_if("ADD", id, &p.path, "eth0", &pods).ok().clone();
        assert_eq!(
            result_ips(&r).len(),
            2,
            "the pod network takes v4 and v6 only: {r}"
        );
        first.push(r);
        let r = verb_if("ADD", id, &p.path, "net1", &side);
        assert_eq!(r.code, 0, "a secondary interface: {}", r.raw);
        let r = r.out;
        assert_eq!(result_ips(&r).len(), 1, "{r}");
        assert!(result_ips(&r)[0].starts_with("10.77.0."), "{r}");
        assert!(
            r["routes"].as_array().is_none_or(|v| v.is_empty()),
            "no default route through net1: {r}"
        );
        assert_eq!(r["interfaces"][1]["name"], "net1");
        second.push(r);
    }
    // The default routes stay with eth0; the side network is reached on net1.
    let default4 = a.ip(&["route", "show", "default"]);
    let default6 = a.ip(&["-6", "route", "show", "default"]);
    assert!(
        default4.contains("dev eth0") && !default4.contains("net1"),
        "{default4}"
    );
    assert!(
        default6.contains("dev eth0") && !default6.contains("net1"),
        "{default6}"
    );
    let b_side = result_ips(&second[1])[0].clone();
    let b_pod = result_ips(&first[1]);
    assert!(
        a.ip(&["route", "get", &b_side]).contains("dev net1"),
        "{}",
        a.ip(&["route", "get", &b_side])
    );
    assert!(a.ping(&b_side), "pod to pod on the side network");
    assert!(a.ping(&b_pod[0]) && a.ping(&b_pod[1]), "pod to pod on eth0");
    assert!(a.ping("10.77.0.1"), "pod to the side network's gateway");
    assert_eq!(
        agent.bridge_ports("sy1").len(),
        2,
        "{:?}",
        agent.bridge_ports("sy1")
    );
    assert_eq!(
        agent.bridge_ports("sy0").len(),
        2,
        "{:?}",
        agent.bridge_ports("sy0")
    );
    // Each attachment CHECKs: with its result, and with none.
    for (i, (id, p)) in [("m-a", &a), ("m-b", &b)].into_iter().enumerate() {
        for (ifname, conf, res) in [("eth0", &pods, &first[i]), ("net1", &side, &second[i])] {
            let c = verb_if("CHECK", id, &p.path, ifname, &with_prev(conf, res));
            assert_eq!(c.code, 0, "CHECK {id} {ifname}: {}", c.raw);
            let c = verb_if("CHECK", id, &p.path, ifname, conf);
            assert_eq!(c.code, 0, "CHECK {id} {ifname} without a result: {}", c.raw);
        }
    }
    // STATUS of the side network looks at its own pool.
    let s = cni(&[("CNI_COMMAND", "STATUS")], &side.to_string());
    assert_eq!(s.code, 0, "{}", s.raw);
    // DEL of net1 leaves eth0 and its default route.
    assert_eq!(verb_if("DEL", "m-a", &a.path, "net1", &side).code, 0);
    assert!(!has_link(&a, "net1"));
    assert!(a.ip(&["route", "show", "default"]).contains("dev eth0"));
    assert!(a.ping(&b_pod[0]));
    // The side network is reached like any other address now: through
    // eth0's default route, which the node routes on to its other bridge.
    assert!(a.ip(&["route", "get", &b_side]).contains("dev eth0"));
    for (id, p) in [("m-a", &a), ("m-b", &b)] {
        assert_eq!(verb_if("DEL", id, &p.path, "net1", &side).code, 0);
        assert_eq!(verb_if("DEL", id, &p.path, "eth0", &pods).code, 0);
    }
    assert!(agent.pod_veths().is_empty(), "{:?}", agent.pod_veths());
    agent.stop();
    assert_eq!(
        held(&agent.ledger(&[("v4", V4), ("v6", V6), ("side", SIDE)])),
        0
    );
}

/// `CNI_ARGS=IP=...` and the `ips` capability (`runtimeConfig.ips`) are
/// honoured from the pools; an address another pod holds, or one outside
/// the network's pools, fails with the address and the pool named, and
/// leaves nothing behind.
#[test]
fn static_addresses_are_honoured_or_refused_by_name() {
    require_root();
    let mut agent = AgentProc::start("cni-ip", &[V4, V6], None);
    let conf = agent.conf("1.1.0");
    let add_with_args = |id: &str, p: &Netns, args: &str| {
        let ns = p.path.display().to_string();
        cni(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &ns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", args),
            ],
            &conf.to_string(),
        )
    };
    let (a, b, c) = (Netns::new("pia"), Netns::new("pib"), Netns::new("pic"));
    // CNI_ARGS IP, as host-local reads it: that address, the other family as usual.
    let r = add_with_args("ip-a", &a, "IgnoreUnknown=1;IP=10.71.0.5");
    let ips = result_ips(r.ok());
    assert_eq!(ips[0], "10.71.0.5", "{}", r.raw);
    assert_eq!(ips.len(), 2);
    assert!(
        a.ip(&["-br", "addr", "show", "eth0"])
            .contains("10.71.0.5/24")
    );
    // The ips capability, in both families.
    let mut with_ips = conf.clone();
    with_ips["runtimeConfig"] = json!({"ips": ["10.71.0.6/24", "fd71::6"]});
    let r = verb("ADD", "ip-b", &b.path, &with_ips);
    assert_eq!(result_ips(r.ok()), ["10.71.0.6", "fd71::6"], "{}", r.raw);
    assert!(
        b.ping("10.71.0.5") && b.ping(&ips[1]),
        "traffic to the static pod"
    );

    // Refusals, each naming the address and the pool; none leaves anything.
    let in_use = add_with_args("ip-c", &c, "IgnoreUnknown=1;IP=10.71.0.5");
    assert_eq!(in_use.error_code(), 101, "{}", in_use.raw);
    let msg = in_use.out["msg"].as_str().unwrap();
    assert!(
        msg.contains("address 10.71.0.5 (CNI_ARGS IP) is not available")
            && msg.contains("pool v4")
            && msg.contains("held by another attachment"),
        "{}",
        in_use.raw
    );
    let outside = add_with_args("ip-c", &c, "IP=10.99.0.5");
    assert_eq!(outside.error_code(), 101, "{}", outside.raw);
    assert_eq!(
        outside.out["msg"],
        "address 10.99.0.5 (CNI_ARGS IP) is in none of the pools of network \"pods\": v4 (10.71.0.0/24), v6 (fd71::/64)"
    );
    let mut gateway = conf.clone();
    gateway["runtimeConfig"] = json!({"ips": ["10.71.0.1"]});
    let r = verb("ADD", "ip-c", &c.path, &gateway);
    assert_eq!(r.error_code(), 101, "{}", r.raw);
    assert!(
        r.out["msg"]
            .as_str()
            .unwrap()
            .contains("is the gateway of pool v4 (10.71.0.0/24)"),
        "{}",
        r.raw
    );
    let r = add_with_args("ip-c", &c, "IP=10.71.0.300");
    assert_eq!(r.error_code(), 4, "{}", r.raw);
    assert!(!has_link(&c, "eth0"), "no refused ADD left an interface");
    assert_eq!(agent.pod_veths().len(), 2, "{:?}", agent.pod_veths());
    // Once the holder is gone, the address can be asked for again.
    assert_eq!(verb("DEL", "ip-a", &a.path, &conf).code, 0);
    let r = add_with_args("ip-c", &c, "IP=10.71.0.5");
    assert_eq!(result_ips(r.ok())[0], "10.71.0.5");
    for (id, p) in [("ip-b", &b), ("ip-c", &c)] {
        assert_eq!(verb("DEL", id, &p.path, &conf).code, 0);
    }
    agent.stop();
    assert_eq!(held(&agent.ledger(&pools())), 0);
}

/// A standalone agent serves the admin API on a unix socket beside its CNI
/// socket (root's only), and on TCP when asked: an operator sees its pools
/// and each attachment's address.
#[test]
fn a_standalone_agent_serves_the_admin_api_on_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let mut agent = AgentProc::start("cni-api", &[V4, V6], None);
    let socket = agent.dir.path().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only root may use the admin socket");
    let p = Netns::new("papi");
    let conf = agent.conf("1.1.0");
    let ips = result_ips(verb("ADD", "api-1", &p.path, &conf).ok());

    let (status, ipam) = agent.admin_get("/api/v1/ipam");
    assert_eq!(status, 200, "{ipam}");
    let pools: Vec<&str> = ipam["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(pools, ["v4", "v6"], "{ipam}");
    let mine: Vec<&Value> = ipam["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["containerId"] == "api-1")
        .collect();
    assert_eq!(mine.len(), 2, "{ipam}");
    for a in &mine {
        assert_eq!(a["ifname"], "eth0");
        let addr = a["address"].as_str().unwrap().split('/').next().unwrap();
        assert!(ips.contains(&addr.to_string()), "{a} not in {ips:?}");
    }
    let (status, node) = agent.admin_get("/api/v1/node");
    assert_eq!(status, 200);
    assert_eq!(node["source"], "flags", "{node}");
    assert_eq!(node["ready"], true, "{node}");
    assert_eq!(node["podCIDRs"], json!([V4, V6]), "{node}");
    let (status, modules) = agent.admin_get("/api/v1/modules");
    assert_eq!(status, 200);
    assert!(modules.to_string().contains("cni-bridge"), "{modules}");
    // What this agent does not have says so.
    let (status, cluster) = agent.admin_get("/api/v1/cluster");
    assert_eq!(status, 404);
    assert!(
        cluster["error"]
            .as_str()
            .unwrap()
            .contains("no cluster view"),
        "{cluster}"
    );
    assert_eq!(verb("DEL", "api-1", &p.path, &conf).code, 0);
    let (_, ipam) = agent.admin_get("/api/v1/ipam");
    assert_eq!(ipam["allocations"], json!([]), "{ipam}");
    agent.stop();
    assert!(!socket.exists(), "the socket goes with the agent");

    // With manifests and a TCP address (on the node namespace's loopback).
    let tcp = AgentProc::start_with(
        "cni-apt",
        &[V4],
        Some(STATEFUL),
        &["--admin-address", "127.0.0.1:19090"],
    );
    let (status, cluster) = switchyard::datapath::netlink::in_netns(&tcp.node.path, || {
        let s = std::net::TcpStream::connect("127.0.0.1:19090")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(common::agent::http_get(s, "/api/v1/cluster"))
    })
    .unwrap();
    assert_eq!(status, 200, "{cluster}");
    assert!(cluster.to_string().contains("db-0"), "{cluster}");
    let (_, node) = tcp.admin_get("/api/v1/node");
    assert_eq!(node["source"], "local", "{node}");
}
