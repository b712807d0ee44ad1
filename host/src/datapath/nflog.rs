//! Reading NFLOG: packets the policy table logs with `log group N`, as
//! the kernel sends them over nfnetlink (subsystem ULOG). The agent binds
//! one group, asks for the first bytes of each packet, and parses the IP
//! and transport headers and the rule's prefix, which names the chain that
//! dropped it (and so the policies isolating the pod).
//!
//! Logging never slows the datapath: the kernel drops log messages when
//! the socket's buffer is full, never packets.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The NFLOG group the policy table logs drops to.
pub const POLICY_DROP_GROUP: u16 = 7;

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
/// Bytes of each packet copied: enough for IPv6 and a transport header.
const COPY_RANGE: u32 = 96;

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Logged {
    /// The rule's log prefix.
    pub prefix: String,
    pub source: IpAddr,
    pub destination: IpAddr,
    /// IANA protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6).
    pub protocol: u8,
    /// Ports for TCP, UDP and SCTP; 0 otherwise.
    pub source_port: u16,
    pub destination_port: u16,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align(buf.len()), 0);
}

/// A config message for `group`, with its attributes.
fn config(group: u16, seq: u32, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    // nfgenmsg: family AF_UNSPEC, version 0, resource id (the group), big endian.
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&group.to_be_bytes());
    for (k, d) in attrs {
        attr(&mut b, *k, d);
    }
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    b
}

/// A socket bound to one NFLOG group in the current network namespace.
pub struct Nflog {
    socket: Socket,
    buf: Vec<u8>,
}

impl Nflog {
    /// Bind `group`, copying the first bytes of every packet.
    pub fn bind(group: u16) -> io::Result<Nflog> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        let mut mode = COPY_RANGE.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        let mut me = Nflog {
            socket,
            buf: vec![0; 65536],
        };
        me.request(config(
            group,
            1,
            &[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND])],
        ))
        .map_err(|e| io::Error::new(e.kind(), format!("binding NFLOG group {group}: {e}")))?;
        me.request(config(group, 2, &[(NFULA_CFG_MODE, mode)]))
            .map_err(|e| io::Error::new(e.kind(), format!("setting NFLOG copy mode: {e}")))?;
        Ok(me)
    }

    fn request(&mut self, msg: Vec<u8>) -> io::Result<()> {
        self.socket.send(&msg, 0)?;
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let b = &self.buf[..n];
        if b.len() >= 20 && u16::from_ne_bytes([b[4], b[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
        }
        Ok(())
    }

    /// Wait for the next batch of logged packets.
    pub fn recv(&mut self) -> io::Result<Vec<Logged>> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        Ok(parse_messages(&self.buf[..n]))
    }
}

/// Every packet message in a buffer of netlink messages.
pub fn parse_messages(mut b: &[u8]) -> Vec<Logged> {
    let mut out = vec![];
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
            && let Some(p) = parse_packet(&b[16..len])
        {
            out.push(p);
        }
        b = &b[align(len).min(b.len())..];
    }
    out
}

/// One packet message's body (after the netlink header).
fn parse_packet(body: &[u8]) -> Option<Logged> {
    // nfgenmsg, then attributes.
    let mut a = body.get(4..)?;
    let (mut prefix, mut payload) = (String::new(), None);
    while a.len() >= 4 {
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let kind = u16::from_ne_bytes([a[2], a[3]]) & 0x3fff;
        if len < 4 || len > a.len() {
            break;
        }
        let data = &a[4..len];
        match kind {
            NFULA_PREFIX => {
                prefix = String::from_utf8_lossy(data.split(|c| *c == 0).next().unwrap_or(&[]))
                    .into_owned()
            }
            NFULA_PAYLOAD => payload = Some(data),
            _ => {}
        }
        a = &a[align(len).min(a.len())..];
    }
    let p = payload?;
    let (source, destination, protocol, l4) = match p.first()? >> 4 {
        4 => {
            let ihl = ((p[0] & 0x0f) as usize) * 4;
            let s: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            (
                IpAddr::from(Ipv4Addr::from(s)),
                IpAddr::from(Ipv4Addr::from(d)),
                *p.get(9)?,
                p.get(ihl..),
            )
        }
        6 => {
            let s: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            (
                IpAddr::from(Ipv6Addr::from(s)),
                IpAddr::from(Ipv6Addr::from(d)),
                *p.get(6)?,
                p.get(40..),
            )
        }
        _ => return None,
    };
    let (source_port, destination_port) = match (protocol, l4) {
        (6 | 17 | 132, Some(l)) if l.len() >= 4 => (
            u16::from_be_bytes([l[0], l[1]]),
            u16::from_be_bytes([l[2], l[3]]),
        ),
        _ => (0, 0),
    };
    Some(Logged {
        prefix,
        source,
        destination,
        protocol,
        source_port,
        destination_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel sends it.
    fn message(prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&[2, 0, 0, 7]);
        attr(&mut b, 1, &[0x08, 0x00, 2, 0]);
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        attr(&mut b, NFULA_PREFIX, &p);
        attr(&mut b, NFULA_PAYLOAD, payload);
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b[4..6].copy_from_slice(&(NFNL_SUBSYS_ULOG << 8).to_ne_bytes());
        b
    }

    #[test]
    fn packets_parse_with_prefix_addresses_and_ports() {
        let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        v4.extend_from_slice(&[10, 244, 2, 3, 10, 244, 1, 2]);
        v4.extend_from_slice(&[0xa0, 0x00, 0, 80, 0, 0, 0, 0]);
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        v6.extend_from_slice(&"fd00::3".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
        let mut buf = message("ingress-drop-0123 ", &v4);
        buf.extend(message("egress-drop-4567 ", &v6));
        let got = parse_messages(&buf);
        assert_eq!(
            got,
            vec![
                Logged {
                    prefix: "ingress-drop-0123 ".into(),
                    source: "10.244.2.3".parse().unwrap(),
                    destination: "10.244.1.2".parse().unwrap(),
                    protocol: 6,
                    source_port: 40960,
                    destination_port: 80,
                },
                Logged {
                    prefix: "egress-drop-4567 ".into(),
                    source: "fd00::3".parse().unwrap(),
                    destination: "fd00::2".parse().unwrap(),
                    protocol: 17,
                    source_port: 12345,
                    destination_port: 53,
                },
            ]
        );
        // Truncated input is skipped, not a panic.
        assert!(parse_messages(&buf[..30]).is_empty());
        assert!(parse_packet(&[2, 0, 0, 7, 8, 0, 9, 0, 0x45, 0, 0, 0]).is_none());
    }
}
