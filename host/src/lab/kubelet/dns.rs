//! A pod's resolver configuration, formed as the kubelet forms it
//! (`pkg/kubelet/network/dns/dns.go` at the Kubernetes version the lab pins)
//! and written as the container runtime writes it (containerd: a `search`
//! line, one `nameserver` line per server, an `options` line, each only when
//! it has something to say).
//!
//! Everything here is pure: the kubelet's flags (`--cluster-dns`,
//! `--cluster-domain`, the content of `--resolv-conf`) and the Pod go in; the
//! configuration and the Warning Events the kubelet would post come out.
//! [`super::pods`] reads the node's file, posts the Events and writes the
//! result where `ip netns exec` finds it.
//!
//! The kubelet's rules, in order:
//! - the policy picks a base: `ClusterFirst` (the API server's default) and
//!   `ClusterFirstWithHostNet` the cluster's DNS, except that a hostNetwork
//!   pod under `ClusterFirst` gets the node's; `Default` the node's; `None`
//!   nothing;
//! - the cluster's base: the `--cluster-dns` servers only, the search paths
//!   `NS.svc.DOMAIN svc.DOMAIN DOMAIN` then the node's (duplicates dropped),
//!   and `options ndots:5` alone. With no `--cluster-dns` the pod falls back
//!   to the node's, with a `MissingClusterDNS` Event;
//! - `dnsConfig` is appended: nameservers and searches after the base's,
//!   duplicates dropped; options merged by name, `dnsConfig`'s winning;
//! - then the limits: at most 3 nameservers; at most 32 search paths, none
//!   longer than 253 characters, at most 2048 characters in the line (cut
//!   from the end), each trim reported as a `DNSConfigForming` Event.
//!
//! One difference, on purpose: the kubelet merges options through a Go map,
//! so their order changes from run to run; here they keep the order in which
//! their names first appear.

use k8s_openapi::api::core::v1::Pod;
use std::net::IpAddr;
use std::path::PathBuf;

/// The kubelet's limits (`pkg/apis/core/validation`: `MaxDNSNameservers`,
/// `MaxDNSSearchPaths`, `MaxDNSSearchListChars`), from libc's resolver.
pub const MAX_NAMESERVERS: usize = 3;
pub const MAX_SEARCH_PATHS: usize = 32;
pub const MAX_SEARCH_LINE: usize = 2048;
/// A search path longer than this is dropped (`DNS1123SubdomainMaxLength`):
/// some resolvers (glibc 2.28) abort on longer ones.
pub const MAX_SEARCH_PATH: usize = 253;
/// The cluster domain unless the ClusterNetwork says otherwise.
pub use crate::dns::zone::DEFAULT_DOMAIN as DEFAULT_CLUSTER_DOMAIN;
/// The options the cluster's base has.
const CLUSTER_OPTIONS: &str = "ndots:5";

