//! Addresses and CIDRs as Go reads them in the API server
//! (`netutils.ParseIPSloppy`, `ParseCIDRSloppy`): what a NetworkPolicy's
//! ipBlock may say.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as Go's `ParseIPSloppy` reads it: IPv4 octets may have leading
/// zeros (read as decimal).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        return s.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// A CIDR as Go's `ParseCIDRSloppy` reads it: host bits are cleared.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    IpNet::new(parse_ip(addr)?, len.parse().ok()?)
        .ok()
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_like_go() {
        assert_eq!(parse_ip("010.001.0.1"), Some("10.1.0.1".parse().unwrap()));
        assert_eq!(parse_ip("1.2.3"), None);
        assert_eq!(
            parse_cidr("10.1.2.3/16"),
            Some("10.1.0.0/16".parse().unwrap())
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("fd00::1/64"), Some("fd00::/64".parse().unwrap()));
    }
}
