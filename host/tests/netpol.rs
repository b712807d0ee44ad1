//! NetworkPolicy end to end, written like the Kubernetes e2e NetworkPolicy
//! suite: nine pods (a, b, c in namespaces x, y, z) spread over two nodes,
//! one policy scenario after another, each checked with real traffic as a
//! reachability truth table (`switchyard lab matrix`), polled until the
//! agents have applied the policy. After each scenario its objects are
//! deleted and everything must be reachable again. Runs in a flat dual-stack
//! lab (both families) and in an IPv4 overlay lab. Needs root (CI runs as
//! root).
//!
//! `NETPOL_ONLY=ipblock,named-port` runs only the scenarios named.

mod common;

use common::lab::*;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_NAMES: [&str; 3] = ["a", "b", "c"];

/// How long an agent may take to apply a change before the test fails.
const DEADLINE: Duration = Duration::from_secs(15);

/// How long one probe of a matrix waits before calling it denied.
const PROBE_TIMEOUT: &str = "500ms";

/// The node a pod runs on: neighbours alternate, so x/a (node-1) has x/b
/// across nodes and y/b on its own node.
fn node_of(ns: usize, pod: usize) -> &'static str {
    if (ns + pod).is_multiple_of(2) {
        "node-1"
    } else {
        "node-2"
    }
}

fn pod_yaml(ns: &str, name: &str, label: &str, node: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{pod: {label}}}}}
spec:
  nodeName: {node}
  containers:
  - name: s
    image: lab
    ports:
    - {{name: serve-80-tcp, containerPort: 80}}
    - {{name: serve-81-tcp, containerPort: 81}}
    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
"
    )
}

/// Pod `ns/name` as set up, but labelled `pod: label`.
fn relabelled(pod: &str, label: &str) -> String {
    let (ns, name) = pod.split_once('/').unwrap();
    let i = NAMESPACES.iter().position(|n| *n == ns).unwrap();
    let j = POD_NAMES.iter().position(|n| *n == name).unwrap();
    pod_yaml(ns, name, label, node_of(i, j))
}

/// Namespaces x, y, z (z also labelled `team: z`) and their pods.
fn setup_yaml() -> String {
    let mut s = String::new();
    for ns in NAMESPACES {
        let labels = if ns == "z" { ", labels: {team: z}" } else { "" };
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}{labels}}}\n"
        ));
    }
    for (i, ns) in NAMESPACES.iter().enumerate() {
        for (j, name) in POD_NAMES.iter().enumerate() {
            s.push_str(&pod_yaml(ns, name, name, node_of(i, j)));
        }
    }
    s
}

fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| POD_NAMES.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
{spec}"
    )
}

// ---------------------------------------------------------------------------
// Truth tables.

/// Whether `pod` (`ns/name`) matches `pattern`: `*`, `ns/*` or `ns/name`.
fn matches(pattern: &str, pod: &str) -> bool {
    pattern == "*"
        || pattern == pod
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with('/') && pod.starts_with(prefix))
}

/// Which ordered pairs of pods may connect.
#[derive(Clone, PartialEq, Eq)]
struct Table {
    pods: Vec<String>,
    cells: BTreeMap<(String, String), bool>,
}

impl Table {
    fn all(allowed: bool) -> Table {
        let pods = all_pods();
        let mut cells = BTreeMap::new();
        for f in &pods {
            for t in &pods {
                cells.insert((f.clone(), t.clone()), allowed);
            }
        }
        Table { pods, cells }
    }

    /// Traffic from pods matching `from` to pods matching `to` is
    /// `allowed`; a pod reaching itself always is.
    fn set(mut self, from: &str, to: &str, allowed: bool) -> Table {
        for ((f, t), v) in self.cells.iter_mut() {
            if matches(from, f) && matches(to, t) {
                *v = allowed || f == t;
            }
        }
        self
    }

    fn deny(self, from: &str, to: &str) -> Table {
        self.set(from, to, false)
    }

    fn allow(self, from: &str, to: &str) -> Table {
        self.set(from, to, true)
    }
}

/// One truth table to hold for one port and protocol.
#[derive(Clone)]
struct Expect {
    port: u16,
    protocol: &'static str,
    table: Table,
}

fn expect(port: u16, protocol: &'static str, table: Table) -> Expect {
    Expect {
        port,
        protocol,
        table,
    }
}

/// What one `lab matrix` run saw: allowed or not for each pair it probed.
type Observed = BTreeMap<(String, String), bool>;

fn cell(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => ".",
        Some(false) => "X",
        None => "?",
    }
}

