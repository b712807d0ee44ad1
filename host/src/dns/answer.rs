//! Answering one question from the zone, as the Kubernetes DNS
//! specification says: records for names that exist, NODATA (NOERROR, no
//! answer) for a name that exists without records of the asked type, and
//! NXDOMAIN for a name under the cluster domain that does not; both
//! negative answers carry the zone's SOA so resolvers cache them
//! (RFC 2308). Names outside the zone, and reverse names of addresses the
//! zone does not know, are not answered here: they are forwarded. Pure.

use super::zone::{TTL, Zone};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::IpAddr;

/// The zone's answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Reply {
    fn negative(zone: &Zone, rcode: ResponseCode) -> Reply {
        Reply {
            rcode,
            answers: vec![],
            authorities: vec![soa(zone)],
            additionals: vec![],
        }
    }
}

fn name(s: &str) -> Name {
    // Zone names are built from validated Kubernetes names; one that is
    // not a DNS name (a 64-character label) becomes the root, which no
    // client asked for.
    Name::from_ascii(s).unwrap_or_else(|_| Name::root())
}

/// The zone's SOA record, as CoreDNS shapes it.
pub fn soa(zone: &Zone) -> Record {
    Record::from_rdata(
        name(&zone.domain),
        TTL,
        RData::SOA(SOA::new(
            name(&format!("ns.dns.{}", zone.domain)),
            name(&format!("hostmaster.{}", zone.domain)),
            zone.serial,
            7200,
            1800,
            86400,
            TTL,
        )),
    )
}

fn addresses(owner: &Name, node: &super::zone::Node, qtype: RecordType, out: &mut Vec<Record>) {
    if matches!(qtype, RecordType::A | RecordType::ANY) {
        out.extend(
            node.a
                .iter()
                .map(|a| Record::from_rdata(owner.clone(), TTL, RData::A(A(*a)))),
        );
    }
    if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
        out.extend(
            node.aaaa
                .iter()
                .map(|a| Record::from_rdata(owner.clone(), TTL, RData::AAAA(AAAA(*a)))),
        );
    }
}

/// The zone's answer for `qname` (`k`: its [`key`]) and `qtype`, or `None`
/// when the question is not the zone's to answer.
pub fn resolve(zone: &Zone, qname: &Name, k: &str, qtype: RecordType) -> Option<Reply> {
    if !zone.holds(k) {
        return reverse(zone, qname, k, qtype);
    }
    let mut r = Reply {
        rcode: ResponseCode::NoError,
        answers: vec![],
        authorities: vec![],
        additionals: vec![],
    };
    if k == zone.domain {
        match qtype {
            RecordType::SOA => r.answers.push(soa(zone)),
            RecordType::NS | RecordType::ANY => r.answers.push(Record::from_rdata(
                qname.clone(),
                TTL,
                RData::NS(NS(name(&format!("ns.dns.{}", zone.domain)))),
            )),
            _ => {}
        }
        if qtype == RecordType::ANY {
            r.answers.push(soa(zone));
        }
    } else if let Some(node) = zone.names.get(k) {
        if let Some(target) = &node.cname {
            r.answers.push(Record::from_rdata(
                qname.clone(),
                TTL,
                RData::CNAME(CNAME(name(target))),
            ));
        } else {
            addresses(qname, node, qtype, &mut r.answers);
            if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                for (weight, port, target) in &node.srv {
                    r.answers.push(Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, *weight, *port, name(target))),
                    ));
                    // The targets' addresses, so a client needs no second query.
                    if let Some(t) = zone.names.get(target) {
                        addresses(&name(target), t, RecordType::ANY, &mut r.additionals);
                    }
                }
            }
            if matches!(qtype, RecordType::TXT | RecordType::ANY) && !node.txt.is_empty() {
                r.answers.push(Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::TXT(TXT::new(node.txt.clone())),
                ));
            }
        }
    } else if let Some(ip) = zone.pod(k) {
        let node = super::zone::Node {
            a: match ip {
                IpAddr::V4(v4) => vec![v4],
                IpAddr::V6(_) => vec![],
            },
            aaaa: match ip {
                IpAddr::V6(v6) => vec![v6],
                IpAddr::V4(_) => vec![],
            },
            ..Default::default()
        };
        addresses(qname, &node, qtype, &mut r.answers);
    } else if !zone.interior.contains(k) {
        return Some(Reply::negative(zone, ResponseCode::NXDomain));
    }
    if r.answers.is_empty() {
        return Some(Reply::negative(zone, ResponseCode::NoError));
    }
    Some(r)
}