/// What a resolv.conf says, as the kubelet reads and the runtime writes one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Read a resolv.conf as the kubelet does (`parseResolvConf`):
    /// `nameserver` lines accumulate (the first word after the keyword
    /// only), the last `search` line wins (a lone `.` skipped, one trailing
    /// dot dropped), `options` accumulate with a later option replacing an
    /// earlier one of the same name; lines starting with `#` are comments.
    /// A `nameserver` line without an address is an error, which fails the
    /// pod's sandbox.
    pub fn parse(text: &str) -> Result<ResolvConf, String> {
        let mut c = ResolvConf::default();
        let mut errors = vec![];
        for line in text.split('\n') {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.first() {
                Some(&"nameserver") => match fields.get(1) {
                    Some(ns) => c.nameservers.push(ns.to_string()),
                    None => errors.push("nameserver list is empty"),
                },
                Some(&"search") => {
                    c.searches = fields[1..]
                        .iter()
                        .filter(|s| **s != ".")
                        .map(|s| s.strip_suffix('.').unwrap_or(s).to_string())
                        .collect();
                }
                Some(&"options") => {
                    for o in &fields[1..] {
                        let name = o.split(':').next().unwrap_or_default();
                        match c
                            .options
                            .iter_mut()
                            .find(|x| x.split(':').next() == Some(name))
                        {
                            Some(x) => *x = o.to_string(),
                            None => c.options.push(o.to_string()),
                        }
                    }
                }
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(format!(
                "Encountered error while parsing resolv conf file. Error: {}",
                errors.join(", ")
            ))
        }
    }

    /// The file, as containerd writes it (`search`, `nameserver`s,
    /// `options`). An empty configuration is an empty file (containerd
    /// would copy the machine's own instead; the API server refuses the one
    /// pod that could ask for nothing, `None` without nameservers).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// How a kubelet is configured for DNS: its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletDns {
    /// `--cluster-dns`: the cluster DNS Service's ClusterIPs.
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain` (empty: none, so no cluster search paths).
    pub cluster_domain: String,
    /// What the node's `--resolv-conf` says; `None` for `--resolv-conf=""`,
    /// which points pods of the node's policy at the loopback.
    pub host: Option<ResolvConf>,
    /// The node's addresses (for `--resolv-conf=""`: one loopback server
    /// per family).
    pub node_ips: Vec<IpAddr>,
}

/// The kubelet's DNS flags, as `lab kubelet` is given them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsFlags {
    /// `--cluster-dns`.
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// `--resolv-conf` (`None` for `--resolv-conf=""`).
    pub resolv_conf: Option<PathBuf>,
}

impl DnsFlags {
    /// The kubelet's configuration with the node's resolv.conf as it is
    /// now: the kubelet reads it again for every pod sandbox, and a file it
    /// cannot read or parse fails the sandbox.
    pub fn read(&self, node_ips: &[IpAddr]) -> Result<KubeletDns, String> {
        let host = match &self.resolv_conf {
            None => None,
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| format!("open {}: {e}", p.display()))?;
                Some(ResolvConf::parse(&text)?)
            }
        };
        Ok(KubeletDns {
            cluster_dns: self.cluster_dns.clone(),
            cluster_domain: self.cluster_domain.clone(),
            host,
            node_ips: node_ips.to_vec(),
        })
    }
}

/// A Warning Event the kubelet posts on the pod while forming its DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsWarning {
    pub reason: &'static str,
    pub message: String,
}

/// A pod's resolver configuration and what the kubelet said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDns {
    pub config: ResolvConf,
    pub warnings: Vec<DnsWarning>,
}

/// Where a pod's configuration starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Cluster,
    Host,
    Empty,
}

fn base_of(policy: Option<&str>, host_network: bool) -> Base {
    match policy.unwrap_or("ClusterFirst") {
        "None" => Base::Empty,
        "ClusterFirstWithHostNet" => Base::Cluster,
        "ClusterFirst" if !host_network => Base::Cluster,
        "ClusterFirst" | "Default" => Base::Host,
        // The API server refuses any other; the kubelet logs it and goes on
        // with the cluster's.
        _ => Base::Cluster,
    }
}

/// `items` without repeats, first occurrence kept.
fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// The kubelet's `mergeDNSOptions`: options by name, `extra` winning, each
/// rendered `name` or `name:value` (an empty value drops the colon).
fn merge_options(existing: &[String], extra: &[(String, Option<String>)]) -> Vec<String> {
    let mut merged: Vec<(String, String)> = vec![];
    let mut set = |name: &str, value: &str| match merged.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => merged.push((name.to_string(), value.to_string())),
    };
    for o in existing {
        let (name, value) = o.split_once(':').unwrap_or((o, ""));
        set(name, value);
    }
    for (name, value) in extra {
        set(name, value.as_deref().unwrap_or(""));
    }
    merged
        .into_iter()
        .map(|(n, v)| if v.is_empty() { n } else { format!("{n}:{v}") })
        .collect()
}

/// The kubelet's `formDNSSearchFitsLimits`: the applied search paths, and
/// whether anything was cut.
fn fit_searches(mut searches: Vec<String>) -> (Vec<String>, bool) {
    let mut cut = false;
    if searches.len() > MAX_SEARCH_PATHS {
        searches.truncate(MAX_SEARCH_PATHS);
        cut = true;
    }
    let before = searches.len();
    searches.retain(|s| s.len() <= MAX_SEARCH_PATH);
    cut |= searches.len() != before;
    let line = searches.join(" ").len();
    if line > MAX_SEARCH_LINE {
        // Drop whole paths from the end until the line fits, counting each
        // with the space before it, as the kubelet counts.
        let mut dropped = 0;
        let mut dropped_len = 0;
        for s in searches.iter().rev() {
            dropped_len += s.len() + 1;
            dropped += 1;
            if line - dropped_len <= MAX_SEARCH_LINE {
                break;
            }
        }
        searches.truncate(searches.len() - dropped);
        cut = true;
    }
    (searches, cut)
}

/// The resolver configuration the kubelet forms for `pod` (its namespace,
/// uid, `spec.dnsPolicy`, `spec.dnsConfig`, `spec.hostNetwork`), and the
/// Warning Events it posts on the pod meanwhile.
pub fn pod_dns(pod: &Pod, kubelet: &KubeletDns) -> PodDns {
    let spec = pod.spec.as_ref();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let base = base_of(spec.and_then(|s| s.dns_policy.as_deref()), host_network);
    let mut warnings = vec![];
    let mut c = kubelet.host.clone().unwrap_or_default();
    match base {
        Base::Empty => c = ResolvConf::default(),
        Base::Cluster if !kubelet.cluster_dns.is_empty() => {
            // The cluster DNS server is the pod's only server: it forwards
            // what it does not know itself.
            c.nameservers = kubelet
                .cluster_dns
                .iter()
                .map(|ip| ip.to_string())
                .collect();
            if !kubelet.cluster_domain.is_empty() {
                let d = &kubelet.cluster_domain;
                let mut s = vec![
                    format!("{namespace}.svc.{d}"),
                    format!("svc.{d}"),
                    d.clone(),
                ];
                s.append(&mut c.searches);
                c.searches = dedup(s);
            }
            c.options = vec![CLUSTER_OPTIONS.to_string()];
        }
        Base::Cluster | Base::Host => {
            if base == Base::Cluster {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                warnings.push(DnsWarning {
                    reason: "MissingClusterDNS",
                    message: format!(
                        "pod: \"{name}_{namespace}({uid})\". kubelet does not have ClusterDNS IP \
                         configured and cannot create Pod using \"ClusterFirst\" policy. Falling \
                         back to \"Default\" policy."
                    ),
                });
            }
            if kubelet.host.is_none() {
                // `--resolv-conf=""`: "the nameserver on the local machine".
                for ip in &kubelet.node_ips {
                    c.nameservers
                        .push(if ip.is_ipv6() { "::1" } else { "127.0.0.1" }.into());
                }
                if c.nameservers.is_empty() {
                    c.nameservers.push("127.0.0.1".into());
                }
                c.searches = vec![".".into()];
            }
        }
    }
    if let Some(dc) = spec.and_then(|s| s.dns_config.as_ref()) {
        c.nameservers
            .extend(dc.nameservers.iter().flatten().cloned());
        c.nameservers = dedup(std::mem::take(&mut c.nameservers));
        c.searches.extend(dc.searches.iter().flatten().cloned());
        c.searches = dedup(std::mem::take(&mut c.searches));
        let extra: Vec<(String, Option<String>)> = dc
            .options
            .iter()
            .flatten()
            // The API server refuses an option without a name.
            .filter_map(|o| Some((o.name.clone().filter(|n| !n.is_empty())?, o.value.clone())))
            .collect();
        c.options = merge_options(&c.options, &extra);
    }
    if c.nameservers.len() > MAX_NAMESERVERS {
        c.nameservers.truncate(MAX_NAMESERVERS);
        warnings.push(DnsWarning {
            reason: "DNSConfigForming",
            message: format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the applied \
                 nameserver line is: {}",
                c.nameservers.join(" ")
            ),
        });
    }
    let (searches, cut) = fit_searches(std::mem::take(&mut c.searches));
    c.searches = searches;
    if cut {
        warnings.push(DnsWarning {
            reason: "DNSConfigForming",
            message: format!(
                "Search Line limits were exceeded, some search paths have been omitted, the \
                 applied search line is: {}",
                c.searches.join(" ")
            ),
        });
    }
    PodDns {
        config: c,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn host() -> ResolvConf {
        ResolvConf::parse(
            "# the node's\nnameserver 198.18.1.100\nnameserver fd18:0:1::100\n\
             search corp.example lab.example.\noptions timeout:2 edns0\n",
        )
        .unwrap()
    }

    fn kubelet() -> KubeletDns {
        KubeletDns {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            host: Some(host()),
            node_ips: vec!["198.18.1.11".parse().unwrap()],
        }
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const CLUSTER_SEARCH: [&str; 5] = [
        "shop.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "corp.example",
        "lab.example",
    ];

    #[test]
    fn resolv_conf_is_read_as_the_kubelet_reads_it() {
        let p = |s: &str| ResolvConf::parse(s).unwrap();
        assert_eq!(p(""), ResolvConf::default());
        assert_eq!(p(" #comment\n\t\n"), ResolvConf::default());
        assert_eq!(
            p("nameserver \t 1.2.3.4 #comment\n nameserver 5.6.7.8").nameservers,
            strs(&["1.2.3.4", "5.6.7.8"])
        );
        assert_eq!(p("search foo\nsearch bar").searches, strs(&["bar"]));
        assert_eq!(p("search . foo. .  bar").searches, strs(&["foo", "bar"]));
        assert!(p("search ").searches.is_empty());
        assert_eq!(
            p("options ndots:1 timeout:3 timeout:1 attempts:3\noptions ndots:5").options,
            strs(&["ndots:5", "timeout:1", "attempts:3"])
        );
        assert_eq!(
            p("nameserver 1.2.3.4\nsearch foo\nnameserver 5.6.7.8\nsearch bar\noptions ndots:5"),
            ResolvConf {
                nameservers: strs(&["1.2.3.4", "5.6.7.8"]),
                searches: strs(&["bar"]),
                options: strs(&["ndots:5"]),
            }
        );
        let e = ResolvConf::parse("#comment\nnameserver\nsearch").unwrap_err();
        assert!(e.contains("nameserver list is empty"), "{e}");
    }

    #[test]
    fn it_is_written_as_containerd_writes_it() {
        let c = ResolvConf {
            nameservers: strs(&["10.96.0.10", "fd00:10:96::a"]),
            searches: strs(&["a.svc.cluster.local", "svc.cluster.local"]),
            options: strs(&["ndots:5", "edns0"]),
        };
        assert_eq!(
            c.render(),
            "search a.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n\
             nameserver fd00:10:96::a\noptions ndots:5 edns0\n"
        );
        assert_eq!(ResolvConf::parse(&c.render()).unwrap(), c);
        assert_eq!(ResolvConf::default().render(), "");
    }

    #[test]
    fn cluster_first_is_the_cluster_dns_with_the_nodes_search_paths() {
        for policy in [json!(null), json!("ClusterFirst")] {
            let d = pod_dns(
                &pod(json!({"dnsPolicy": policy, "containers": []})),
                &kubelet(),
            );
            assert_eq!(
                d.config,
                ResolvConf {
                    nameservers: strs(&["10.96.0.10"]),
                    searches: strs(&CLUSTER_SEARCH),
                    options: strs(&["ndots:5"]),
                },
                "{policy}: the node's servers and options are not the pod's"
            );
            assert!(d.warnings.is_empty());
            assert_eq!(
                d.config.render(),
                "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example \
                 lab.example\nnameserver 10.96.0.10\noptions ndots:5\n"
            );
        }
    }

    #[test]
    fn dual_stack_cluster_dns_names_both_families_in_order() {
        let mut k = kubelet();
        k.cluster_dns = vec![
            "10.96.0.10".parse().unwrap(),
            "fd00:10:96::a".parse().unwrap(),
        ];
        let d = pod_dns(&pod(json!({"containers": []})), &k);
        assert_eq!(d.config.nameservers, strs(&["10.96.0.10", "fd00:10:96::a"]));
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn the_node_search_paths_that_repeat_the_clusters_go() {
        let mut k = kubelet();
        k.host =
            Some(ResolvConf::parse("nameserver 1.1.1.1\nsearch cluster.local x.example").unwrap());
        let d = pod_dns(&pod(json!({})), &k);
        assert_eq!(
            d.config.searches,
            strs(&[
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "x.example"
            ])
        );
    }

    #[test]
    fn a_custom_cluster_domain_and_none_at_all() {
        let mut k = kubelet();
        k.cluster_domain = "corp.internal".into();
        let d = pod_dns(&pod(json!({})), &k);
        assert_eq!(
            &d.config.searches[..3],
            &strs(&[
                "shop.svc.corp.internal",
                "svc.corp.internal",
                "corp.internal"
            ])[..]
        );
        k.cluster_domain = String::new();
        let d = pod_dns(&pod(json!({})), &k);
        assert_eq!(d.config.searches, strs(&["corp.example", "lab.example"]));
        assert_eq!(d.config.nameservers, strs(&["10.96.0.10"]));
        assert_eq!(d.config.options, strs(&["ndots:5"]));
    }

    #[test]
    fn default_is_the_nodes_configuration() {
        let d = pod_dns(&pod(json!({"dnsPolicy": "Default"})), &kubelet());
        assert_eq!(d.config, host());
        assert_eq!(
            d.config.render(),
            "search corp.example lab.example\nnameserver 198.18.1.100\nnameserver fd18:0:1::100\n\
             options timeout:2 edns0\n"
        );
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn host_network_pods_get_the_node_unless_they_ask_for_the_cluster() {
        let d = pod_dns(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirst"})),
            &kubelet(),
        );
        assert_eq!(
            d.config,
            host(),
            "ClusterFirst on the host network falls back"
        );
        assert!(d.warnings.is_empty(), "silently, as the kubelet does");
        let d = pod_dns(&pod(json!({"hostNetwork": true})), &kubelet());
        assert_eq!(d.config, host(), "ClusterFirst is the default policy");
        let d = pod_dns(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &kubelet(),
        );
        assert_eq!(d.config.nameservers, strs(&["10.96.0.10"]));
        assert_eq!(d.config.searches, strs(&CLUSTER_SEARCH));
        assert_eq!(d.config.options, strs(&["ndots:5"]));
        // Off the host network, ClusterFirstWithHostNet is ClusterFirst.
        let d = pod_dns(
            &pod(json!({"dnsPolicy": "ClusterFirstWithHostNet"})),
            &kubelet(),
        );
        assert_eq!(d.config.nameservers, strs(&["10.96.0.10"]));
    }

    #[test]
    fn none_takes_everything_from_dns_config() {
        let d = pod_dns(
            &pod(json!({
                "dnsPolicy": "None",
                "dnsConfig": {
                    "nameservers": ["192.0.2.53", "192.0.2.53", "2001:db8::53"],
                    "searches": ["a.example", "b.example", "a.example"],
                    "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
                },
            })),
            &kubelet(),
        );
        assert_eq!(
            d.config,
            ResolvConf {
                nameservers: strs(&["192.0.2.53", "2001:db8::53"]),
                searches: strs(&["a.example", "b.example"]),
                options: strs(&["ndots:2", "edns0"]),
            }
        );
        assert!(d.warnings.is_empty());
        assert_eq!(
            d.config.render(),
            "search a.example b.example\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n\
             options ndots:2 edns0\n"
        );
    }

    #[test]
    fn dns_config_is_appended_deduplicated_and_its_options_win() {
        let d = pod_dns(
            &pod(json!({
                "dnsConfig": {
                    "nameservers": ["10.96.0.10", "192.0.2.53"],
                    "searches": ["svc.cluster.local", "extra.example"],
                    "options": [
                        {"name": "ndots", "value": "2"},
                        {"name": "single-request-reopen"},
                        {"name": "timeout", "value": ""},
                    ],
                },
            })),
            &kubelet(),
        );
        let mut searches = strs(&CLUSTER_SEARCH);
        searches.push("extra.example".into());
        assert_eq!(
            d.config,
            ResolvConf {
                nameservers: strs(&["10.96.0.10", "192.0.2.53"]),
                searches,
                options: strs(&["ndots:2", "single-request-reopen", "timeout"]),
            }
        );
        // Under Default the node's options are merged with the pod's.
        let d = pod_dns(
            &pod(json!({
                "dnsPolicy": "Default",
                "dnsConfig": {"options": [{"name": "timeout", "value": "5"}, {"name": "rotate"}]},
            })),
            &kubelet(),
        );
        assert_eq!(d.config.options, strs(&["timeout:5", "edns0", "rotate"]));
        assert_eq!(d.config.nameservers, host().nameservers);
    }

    #[test]
    fn options_merge_as_the_kubelet_merges_them() {
        let o = |n: &str, v: Option<&str>| (n.to_string(), v.map(str::to_string));
        let existing = strs(&["ndots:5", "debug"]);
        assert_eq!(merge_options(&existing, &[]), existing);
        assert_eq!(
            merge_options(
                &existing,
                &[o("single-request", None), o("attempts", Some("3"))]
            ),
            strs(&["ndots:5", "debug", "single-request", "attempts:3"])
        );
        assert_eq!(
            merge_options(
                &existing,
                &[
                    o("ndots", Some("3")),
                    o("debug", None),
                    o("attempts", Some("3"))
                ]
            ),
            strs(&["ndots:3", "debug", "attempts:3"])
        );
        assert_eq!(merge_options(&strs(&["foo:"]), &[]), strs(&["foo"]));
    }

    #[test]
    fn more_than_three_nameservers_are_cut_with_the_kubelets_event() {
        let mut k = kubelet();
        k.cluster_dns = vec![
            "10.96.0.10".parse().unwrap(),
            "fd00:10:96::a".parse().unwrap(),
        ];
        let d = pod_dns(
            &pod(json!({"dnsConfig": {"nameservers": ["192.0.2.1", "192.0.2.2"]}})),
            &k,
        );
        assert_eq!(
            d.config.nameservers,
            strs(&["10.96.0.10", "fd00:10:96::a", "192.0.2.1"])
        );
        assert_eq!(
            d.warnings,
            vec![DnsWarning {
                reason: "DNSConfigForming",
                message: "Nameserver limits were exceeded, some nameservers have been omitted, \
                          the applied nameserver line is: 10.96.0.10 fd00:10:96::a 192.0.2.1"
                    .into(),
            }]
        );
        // A node with four servers: its pods under Default are cut too.
        k.host = Some(
            ResolvConf::parse(
                "nameserver 1.0.0.1\nnameserver 1.0.0.2\nnameserver 1.0.0.3\nnameserver 1.0.0.4",
            )
            .unwrap(),
        );
        let d = pod_dns(&pod(json!({"dnsPolicy": "Default"})), &k);
        assert_eq!(d.config.nameservers.len(), 3);
        assert_eq!(d.warnings.len(), 1);
    }

    #[test]
    fn more_than_32_search_paths_are_cut_with_the_kubelets_event() {
        // 3 cluster paths, 2 of the node's, 28 of the pod's: 33.
        let extra: Vec<String> = (1..=28).map(|i| format!("s{i}.example")).collect();
        let d = pod_dns(&pod(json!({"dnsConfig": {"searches": extra}})), &kubelet());
        assert_eq!(d.config.searches.len(), 32);
        assert_eq!(d.config.searches.last().unwrap(), "s27.example");
        assert_eq!(d.warnings.len(), 1);
        assert_eq!(d.warnings[0].reason, "DNSConfigForming");
        assert_eq!(
            d.warnings[0].message,
            format!(
                "Search Line limits were exceeded, some search paths have been omitted, the \
                 applied search line is: {}",
                d.config.searches.join(" ")
            )
        );
        // Exactly 32: nothing said.
        let extra: Vec<String> = (1..=27).map(|i| format!("s{i}.example")).collect();
        let d = pod_dns(&pod(json!({"dnsConfig": {"searches": extra}})), &kubelet());
        assert_eq!(d.config.searches.len(), 32);
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn a_search_line_over_2048_characters_is_cut_from_the_end() {
        // The kubelet's own case: 2048 = 128 + 15 × (127 + 1 space).
        let mut fits = vec!["A".repeat(128)];
        fits.extend((0..15).map(|_| "A".repeat(127)));
        assert_eq!(fits.join(" ").len(), 2048);
        assert_eq!(fit_searches(fits.clone()), (fits.clone(), false));
        let mut over = fits.clone();
        over.push("B".into());
        assert_eq!(fit_searches(over), (fits.clone(), true));
        // Several paths go when one is not enough.
        let mut over = fits[..15].to_vec();
        over.extend(["C".repeat(200), "D".repeat(200)]);
        let (kept, cut) = fit_searches(over);
        assert!(cut);
        assert_eq!(kept, fits[..15].to_vec());
        // Through a pod: 3 cluster paths + 2 of the node's + the pod's.
        let mut k = kubelet();
        k.host = Some(ResolvConf::default());
        let long: Vec<String> = (0..12).map(|i| format!("{i:0>190}")).collect();
        let d = pod_dns(&pod(json!({"dnsConfig": {"searches": long}})), &k);
        let line = d.config.searches.join(" ");
        assert!(line.len() <= MAX_SEARCH_LINE, "{}", line.len());
        // 54 characters of cluster paths, then 191 per path with its space:
        // 12 paths make 2346, 11 make 2155, 10 make 1964.
        assert_eq!(d.config.searches.len(), 3 + 10);
        assert_eq!(
            d.warnings,
            vec![DnsWarning {
                reason: "DNSConfigForming",
                message: format!(
                    "Search Line limits were exceeded, some search paths have been omitted, the \
                     applied search line is: {line}"
                ),
            }]
        );
    }

    #[test]
    fn a_search_path_over_253_characters_is_dropped() {
        let ok = "a".repeat(253);
        let long = "b".repeat(254);
        let (kept, cut) = fit_searches(vec![ok.clone(), long, "c".into()]);
        assert!(cut);
        assert_eq!(kept, vec![ok.clone(), "c".to_string()]);
        assert_eq!(fit_searches(vec![ok.clone()]), (vec![ok], false));
    }

    #[test]
    fn both_limits_give_two_events_nameservers_first() {
        let extra: Vec<String> = (1..=40).map(|i| format!("s{i}.example")).collect();
        let d = pod_dns(
            &pod(json!({"dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["192.0.2.1", "192.0.2.2", "192.0.2.3"],
                "searches": extra,
            }})),
            &KubeletDns {
                cluster_dns: vec![],
                ..kubelet()
            },
        );
        // (The API server refuses more than 3 nameservers and 32 paths in
        // dnsConfig itself; the kubelet cuts what it gets all the same.)
        let reasons: Vec<&str> = d.warnings.iter().map(|w| w.reason).collect();
        assert_eq!(reasons, ["DNSConfigForming"], "3 nameservers are not cut");
        assert_eq!(d.config.searches.len(), 32);
        let mut k = kubelet();
        k.cluster_dns = vec![
            "10.96.0.10".parse().unwrap(),
            "fd00:10:96::a".parse().unwrap(),
        ];
        let extra: Vec<String> = (1..=40).map(|i| format!("s{i}.example")).collect();
        let d = pod_dns(
            &pod(
                json!({"dnsConfig": {"nameservers": ["192.0.2.1", "192.0.2.2"], "searches": extra}}),
            ),
            &k,
        );
        assert_eq!(d.warnings.len(), 2);
        assert!(d.warnings[0].message.starts_with("Nameserver limits"));
        assert!(d.warnings[1].message.starts_with("Search Line limits"));
    }

    #[test]
    fn cluster_first_without_cluster_dns_falls_back_to_default_with_an_event() {
        let mut k = kubelet();
        k.cluster_dns.clear();
        let d = pod_dns(&pod(json!({"dnsPolicy": "ClusterFirst"})), &k);
        assert_eq!(d.config, host());
        assert_eq!(
            d.warnings,
            vec![DnsWarning {
                reason: "MissingClusterDNS",
                message: "pod: \"web_shop(u-1)\". kubelet does not have ClusterDNS IP configured \
                          and cannot create Pod using \"ClusterFirst\" policy. Falling back to \
                          \"Default\" policy."
                    .into(),
            }]
        );
        // ClusterFirstWithHostNet falls back the same way (and says ClusterFirst).
        let d = pod_dns(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &k,
        );
        assert_eq!(d.config, host());
        assert_eq!(d.warnings[0].reason, "MissingClusterDNS");
        // Default and None never needed it.
        assert!(
            pod_dns(&pod(json!({"dnsPolicy": "Default"})), &k)
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn an_empty_resolv_conf_flag_points_the_nodes_policy_at_the_loopback() {
        let mut k = kubelet();
        k.host = None;
        k.node_ips = vec![
            "198.18.1.11".parse().unwrap(),
            "fd18:0:1::11".parse().unwrap(),
        ];
        let d = pod_dns(&pod(json!({"dnsPolicy": "Default"})), &k);
        assert_eq!(
            d.config,
            ResolvConf {
                nameservers: strs(&["127.0.0.1", "::1"]),
                searches: strs(&["."]),
                options: vec![],
            }
        );
        k.node_ips.clear();
        let d = pod_dns(&pod(json!({"dnsPolicy": "Default"})), &k);
        assert_eq!(d.config.nameservers, strs(&["127.0.0.1"]));
        // The cluster's base has no node search paths to add then.
        let d = pod_dns(&pod(json!({})), &k);
        assert_eq!(
            d.config.searches,
            strs(&[
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ])
        );
    }
}