/// Expected and observed side by side (rows sources, columns destinations),
/// then the cells that differ.
fn grids(pods: &[String], expected: &Table, observed: &Observed) -> String {
    let w = pods.iter().map(|p| p.len()).max().unwrap_or(3) + 1;
    let header = |out: &mut String| {
        out.push_str(&format!("{:w$}", ""));
        for p in pods {
            out.push_str(&format!("{p:>w$}"));
        }
    };
    let width = w * (pods.len() + 1);
    let mut out = format!(
        "{:width$}   {}\n",
        "expected (rows from, columns to; . allowed, X denied)", "observed"
    );
    let mut h = String::new();
    header(&mut h);
    out.push_str(&format!("{h:width$}   {h}\n"));
    for f in pods {
        let mut left = format!("{f:w$}");
        let mut right = format!("{f:w$}");
        for t in pods {
            let key = (f.clone(), t.clone());
            left.push_str(&format!("{:>w$}", cell(expected.cells.get(&key).copied())));
            right.push_str(&format!("{:>w$}", cell(observed.get(&key).copied())));
        }
        out.push_str(&format!("{left:width$}   {right}\n"));
    }
    let wrong: Vec<String> = pods
        .iter()
        .flat_map(|f| pods.iter().map(move |t| (f.clone(), t.clone())))
        .filter(|k| expected.cells.get(k) != observed.get(k))
        .map(|k| {
            let word = |v: Option<bool>| match v {
                Some(true) => "allowed",
                Some(false) => "denied",
                None => "not probed",
            };
            format!(
                "  {} -> {}: expected {}, observed {}",
                k.0,
                k.1,
                word(expected.cells.get(&k).copied()),
                word(observed.get(&k).copied())
            )
        })
        .collect();
    out.push_str(&format!(
        "wrong cells ({}):\n{}",
        wrong.len(),
        wrong.join("\n")
    ));
    out
}

// ---------------------------------------------------------------------------
// The lab, as the scenarios use it.

struct Ctx<'a> {
    lab: &'a TestLab,
    what: &'static str,
    /// The families to check: `ipv4`, `ipv6`.
    families: Vec<&'static str>,
    /// YAML of the objects the current scenario made (deleted after it).
    created: RefCell<Vec<String>>,
}