/// PTR for an address the zone knows; anything else under the reverse
/// zones is the upstream's.
fn reverse(zone: &Zone, qname: &Name, k: &str, qtype: RecordType) -> Option<Reply> {
    if !(k.ends_with(".in-addr.arpa.") || k.ends_with(".ip6.arpa.")) {
        return None;
    }
    let net = qname.parse_arpa_name().ok()?;
    if net.prefix_len() != net.max_prefix_len() {
        return None;
    }
    let names = zone.reverse.get(&net.addr())?;
    let answers = if matches!(qtype, RecordType::PTR | RecordType::ANY) {
        names
            .iter()
            .map(|n| Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(name(n)))))
            .collect()
    } else {
        vec![]
    };
    if answers.is_empty() {
        return Some(Reply::negative(zone, ResponseCode::NoError));
    }
    Some(Reply {
        rcode: ResponseCode::NoError,
        answers,
        authorities: vec![],
        additionals: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::key;
    use crate::dns::zone::tests::cluster;

    fn ask(z: &Zone, n: &str, t: RecordType) -> Option<Reply> {
        resolve(z, &Name::from_ascii(n).unwrap(), &key(n), t)
    }

    fn data(r: &Reply) -> Vec<String> {
        r.answers.iter().map(|a| a.data.to_string()).collect()
    }

    #[test]
    fn every_record_type_of_the_specification() {
        let z = Zone::build(&cluster(), "cluster.local");
        let r = ask(&z, "WEB.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(r.rcode, ResponseCode::NoError);
        assert_eq!(data(&r), ["10.96.0.20"]);
        // The owner keeps the asker's case (0x20 randomisation).
        assert_eq!(
            r.answers[0].name.to_ascii(),
            "WEB.default.svc.cluster.local."
        );
        let r = ask(&z, "web.default.svc.cluster.local.", RecordType::AAAA).unwrap();
        assert_eq!(data(&r), ["fd00:96::20"]);
        let r = ask(
            &z,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .unwrap();
        assert_eq!(data(&r), ["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(r.additionals.len(), 2, "both families of the target");
        let r = ask(&z, "_pg._tcp.db.data.svc.cluster.local.", RecordType::SRV).unwrap();
        assert_eq!(r.answers.len(), 2);
        let r = ask(&z, "db.data.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(r.answers.len(), 2);
        let r = ask(&z, "db-0.db.data.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(data(&r), ["10.244.1.5"]);
        let r = ask(&z, "ext.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(data(&r), ["example.test."]);
        assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
        let r = ask(&z, "10-244-1-9.default.pod.cluster.local.", RecordType::A).unwrap();
        assert_eq!(data(&r), ["10.244.1.9"]);
        let r = ask(
            &z,
            "fd00-244-1--9.default.pod.cluster.local.",
            RecordType::AAAA,
        )
        .unwrap();
        assert_eq!(data(&r), ["fd00:244:1::9"]);
        let r = ask(&z, "20.0.96.10.in-addr.arpa.", RecordType::PTR).unwrap();
        assert_eq!(data(&r), ["web.default.svc.cluster.local."]);
        let v6 = "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.0.d.f.ip6.arpa.";
        let r = ask(&z, v6, RecordType::PTR).unwrap();
        assert_eq!(data(&r), ["web.default.svc.cluster.local."]);
        let r = ask(&z, "9.1.244.10.in-addr.arpa.", RecordType::PTR).unwrap();
        assert_eq!(data(&r), ["10-244-1-9.default.pod.cluster.local."]);
        let r = ask(&z, "dns-version.cluster.local.", RecordType::TXT).unwrap();
        assert_eq!(data(&r), ["1.1.0"]);
        let r = ask(&z, "cluster.local.", RecordType::SOA).unwrap();
        assert_eq!(r.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn nxdomain_and_nodata_as_the_specification_says() {
        let z = Zone::build(&cluster(), "cluster.local");
        for (n, t) in [
            ("nope.default.svc.cluster.local.", RecordType::A),
            ("x.web.default.svc.cluster.local.", RecordType::A),
            ("_nope._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            ("10-244-1-8.default.pod.cluster.local.", RecordType::A),
            ("10-244-2-7.db.data.svc.cluster.local.", RecordType::A),
            ("nothing.cluster.local.", RecordType::AAAA),
        ] {
            let r = ask(&z, n, t).unwrap();
            assert_eq!(r.rcode, ResponseCode::NXDomain, "{n}");
            assert!(r.answers.is_empty());
            assert_eq!(r.authorities[0].record_type(), RecordType::SOA, "{n}");
        }
        for (n, t) in [
            ("web.default.svc.cluster.local.", RecordType::TXT),
            ("default.svc.cluster.local.", RecordType::A),
            ("svc.cluster.local.", RecordType::A),
            ("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
            ("10-244-1-9.default.pod.cluster.local.", RecordType::AAAA),
            ("cluster.local.", RecordType::A),
            ("20.0.96.10.in-addr.arpa.", RecordType::A),
        ] {
            let r = ask(&z, n, t).unwrap();
            assert_eq!(r.rcode, ResponseCode::NoError, "{n}");
            assert!(r.answers.is_empty(), "{n}");
            assert_eq!(r.authorities[0].record_type(), RecordType::SOA, "{n}");
        }
        // Not the zone's: forwarded.
        assert!(ask(&z, "example.test.", RecordType::A).is_none());
        assert!(ask(&z, "local.", RecordType::A).is_none());
        assert!(ask(&z, "1.0.0.127.in-addr.arpa.", RecordType::PTR).is_none());
        assert!(ask(&z, "0.96.10.in-addr.arpa.", RecordType::PTR).is_none());
    }
}
