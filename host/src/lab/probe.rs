//! One connection attempt from inside a network namespace: the primitive
//! under `lab probe` and `lab matrix`. A probe is `allowed` when the
//! connection is made (TCP, SCTP) or answered (UDP), and `denied` when it is
//! refused, unreachable or times out: NetworkPolicy may drop or reject, and
//! both mean the same to the e2e truth table.

use crate::datapath::netlink::in_netns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

/// The protocols a probe speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unsupported protocol {s:?}: expected TCP, UDP or SCTP"
            )),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Why it was denied (the socket error), or what the server answered
    /// when asked to (`verbose`).
    pub detail: String,
}

/// The probe could not be made at all (no such namespace, no SCTP in this
/// kernel): neither allowed nor denied.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

/// Try one connection to `to` from the network namespace at `netns`. With
/// `verbose`, a TCP probe also sends an HTTP request and returns the answer
/// (the lab's servers say which pod answered and whom they saw).
pub fn probe(
    netns: &Path,
    to: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
    verbose: bool,
) -> Result<Outcome, ProbeError> {
    in_netns(netns, || Ok(probe_here(to, protocol, timeout, verbose)))
        .map_err(|e| ProbeError(e.to_string()))?
}

/// The same, in the calling thread's namespace.
pub fn probe_here(
    to: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
    verbose: bool,
) -> Result<Outcome, ProbeError> {
    let denied = |e: std::io::Error| Outcome {
        allowed: false,
        detail: e.to_string(),
    };
    match protocol {
        Protocol::Tcp => match TcpStream::connect_timeout(&to, timeout) {
            Ok(mut s) => {
                let mut detail = String::new();
                if verbose {
                    let _ = s.set_read_timeout(Some(timeout));
                    let _ = write!(s, "GET / HTTP/1.0\r\nHost: {to}\r\n\r\n");
                    let mut answer = String::new();
                    let _ = s.read_to_string(&mut answer);
                    detail = answer
                        .split_once("\r\n\r\n")
                        .map(|(_, body)| body.trim().to_string())
                        .unwrap_or_else(|| answer.trim().to_string());
                }
                Ok(Outcome {
                    allowed: true,
                    detail,
                })
            }
            Err(e) => Ok(denied(e)),
        },
        Protocol::Udp => {
            let local: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let s = UdpSocket::bind(local).map_err(|e| ProbeError(format!("UDP socket: {e}")))?;
            s.connect(to)
                .map_err(|e| ProbeError(format!("UDP connect to {to}: {e}")))?;
            s.set_read_timeout(Some(timeout))
                .map_err(|e| ProbeError(e.to_string()))?;
            if let Err(e) = s.send(b"probe") {
                return Ok(denied(e));
            }
            let mut buf = [0u8; 2048];
            match s.recv(&mut buf) {
                Ok(n) => Ok(Outcome {
                    allowed: true,
                    detail: String::from_utf8_lossy(&buf[..n]).trim().to_string(),
                }),
                Err(e) => Ok(denied(e)),
            }
        }
        Protocol::Sctp => sctp_connect(to, timeout).map(|r| match r {
            Ok(()) => Outcome {
                allowed: true,
                detail: String::new(),
            },
            Err(e) => denied(e),
        }),
    }
}

/// An SCTP association attempt: a non-blocking connect, then wait for it to
/// complete. The outer error means this kernel cannot make SCTP sockets.
fn sctp_connect(to: SocketAddr, timeout: Duration) -> Result<std::io::Result<()>, ProbeError> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage, connect, getsockopt,
        socket, sockopt,
    };
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .map_err(|e| {
        ProbeError(format!(
            "cannot make an SCTP socket ({e}): this kernel has no SCTP support, so SCTP \
             reachability cannot be probed here (SCTP rules are still installed)"
        ))
    })?;
    let addr = SockaddrStorage::from(to);
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
        Ok(()) => return Ok(Ok(())),
        Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Ok(Err(e.into())),
    }
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&fd),
        nix::poll::PollFlags::POLLOUT,
    )];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
        Ok(0) => Ok(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connection timed out",
        ))),
        Ok(_) => match getsockopt(&fd, sockopt::SocketError) {
            Ok(0) => Ok(Ok(())),
            Ok(errno) => Ok(Err(std::io::Error::from_raw_os_error(errno))),
            Err(e) => Ok(Err(e.into())),
        },
        Err(e) => Ok(Err(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn tcp_and_udp_probes_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let t = Duration::from_millis(500);
        assert!(probe_here(to, Protocol::Tcp, t, false).unwrap().allowed);
        drop(l);
        let refused = probe_here(to, Protocol::Tcp, t, false).unwrap();
        assert!(!refused.allowed);
        assert!(refused.detail.contains("refused"), "{}", refused.detail);

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uto = u.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            if let Ok((n, from)) = u.recv_from(&mut b) {
                let _ = u.send_to(&b[..n], from);
            }
        });
        let o = probe_here(uto, Protocol::Udp, t, false).unwrap();
        assert!(o.allowed);
        assert_eq!(o.detail, "probe");
        // Nobody listens there any more: ICMP port unreachable, denied.
        let again = probe_here(uto, Protocol::Udp, Duration::from_millis(300), false);
        assert!(!again.unwrap().allowed);
    }

    #[test]
    fn protocols_parse_case_insensitively() {
        assert_eq!("tcp".parse::<Protocol>().unwrap(), Protocol::Tcp);
        assert_eq!("SCTP".parse::<Protocol>().unwrap(), Protocol::Sctp);
        assert!(
            "icmp"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("TCP, UDP or SCTP")
        );
    }
}
