//! Element deltas sent over netlink (`datapath::nft_elements`) against the
//! same deltas as nftables scripts: two namespaces this test creates get the
//! same table and the same changes, one each way, and must list the same.
//! Needs root.

mod common;

use common::netns::{Netns, require_root, sh};
use std::sync::Arc;
use switchyard::contract::bindings::imports::switchyard::plugin::types::*;
use switchyard::contract::wit_ip;
use switchyard::datapath::nft::{
    Nft, NftApplier, NftRunner, delta_script, element_ops, full_script,
};
use switchyard::model::{ObjectKind, ObjectRef, Role};
use switchyard::plan::reconcile::Applier;
use switchyard::plan::skeleton::{self, Skeleton};
use switchyard::plan::{Change, Fragment, PlanStore};

fn a(s: &str) -> NftValue {
    NftValue::Address(wit_ip(s.parse().unwrap()))
}

fn el(set: &str, key: Vec<NftValue>, value: Option<NftMapValue>) -> PlanItem {
    PlanItem {
        rule_id: "r".into(),
        comment: None,
        shared: false,
        body: PlanBody::NftElement(NftElement {
            set: set.into(),
            key,
            value,
        }),
    }
}

fn frag(name: &str, items: Vec<PlanItem>) -> Fragment {
    Fragment {
        object: ObjectRef::new(ObjectKind::Service, "t", name),
        module: "m".into(),
        digest: String::new(),
        items,
    }
}

fn list(ns: &Netns, table: &str) -> String {
    sh(
        "ip",
        &[
            "netns", "exec", &ns.name, "nft", "list", "table", "inet", table,
        ],
    )
}

/// A table in two namespaces, changed in one by netlink and in the other
/// by script.
struct Pair {
    sk: &'static Skeleton,
    store: PlanStore,
    wire: (Netns, Arc<Nft>),
    text: (Netns, Arc<Nft>),
}

impl Pair {
    fn new(tag: &str, role: Role) -> Pair {
        let sk = skeleton::for_role(role);
        let mk = |t: &str| {
            let ns = Netns::new(&format!("{tag}{t}"));
            let nft = Arc::new(Nft::new(Some(ns.path.clone())));
            nft.run(&full_script(sk, std::iter::empty())).unwrap();
            (ns, nft)
        };
        Pair {
            sk,
            store: PlanStore::new(),
            wire: mk("w"),
            text: mk("s"),
        }
    }

    /// Apply fragments (or removals) both ways; returns the netlink
    /// path's outcome.
    fn apply(&mut self, fragments: Vec<Result<Fragment, &str>>) -> Result<usize, String> {
        let changes: Vec<Change> = fragments
            .into_iter()
            .map(|f| match f {
                Ok(f) => self.store.rendered(f).unwrap(),
                Err(name) => self
                    .store
                    .remove(&ObjectRef::new(ObjectKind::Service, "t", name)),
            })
            .collect();
        assert!(
            element_ops(self.sk, &changes).is_some(),
            "elements only: this delta must take the netlink path"
        );
        let r = NftApplier(self.wire.1.clone()).delta(self.sk, &changes);
        let script = delta_script(self.sk.table, &changes).text();
        if r.is_ok() {
            self.text.1.run(&script).unwrap();
        }
        r
    }

    fn same(&self) -> String {
        let (w, t) = (
            list(&self.wire.0, self.sk.table),
            list(&self.text.0, self.sk.table),
        );
        assert_eq!(w, t, "netlink and script disagree");
        w
    }
}

