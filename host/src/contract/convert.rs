//! Conversions between the contract's types and the host's (`std::net`, `ipnet`).
//! Everything coming from a guest is checked here: a prefix longer than its
//! family allows is an error, not a panic.

use super::bindings::imports::switchyard::plugin::types as wit;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn ip(a: &wit::IpAddress) -> IpAddr {
    match *a {
        wit::IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    }
}

pub fn wit_ip(a: IpAddr) -> wit::IpAddress {
    match a {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            wit::IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            wit::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

/// A prefix from a guest. Host bits are kept (an interface address has them).
pub fn cidr(c: &wit::IpCidr) -> Result<IpNet, String> {
    let addr = ip(&c.address);
    let net = match addr {
        IpAddr::V4(a) => Ipv4Net::new(a, c.prefix_len).map(IpNet::V4),
        IpAddr::V6(a) => Ipv6Net::new(a, c.prefix_len).map(IpNet::V6),
    };
    net.map_err(|_| {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        format!(
            "invalid CIDR {addr}/{}: the prefix length must be at most {max}",
            c.prefix_len
        )
    })
}

/// A prefix that names a network (a route destination, a set element): host
/// bits must be clear.
pub fn network(c: &wit::IpCidr) -> Result<IpNet, String> {
    let n = cidr(c)?;
    if n.trunc() != n {
        return Err(format!(
            "invalid CIDR {n}: host bits are set (did you mean {}?)",
            n.trunc()
        ));
    }
    Ok(n)
}

pub fn wit_cidr(n: IpNet) -> wit::IpCidr {
    wit::IpCidr {
        address: wit_ip(n.addr()),
        prefix_len: n.prefix_len(),
    }
}

pub fn family(a: &IpAddr) -> wit::IpFamily {
    if a.is_ipv4() {
        wit::IpFamily::Ipv4
    } else {
        wit::IpFamily::Ipv6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_long_prefixes() {
        let n: IpNet = "fd00:10::5/64".parse().unwrap();
        assert_eq!(cidr(&wit_cidr(n)).unwrap(), n);
        let bad = wit::IpCidr {
            address: wit_ip("10.0.0.0".parse().unwrap()),
            prefix_len: 33,
        };
        assert!(cidr(&bad).unwrap_err().contains("at most 32"));
        let host = wit_cidr("10.0.0.1/24".parse().unwrap());
        assert!(
            network(&host)
                .unwrap_err()
                .contains("did you mean 10.0.0.0/24")
        );
    }
}
