//! The netlink datapath against namespaces this test creates (root).

mod common;

use common::netns::{Netns, require_root};
use switchyard::datapath::links::{LinkError, Links, Netns as Ns, RouteEntry};
use switchyard::datapath::netlink::{NetlinkLinks, is_netns};

fn pod(links: &NetlinkLinks, p: &Netns, host: &str, v4: &str, v6: &str) {
    let ns = Ns::Pod(p.path.clone());
    let (h, c) = links
        .create_veth(&p.path, "eth0", host, "sytest0", 1450)
        .unwrap();
    assert_eq!(h.master.as_deref(), Some("sytest0"));
    assert_eq!((h.mtu, c.mtu, c.name.as_str()), (1450, 1450, "eth0"));
    assert!(h.up && c.up);
    links.add_address(&ns, "eth0", v4.parse().unwrap()).unwrap();
    links.add_address(&ns, "eth0", v6.parse().unwrap()).unwrap();
    for (dst, gw) in [("0.0.0.0/0", "10.99.0.1"), ("::/0", "fd99::1")] {
        links
            .add_route(
                &ns,
                &RouteEntry {
                    destination: dst.parse().unwrap(),
                    gateway: Some(gw.parse().unwrap()),
                    device: "eth0".into(),
                    source: None,
                    mtu: None,
                },
            )
            .unwrap();
    }
}

#[test]
fn bridge_veths_addresses_routes_and_real_traffic() {
    require_root();
    let node = Netns::new("node");
    let (a, b) = (Netns::new("pa"), Netns::new("pb"));
    assert!(is_netns(&node.path) && !is_netns(std::path::Path::new("/tmp")));
    let links = NetlinkLinks::new(Some(node.path.clone()));

    let gws = [
        "10.99.0.1/24".parse().unwrap(),
        "fd99::1/64".parse().unwrap(),
    ];
    let br = links.ensure_bridge("sytest0", 1450, &gws).unwrap();
    assert_eq!(br.kind, "bridge");
    assert!(br.addresses.contains(&gws[0]) && br.addresses.contains(&gws[1]));
    // Idempotent.
    links.ensure_bridge("sytest0", 1450, &gws).unwrap();

    pod(&links, &a, "syvtesta", "10.99.0.2/24", "fd99::2/64");
    pod(&links, &b, "syvtestb", "10.99.0.3/24", "fd99::3/64");
    assert!(
        node.ip(&["-d", "link", "show", "syvtesta"])
            .contains("hairpin on")
    );

    // Real packets, both families, pod to pod and pod to gateway.
    assert!(a.ping("10.99.0.3"), "IPv4 pod to pod");
    assert!(b.ping("fd99::2"), "IPv6 pod to pod");
    assert!(a.ping("10.99.0.1"), "IPv4 pod to gateway");

    let routes = links.list_routes(&Ns::Pod(a.path.clone()), "eth0").unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.destination.to_string() == "0.0.0.0/0"
                && r.gateway.map(|g| g.to_string()) == Some("10.99.0.1".into())),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|r| r.destination.to_string() == "::/0"),
        "{routes:?}"
    );

    // Errors say what exists or is missing.
    let e = links
        .create_veth(&a.path, "eth0", "syvtestc", "sytest0", 1450)
        .unwrap_err();
    assert!(
        matches!(&e, LinkError::Exists(m) if m.contains("eth0 exists in the pod namespace")),
        "{e}"
    );
    assert!(
        node.ip(&["link"]).find("syvtestc").is_none(),
        "a failed create leaves nothing behind"
    );
    let e = links
        .create_veth(&a.path, "eth1", "syvtesta", "sytest0", 1450)
        .unwrap_err();
    assert!(matches!(e, LinkError::Exists(_)), "{e}");
    let e = links
        .add_address(
            &Ns::Pod(a.path.clone()),
            "eth0",
            "10.99.0.2/24".parse().unwrap(),
        )
        .unwrap_err();
    assert!(matches!(e, LinkError::Exists(_)), "{e}");
    let e = links
        .create_veth(
            std::path::Path::new("/var/run/netns/sy-missing"),
            "eth0",
            "syvtestd",
            "sytest0",
            1450,
        )
        .unwrap_err();
    assert!(matches!(e, LinkError::NotFound(_)), "{e}");

    // Sysctls in the pod's namespace.
    links
        .set_sysctl(
            &Ns::Pod(a.path.clone()),
            "net.ipv4.conf.eth0.arp_notify",
            "1",
        )
        .unwrap();
    let v = String::from_utf8(
        a.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"])
            .stdout,
    )
    .unwrap();
    assert_eq!(v.trim(), "1");

    // Deleting the pod end deletes the pair; deleting again is not an error.
    assert!(links.delete_link(&Ns::Pod(a.path.clone()), "eth0").unwrap());
    assert!(links.get_link(&Ns::Node, "syvtesta").unwrap().is_none());
    assert!(!links.delete_link(&Ns::Pod(a.path.clone()), "eth0").unwrap());
    assert!(!links.delete_link(&Ns::Node, "syvtesta").unwrap());
    assert!(!b.ping("10.99.0.2"));
}