impl Ctx<'_> {
    /// Apply YAML that must be admitted.
    fn apply(&self, yaml: &str) {
        let o = self.lab.apply(yaml);
        assert!(
            o.status.success(),
            "{}: applying\n{yaml}\nfailed: {}",
            self.what,
            text(&o)
        );
    }

    /// Apply YAML whose objects the scenario owns: they are deleted after
    /// it.
    fn create(&self, yaml: &str) {
        self.apply(yaml);
        self.created.borrow_mut().push(yaml.to_string());
    }

    /// One matrix over all pods: what it saw, or why it could not.
    fn observe(&self, port: u16, protocol: &str, family: &str) -> Result<Observed, String> {
        let o = self.lab.run(&[
            "matrix",
            "--json",
            "--port",
            &port.to_string(),
            "--protocol",
            protocol,
            "--family",
            family,
            "--timeout",
            PROBE_TIMEOUT,
            "-n",
            "x",
            "-n",
            "y",
            "-n",
            "z",
        ]);
        if !o.status.success() {
            return Err(format!("lab matrix failed: {}", text(&o)));
        }
        let m: Value = serde_json::from_slice(&o.stdout)
            .map_err(|e| format!("lab matrix printed no JSON ({e}): {}", text(&o)))?;
        let mut seen = Observed::new();
        for r in m["results"].as_array().into_iter().flatten() {
            seen.insert(
                (
                    r["from"].as_str().unwrap_or_default().to_string(),
                    r["to"].as_str().unwrap_or_default().to_string(),
                ),
                r["allowed"] == true,
            );
        }
        Ok(seen)
    }

    /// Poll the matrix until it is `e`'s table, for at most DEADLINE.
    fn check_one(&self, e: &Expect, family: &str, step: &str) {
        let t0 = Instant::now();
        let mut runs = 0;
        loop {
            runs += 1;
            let seen = self.observe(e.port, e.protocol, family);
            if let Ok(s) = &seen
                && *s == e.table.cells
            {
                eprintln!(
                    "    ok   {step}: {}/{} {family} after {:.1}s ({runs} matrices)",
                    e.protocol,
                    e.port,
                    t0.elapsed().as_secs_f64()
                );
                return;
            }
            if t0.elapsed() >= DEADLINE {
                let detail = match &seen {
                    Ok(s) => grids(&e.table.pods, &e.table, s),
                    Err(err) => err.clone(),
                };
                let agents = self.diagnose();
                panic!(
                    "{} / {step}: {}/{} {family}: the reachability is not the expected one after {:.1}s ({runs} matrices):\n{detail}\n{agents}",
                    self.what,
                    e.protocol,
                    e.port,
                    t0.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// What the agents say about policy: their reports' policy count and
    /// errors, and the policy lines at the end of their logs.
    fn diagnose(&self) -> String {
        let mut out = String::new();
        for node in ["node-1", "node-2"] {
            let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.lab.api(node, "/api/v1/node").1
            }));
            match report {
                Ok(r) => out.push_str(&format!(
                    "{node}: policies {}, policyErrors {}, problems {}\n",
                    r["policies"], r["policyErrors"], r["problems"]
                )),
                Err(_) => out.push_str(&format!("{node}: no report from the admin API\n")),
            }
            let log =
                std::fs::read_to_string(self.lab.dir.join("nodes").join(node).join("agent.log"))
                    .unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.to_ascii_lowercase().contains("polic"))
                .collect();
            for l in &lines[lines.len().saturating_sub(8)..] {
                out.push_str(&format!("  {node} log: {l}\n"));
            }
        }
        out
    }

    /// Every table of `expects`, in every family of the lab. Put first the
    /// table that tells the policy is in force: a table that holds without
    /// it (everything allowed on some port) proves nothing until then.
    fn check(&self, step: &str, expects: &[Expect]) {
        for family in &self.families {
            for e in expects {
                self.check_one(e, family, step);
            }
        }
    }

    /// A pod's address in `family`.
    fn ip(&self, pod: &str, family: &str) -> String {
        let ips = self.lab.pod_ips(pod);
        ips.iter()
            .find(|i| i.contains(':') == (family == "ipv6"))
            .unwrap_or_else(|| panic!("{pod} has no {family} address: {ips:?}"))
            .clone()
    }

    /// Probe `from` -> `to` until the outcome is `want`, for at most
    /// DEADLINE.
    fn probe_until(&self, from: &str, to: &str, port: u16, family: &str, want: bool) {
        let t0 = Instant::now();
        loop {
            let (ok, answer) = self.lab.probe(from, to, port, "TCP", family);
            if ok == want {
                eprintln!(
                    "    ok   {from} -> {to}:{port} ({family}) {} after {:.1}s",
                    if want { "allowed" } else { "denied" },
                    t0.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "{}: {from} -> {to}:{port}/TCP ({family}): expected {}, still {} after {:.1}s: {answer}",
                self.what,
                if want { "allowed" } else { "denied" },
                if ok { "allowed" } else { "denied" },
                t0.elapsed().as_secs_f64()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Put the pods back as set up (labels), delete what the scenario
    /// made, and expect everything reachable again on `ports`.
    fn cleanup(&self, ports: &BTreeSet<(u16, &'static str)>) {
        self.apply(&setup_yaml());
        let created = std::mem::take(&mut *self.created.borrow_mut());
        let mut seen = BTreeSet::new();
        let mut docs = String::new();
        for yaml in &created {
            for d in serde_yaml::Deserializer::from_str(yaml) {
                let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
                let s = |v: &serde_yaml::Value| v.as_str().unwrap_or_default().to_string();
                let key = (
                    s(&v["apiVersion"]),
                    s(&v["kind"]),
                    s(&v["metadata"]["namespace"]),
                    s(&v["metadata"]["name"]),
                );
                if key.1.is_empty() || !seen.insert(key.clone()) {
                    continue;
                }
                docs.push_str(&format!(
                    "---\napiVersion: {}\nkind: {}\nmetadata: {{name: {}, namespace: {}}}\n",
                    key.0, key.1, key.3, key.2
                ));
            }
        }
        if !docs.is_empty() {
            let f = self.lab.dir.join(format!("delete-{}.yaml", rand_suffix()));
            std::fs::write(&f, &docs).unwrap();
            let o = self.lab.run(&["delete", "-f", f.to_str().unwrap()]);
            let _ = std::fs::remove_file(&f);
            assert!(
                o.status.success(),
                "{}: deleting\n{docs}\nfailed: {}",
                self.what,
                text(&o)
            );
        }
        let open: Vec<Expect> = ports
            .iter()
            .map(|(port, proto)| expect(*port, proto, Table::all(true)))
            .collect();
        self.check("cleaned up: everything reachable again", &open);
    }
}

// ---------------------------------------------------------------------------
// The scenarios. Each returns the (port, protocol) pairs it checked, which
// must all be open again once its objects are gone.

type Ports = Vec<(u16, &'static str)>;

/// Scenario 1: Default deny ingress in x: nothing reaches x's pods but themselves,
/// over TCP and UDP.
fn default_deny_ingress(c: &Ctx<'_>) -> Ports {
    c.create(&policy(
        "x",
        "deny-ingress",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    ));
    let t = Table::all(true).deny("*", "x/*");
    c.check(
        "default deny ingress in x",
        &[
            expect(80, "TCP", t.clone()),
            expect(80, "UDP", t.clone()),
            expect(81, "TCP", t),
        ],
    );
    vec![(80, "TCP"), (80, "UDP"), (81, "TCP")]
}

/// Scenario 2: Ingress to x/a only from pods `pod: b` of x.
fn pod_selector(c: &Ctx<'_>) -> Ports {
    c.create(&policy(
        "x",
        "allow-b",
        "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
",
    ));
    let t = Table::all(true).deny("*", "x/a").allow("x/b", "x/a");
    c.check("x/a from pod b of x", &[expect(80, "TCP", t.clone())]);
    // A bad update is refused in the API server's words, and the policy in
    // force stays as it was.
    let bad = policy(
        "x",
        "allow-b",
        "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/33}
    ports: [{port: 90, endPort: 80}]
",
    );
    let o = c.lab.apply(&bad);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    for want in [
        "NetworkPolicy.networking.k8s.io \"allow-b\" is invalid",
        "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\"",
        "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`",
    ] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
    c.check(
        "x/a from pod b of x, after a refused update",
        &[expect(80, "TCP", t)],
    );
    // explain names the policy and rule that decide, from both nodes.
    for family in &c.families {
        let allowed = explain(c, "x/b", "x/a", family);
        assert_eq!(allowed["verdict"], "allowed", "{allowed}");
        assert_eq!(
            allowed["ingress"]["allowedBy"][0]["policy"], "x/allow-b",
            "{allowed}"
        );
        assert!(
            allowed["ingress"]["allowedBy"][0]["ruleId"]
                .as_str()
                .unwrap()
                .starts_with("ingress/0/peer-0"),
            "{allowed}"
        );
        assert_eq!(allowed["egress"]["verdict"], "not-isolated", "{allowed}");
        // The matrices' denied probes were logged on x/a's node, with the
        // policy that isolates it.
        let x_a = c
            .lab
            .pod_ips("x/a")
            .into_iter()
            .find(|i| i.contains(':') == (*family == "ipv6"))
            .unwrap();
        let (_, drops) = c.lab.api("node-1", "/api/v1/drops");
        let logged = drops["drops"].as_array().unwrap().iter().any(|d| {
            d["destination"] == x_a.as_str()
                && d["direction"] == "ingress"
                && d["mode"] == "enforce"
                && d["policies"] == serde_json::json!(["x/allow-b"])
                && d["destinationPort"] == 80
        });
        assert!(logged, "no logged drop to {x_a}:80 by x/allow-b: {drops}");
        let denied = explain(c, "y/c", "x/a", family);
        assert_eq!(denied["verdict"], "denied", "{denied}");
        assert_eq!(
            denied["ingress"]["isolatedBy"],
            serde_json::json!(["x/allow-b"]),
            "{denied}"
        );
        assert_eq!(
            denied["ingress"]["allowedBy"],
            serde_json::json!([]),
            "{denied}"
        );
    }
    vec![(80, "TCP")]
}

/// Scenario 3: Ingress to x/a from namespace y (by its name label), and in another
/// rule from namespaces labelled `team: z`.
fn namespace_selector(c: &Ctx<'_>) -> Ports {
    c.create(&policy(
        "x",
        "allow-ns",
        "  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [z]}]}
",
    ));
    let t = Table::all(true)
        .deny("*", "x/a")
        .allow("y/*", "x/a")
        .allow("z/*", "x/a");
    c.check("x/a from namespaces y and team=z", &[expect(80, "TCP", t)]);
    vec![(80, "TCP")]
}

/// Scenario 4: A pod selector and a namespace selector in one peer: both must
/// match, so only y/b reaches x/a.
fn pod_and_namespace(c: &Ctx<'_>) -> Ports {
    c.create(&policy(
        "x",
        "allow-y-b",
        "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      podSelector: {matchLabels: {pod: b}}
",
    ));
    let t = Table::all(true).deny("*", "x/a").allow("y/b", "x/a");
    c.check("x/a from pod b of namespace y", &[expect(80, "TCP", t)]);
    vec![(80, "TCP")]
}

/// Scenario 5: Egress from x/a to everywhere (every family of the lab) except
/// y/b's address.
fn ip_block_except(c: &Ctx<'_>) -> Ports {
    let mut to = String::new();
    for family in &c.families {
        let ip = c.ip("y/b", family);
        let (all, bits) = if *family == "ipv6" {
            ("::/0", 128)
        } else {
            ("0.0.0.0/0", 32)
        };
        to.push_str(&format!(
            "    - ipBlock: {{cidr: \"{all}\", except: [\"{ip}/{bits}\"]}}\n"
        ));
    }
    c.create(&policy(
        "x",
        "egress-except",
        &format!(
            "  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress:
  - to:
{to}"
        ),
    ));
    let t = Table::all(true).deny("x/a", "y/b");
    c.check(
        "x/a egress to all but y/b (ipBlock except)",
        &[expect(80, "TCP", t)],
    );
    vec![(80, "TCP")]
}

/// `lab explain --json` of a TCP/80 connection.
fn explain(c: &Ctx<'_>, from: &str, to: &str, family: &str) -> Value {
    let o = c.lab.run(&[
        "explain", "--from", from, "--to", to, "--port", "80", "--family", family, "--json",
    ]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// Scenario 12: Monitor mode: a default-deny policy on x/a annotated
/// `switchyard.dev/policy-mode: monitor` drops nothing, counts what it would
/// drop on x/a's node, and explain says it would drop.
fn monitor(c: &Ctx<'_>) -> Ports {
    c.create(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: try-deny
  namespace: x
  annotations: {switchyard.dev/policy-mode: monitor}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
",
    );
    // Applied when explain sees it (then the matrix must still be open).
    let t0 = Instant::now();
    loop {
        let e = explain(c, "y/b", "x/a", c.families[0]);
        if e["ingress"]["monitoredBy"] == serde_json::json!(["x/try-deny"]) {
            assert_eq!(e["verdict"], "allowed", "{e}");
            assert_eq!(e["ingress"]["wouldDrop"], true, "{e}");
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "monitor policy not applied: {e}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let counter = || counter(c, "node-1", "ingress-monitor.x.try-deny");
    let before = counter();
    c.check(
        "monitor mode drops nothing",
        &[expect(80, "TCP", Table::all(true))],
    );
    assert!(counter() > before, "the would-be drops were not counted");
    let (code, metrics) = c.lab.api_raw("node-1", "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains(
            "switchyard_policy_drops_total{kind=\"NetworkPolicy\",namespace=\"x\",policy=\"try-deny\",direction=\"ingress\",mode=\"monitor\"}"
        ),
        "{metrics}"
    );
    // The module bindings are there too, the policy module serving.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_module_ready{")
                && l.contains("role=\"network-policy\"")
                && l.ends_with("reason=\"Loaded\"} 1")),
        "{metrics}"
    );
    vec![(80, "TCP")]
}

/// A NetworkModule serving only the WasmNetworkPolicies that name it, from
/// a module built into the agent.
fn wasm_module(name: &str, builtin: &str) -> String {
    format!(
        "---
apiVersion: switchyard.dev/v1alpha1
kind: NetworkModule
metadata: {{name: {name}}}
spec:
  role: network-policy
  referencedOnly: true
  source: {{builtin: {builtin}}}
"
    )
}

/// The counter of a policy on a node (`nft list counter`), in packets.
fn counter(c: &Ctx<'_>, node: &str, name: &str) -> u64 {
    let out = c.lab.ok(&[
        "exec",
        &format!("node/{node}"),
        "--",
        "nft",
        "list",
        "counter",
        "inet",
        "switchyard-policy",
        name,
    ]);
    common::counter_packets(&out)
}

/// Scenario 13: The SDK example `egress-allowlist` as a WasmNetworkPolicy:
/// x/a may connect only to y/b's addresses, on TCP 80. Then a config the
/// module's schema refuses is reported and the policy in force stays; then
/// monitor mode drops nothing and counts; explain names the policy and rule.
fn wasm_egress_allowlist(c: &Ctx<'_>) -> Ports {
    c.create(&wasm_module("egress-allowlist", "example-egress-allowlist"));
    let cidrs: Vec<String> = c
        .families
        .iter()
        .map(|f| {
            let ip = c.ip("y/b", f);
            format!("{ip}/{}", if ip.contains(':') { 128 } else { 32 })
        })
        .collect();
    let policy = |annotations: &str, config: &str| {
        format!(
            "---
apiVersion: switchyard.dev/v1alpha1
kind: WasmNetworkPolicy
metadata: {{name: allow-list, namespace: x{annotations}}}
spec:
  module: egress-allowlist
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  config: {config}
"
        )
    };
    let good = format!(
        "{{cidrs: [{}], ports: [{{port: 80}}], allowDns: false}}",
        cidrs.join(", ")
    );
    c.create(&policy("", &good));
    let t80 = Table::all(true).deny("x/a", "*").allow("x/a", "y/b");
    let t81 = Table::all(true).deny("x/a", "*");
    c.check(
        "x/a egress only to y/b on TCP 80",
        &[
            expect(80, "TCP", t80.clone()),
            expect(81, "TCP", t81.clone()),
        ],
    );
    for family in &c.families {
        let e = explain(c, "x/a", "y/b", family);
        assert_eq!(e["verdict"], "allowed", "{e}");
        assert_eq!(
            e["egress"]["allowedBy"][0]["policy"], "WasmNetworkPolicy x/allow-list",
            "{e}"
        );
        assert!(
            e["egress"]["allowedBy"][0]["ruleId"]
                .as_str()
                .unwrap()
                .starts_with("egress/allow-list/"),
            "{e}"
        );
        let e = explain(c, "x/a", "y/c", family);
        assert_eq!(e["verdict"], "denied", "{e}");
        assert_eq!(
            e["egress"]["isolatedBy"],
            serde_json::json!(["WasmNetworkPolicy x/allow-list"]),
            "{e}"
        );
    }
    // A config the module's schema refuses: the lab admits the object (the
    // CRD cannot know the module's schema), the agent reports it, and the
    // policy in force stays.
    c.apply(&policy("", "{cidrs: 5}"));
    let t0 = Instant::now();
    loop {
        let (_, r) = c.lab.api(node_of(0, 0), "/api/v1/node");
        let e = r["policyErrors"]["WasmNetworkPolicy x/allow-list"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if e.contains("spec.config") && e.contains("config.cidrs") {
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "no config error reported: {r}");
        std::thread::sleep(Duration::from_millis(300));
    }
    c.check(
        "a refused config keeps the policy in force",
        &[expect(80, "TCP", t80)],
    );
    // Monitor mode: nothing dropped, the would-be drops counted.
    c.apply(&policy(
        ", annotations: {switchyard.dev/policy-mode: monitor}",
        &good,
    ));
    let name = "egress-monitor-wasm.x.allow-list";
    let t0 = Instant::now();
    while !c
        .lab
        .run(&[
            "exec",
            "node/node-1",
            "--",
            "nft",
            "list",
            "counter",
            "inet",
            "switchyard-policy",
            name,
        ])
        .status
        .success()
    {
        assert!(
            t0.elapsed() < DEADLINE,
            "the monitor counter {name} never appeared"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let before = counter(c, "node-1", name);
    c.check(
        "monitor mode drops nothing",
        &[expect(81, "TCP", Table::all(true))],
    );
    assert!(
        counter(c, "node-1", name) > before,
        "would-be drops not counted"
    );
    let (_, metrics) = c.lab.api_raw("node-1", "/metrics");
    assert!(
        metrics.contains(
            "switchyard_policy_drops_total{kind=\"WasmNetworkPolicy\",namespace=\"x\",policy=\"allow-list\",direction=\"egress\",mode=\"monitor\"}"
        ),
        "{metrics}"
    );
    vec![(80, "TCP"), (81, "TCP")]
}

/// Scenario 14: The SDK example `namespace-isolation` as a WasmNetworkPolicy
/// selecting all of x: x's pods talk only to each other, and to "DNS",
/// which this test puts on port 81 of z/c (config `dnsPorts`, `dnsCidrs`).
fn wasm_namespace_isolation(c: &Ctx<'_>) -> Ports {
    c.create(&wasm_module(
        "namespace-isolation",
        "example-namespace-isolation",
    ));
    let dns: Vec<String> = c
        .families
        .iter()
        .map(|f| format!("\"{}\"", c.ip("z/c", f)))
        .collect();
    c.create(&format!(
        "---
apiVersion: switchyard.dev/v1alpha1
kind: WasmNetworkPolicy
metadata: {{name: isolation, namespace: x}}
spec:
  module: namespace-isolation
  podSelector: {{}}
  policyTypes: [Ingress, Egress]
  config: {{dnsPorts: [81], dnsCidrs: [{}]}}
",
        dns.join(", ")
    ));
    let island = Table::all(true)
        .deny("x/*", "*")
        .deny("*", "x/*")
        .allow("x/*", "x/*");
    let with_dns = island.clone().allow("x/*", "z/c");
    c.check(
        "x talks only to x, and to DNS on z/c",
        &[
            expect(80, "TCP", island.clone()),
            expect(80, "UDP", island),
            expect(81, "UDP", with_dns.clone()),
            expect(81, "TCP", with_dns),
        ],
    );
    vec![(80, "TCP"), (80, "UDP"), (81, "UDP"), (81, "TCP")]
}

/// Scenario 6: A named port: ingress to x/a on `serve-81-tcp` only, from everyone.
fn named_port(c: &Ctx<'_>) -> Ports {
    c.create(&policy(
        "x",
        "named-port",
        "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - {port: serve-81-tcp}
",
    ));
    let closed = Table::all(true).deny("*", "x/a");
    c.check(
        "x/a only on port serve-81-tcp",
        &[
            expect(80, "TCP", closed.clone()),
            expect(81, "UDP", closed),
            expect(81, "TCP", Table::all(true)),
        ],
    );
    vec![(80, "TCP"), (81, "UDP"), (81, "TCP")]
}

/// Scenario 7: A port range: ingress to x/a on TCP 81 to 82, from everyone.
fn end_port(c: &Ctx<'_>) -> Ports {
    c.create(&policy(
        "x",
        "end-port",
        "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - {protocol: TCP, port: 81, endPort: 82}
",
    ));
    c.check(
        "x/a only on TCP 81-82",
        &[
            expect(80, "TCP", Table::all(true).deny("*", "x/a")),
            expect(81, "TCP", Table::all(true)),
        ],
    );
    vec![(80, "TCP"), (81, "TCP")]
}

/// Scenario 8: Default deny egress in y, and egress from y to x allowed: y's pods
/// reach only x's pods (and themselves).
fn egress(c: &Ctx<'_>) -> Ports {
    c.create(&format!(
        "{}{}",
        policy(
            "y",
            "deny-egress",
            "  podSelector: {}\n  policyTypes: [Egress]\n"
        ),
        policy(
            "y",
            "egress-to-x",
            "  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
",
        )
    ));
    let t = Table::all(true).deny("y/*", "*").allow("y/*", "x/*");
    c.check(
        "y egresses only to x",
        &[expect(80, "TCP", t.clone()), expect(80, "UDP", t)],
    );
    vec![(80, "TCP"), (80, "UDP")]
}

/// Scenario 9: Two policies select x/a: what either allows is allowed.
fn union(c: &Ctx<'_>) -> Ports {
    c.create(&format!(
        "{}{}",
        policy(
            "x",
            "from-x-b",
            "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
",
        ),
        policy(
            "x",
            "from-team-z",
            "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: z}}
",
        )
    ));
    let t = Table::all(true)
        .deny("*", "x/a")
        .allow("x/b", "x/a")
        .allow("z/*", "x/a");
    c.check("x/a from x/b or team=z (union)", &[expect(80, "TCP", t)]);
    vec![(80, "TCP")]
}

/// Scenario 10: Changes while the policy is in force: a pod's labels, then the
/// policy itself.
fn updates(c: &Ctx<'_>) -> Ports {
    let allow = |label: &str| {
        policy(
            "x",
            "allow-label",
            &format!(
                "  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{pod: {label}}}}}
"
            ),
        )
    };
    let closed = Table::all(true).deny("*", "x/a");
    c.create(&allow("b"));
    c.check(
        "x/a from pod b",
        &[expect(80, "TCP", closed.clone().allow("x/b", "x/a"))],
    );
    // The lab keeps a running pod and changes its labels.
    c.apply(&relabelled("x/c", "b"));
    c.check(
        "x/c relabelled pod=b: it reaches x/a",
        &[expect(
            80,
            "TCP",
            closed.clone().allow("x/b", "x/a").allow("x/c", "x/a"),
        )],
    );
    c.create(&allow("c"));
    c.check(
        "policy now allows pod=c (nobody has it)",
        &[expect(80, "TCP", closed.clone())],
    );
    c.apply(&relabelled("x/c", "c"));
    c.check(
        "x/c labelled pod=c again: it alone reaches x/a",
        &[expect(80, "TCP", closed.allow("x/c", "x/a"))],
    );
    vec![(80, "TCP")]
}

/// Scenario 11: A Service in front of x/a: policy is judged on the backend, after
/// DNAT.
fn service(c: &Ctx<'_>) -> Ports {
    c.create(
        "---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {pod: a}
  ports: [{port: 8080, targetPort: 80}]
",
    );
    // Without policy, the Service works for everyone.
    for family in &c.families {
        for from in ["x/b", "y/b", "x/c"] {
            let answer = c
                .lab
                .probe_until_allowed(from, "web.x", 8080, "TCP", family);
            eprintln!("    ok   {from} -> web.x:8080 ({family}) allowed, no policy: {answer}");
        }
    }
    c.create(&format!(
        "{}{}",
        policy(
            "x",
            "deny-ingress",
            "  podSelector: {}\n  policyTypes: [Ingress]\n"
        ),
        policy(
            "x",
            "a-from-b",
            "  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
",
        )
    ));
    let t = Table::all(true).deny("*", "x/*").allow("x/b", "x/a");
    c.check("default deny in x, x/a from x/b", &[expect(80, "TCP", t)]);
    for family in &c.families {
        c.probe_until("y/b", "web.x", 8080, family, false);
        c.probe_until("x/c", "web.x", 8080, family, false);
        let answer = c
            .lab
            .probe_until_allowed("x/b", "web.x", 8080, "TCP", family);
        eprintln!("    ok   x/b -> web.x:8080 ({family}) allowed: {answer}");
        assert!(
            answer.contains("pod=x/a"),
            "{}: x/b -> web.x ({family}) answered by {answer}",
            c.what
        );
        // Still denied: the allowed probe did not open anything.
        let (ok, answer) = c.lab.probe("y/b", "web.x", 8080, "TCP", family);
        assert!(!ok, "{}: y/b -> web.x ({family}): {answer}", c.what);
    }
    vec![(80, "TCP")]
}

type Scenario = for<'a, 'b> fn(&'a Ctx<'b>) -> Ports;

const SCENARIOS: [(&str, Scenario); 14] = [
    ("default-deny-ingress", default_deny_ingress),
    ("pod-selector", pod_selector),
    ("namespace-selector", namespace_selector),
    ("pod-and-namespace", pod_and_namespace),
    ("ipblock", ip_block_except),
    ("named-port", named_port),
    ("end-port", end_port),
    ("egress", egress),
    ("union", union),
    ("updates", updates),
    ("service", service),
    ("monitor", monitor),
    ("wasm-egress-allowlist", wasm_egress_allowlist),
    ("wasm-namespace-isolation", wasm_namespace_isolation),
];

/// Set the pods up, check the baseline, then run every scenario (those of
/// `NETPOL_ONLY` if set). A failed scenario does not stop the others, as
/// long as the lab goes back to everything reachable after it; the test
/// fails at the end naming every scenario that failed.
fn suite(lab: &TestLab, families: &[&'static str]) {
    let t0 = Instant::now();
    let base = Ctx {
        lab,
        what: "set-up",
        families: families.to_vec(),
        created: RefCell::new(vec![]),
    };
    base.apply(&setup_yaml());
    // All nine pods run, with an address in every family.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = lab.status();
        let not_ready: Vec<String> = all_pods()
            .into_iter()
            .filter(|p| {
                pod_in(&s, p).is_none_or(|v| {
                    v["phase"] != "Running"
                        || v["ips"].as_array().map_or(0, |a| a.len()) != families.len()
                })
            })
            .collect();
        if not_ready.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods not Running with {} addresses: {not_ready:?}\n{s:#}",
            families.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let open = Table::all(true);
    base.check(
        "baseline: no policy, everything reachable",
        &[
            expect(80, "TCP", open.clone()),
            expect(81, "TCP", open.clone()),
            expect(80, "UDP", open.clone()),
            expect(81, "UDP", open),
        ],
    );
    eprintln!("set-up done in {:.1}s", t0.elapsed().as_secs_f64());

    let only: Option<Vec<String>> = std::env::var("NETPOL_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let mut failed = vec![];
    for (name, scenario) in SCENARIOS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        let t = Instant::now();
        eprintln!("--- scenario {name}");
        let c = Ctx {
            lab,
            what: name,
            families: families.to_vec(),
            created: RefCell::new(vec![]),
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&c)));
        let ports: BTreeSet<(u16, &'static str)> = match r {
            Ok(p) => p.into_iter().collect(),
            Err(_) => {
                failed.push(name);
                [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP")]
                    .into_iter()
                    .collect()
            }
        };
        // A lab that does not go back to open makes every later scenario
        // meaningless: that fails the test here.
        c.cleanup(&ports);
        eprintln!(
            "--- scenario {name}: {} in {:.1}s",
            if failed.last() == Some(&name) {
                "FAILED"
            } else {
                "passed"
            },
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!("suite done in {:.1}s", t0.elapsed().as_secs_f64());
    assert!(
        failed.is_empty(),
        "scenarios that failed (see above): {failed:?}"
    );
}

#[test]
fn network_policy_flat_dual_stack() {
    let lab = TestLab::shared("npflat", 2, "flat", "dual");
    suite(&lab, &["ipv4", "ipv6"]);
}

#[test]
fn network_policy_overlay_ipv4() {
    let lab = TestLab::shared("npover", 2, "overlay", "ipv4");
    suite(&lab, &["ipv4"]);
}