#[test]
fn proxy_elements_over_netlink_are_what_the_script_makes() {
    require_root();
    let mut p = Pair::new("nfte-px", Role::ServiceProxy);
    let backend = |slot: u32, ip: &str, port: u16| {
        el(
            "backends4-tcp",
            vec![
                a("10.96.0.10"),
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(80),
                NftValue::Number(slot),
            ],
            Some(NftMapValue::Data(vec![a(ip), NftValue::Port(port)])),
        )
    };
    let s1 = vec![
        el(
            "service-ips",
            vec![
                a("10.96.0.10"),
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(80),
            ],
            Some(NftMapValue::Data(vec![NftValue::Number(7)])),
        ),
        el(
            "service-ips6",
            vec![
                a("fd00::10"),
                NftValue::Protocol(Protocol::Udp),
                NftValue::Port(53),
            ],
            Some(NftMapValue::Data(vec![NftValue::Number(8)])),
        ),
        el(
            "service-nodeports",
            vec![
                NftValue::Family(IpFamily::Ipv6),
                NftValue::Protocol(Protocol::Sctp),
                NftValue::Port(30080),
            ],
            Some(NftMapValue::Data(vec![NftValue::Number(9)])),
        ),
        el(
            "service-chains",
            vec![
                a("10.96.0.11"),
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(443),
            ],
            Some(NftMapValue::Verdict(NftVerdict::Jump(
                "mark-for-masquerade".into(),
            ))),
        ),
        backend(0, "10.244.1.2", 8080),
        backend(1, "10.244.1.3", 8080),
    ];
    let bytes = p.apply(vec![Ok(frag("s1", s1.clone()))]).unwrap();
    assert!(bytes > 0);
    let t = p.same();
    assert!(t.contains("10.244.1.3 . 8080"), "{t}");
    assert!(t.contains("ipv6 . sctp . 30080"), "{t}");

    // An endpoint replaced, a verdict changed, a second Service added.
    let mut s1b = s1.clone();
    s1b[5] = backend(1, "10.244.1.9", 9090);
    s1b[3] = el(
        "service-chains",
        vec![
            a("10.96.0.11"),
            NftValue::Protocol(Protocol::Tcp),
            NftValue::Port(443),
        ],
        Some(NftMapValue::Verdict(NftVerdict::Goto(
            "restore-mark".into(),
        ))),
    );
    let s2 = vec![el(
        "service-ips",
        vec![
            a("10.96.0.12"),
            NftValue::Protocol(Protocol::Udp),
            NftValue::Port(53),
        ],
        Some(NftMapValue::Data(vec![NftValue::Number(10)])),
    )];
    p.apply(vec![Ok(frag("s1", s1b)), Ok(frag("s2", s2))])
        .unwrap();
    let t = p.same();
    assert!(
        t.contains("10.244.1.9 . 9090") && !t.contains("10.244.1.3"),
        "{t}"
    );
    assert!(t.contains("goto restore-mark"), "{t}");

    // A Service deleted.
    p.apply(vec![Err("s2")]).unwrap();
    assert!(!p.same().contains("10.96.0.12"));
}

#[test]
fn policy_elements_over_netlink_are_what_the_script_makes_and_refusals_change_nothing() {
    require_root();
    let mut p = Pair::new("nfte-pl", Role::NetworkPolicy);
    let f = vec![
        el("ingress-isolated4", vec![a("10.244.1.2")], None),
        el("egress-monitored6", vec![a("fd00::2")], None),
        el(
            "ingress-allow-exact4",
            vec![
                a("10.244.1.2"),
                a("10.244.1.3"),
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(80),
            ],
            None,
        ),
        el(
            "egress-monitor-allow-all-exact6",
            vec![a("fd00::2"), a("fd00::3")],
            None,
        ),
    ];
    p.apply(vec![Ok(frag("p1", f.clone()))]).unwrap();
    let before = p.same();
    assert!(
        before.contains("10.244.1.2 . 10.244.1.3 . tcp . 80"),
        "{before}"
    );
    assert!(before.contains("fd00::2 . fd00::3"), "{before}");

    // The kernel refuses a batch (a jump to a chain that does not exist):
    // nothing of it is applied, and the error says what was refused.
    let bad = vec![
        el(
            "ingress-allow-exact4",
            vec![
                a("10.244.1.2"),
                a("10.244.1.4"),
                NftValue::Protocol(Protocol::Udp),
                NftValue::Port(53),
            ],
            None,
        ),
        el(
            "ingress-drops4",
            vec![a("10.244.1.2")],
            Some(NftMapValue::Verdict(NftVerdict::Jump(
                "no-such-chain".into(),
            ))),
        ),
    ];
    let e = p.apply(vec![Ok(frag("p2", bad))]).unwrap_err();
    assert!(
        e.contains("nf_tables refused the element changes to inet switchyard-policy"),
        "{e}"
    );
    assert_eq!(
        list(&p.wire.0, "switchyard-policy"),
        before,
        "all or nothing"
    );
}
