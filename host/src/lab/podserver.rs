//! The lab's stand-in for a container: for each port a Pod declares, a small
//! server that says which pod answered. It runs as its own process inside the
//! pod's network namespace, so it outlives an agent restart as a container
//! outlives a kubelet restart.
//!
//! - TCP: if the first bytes are an HTTP request, HTTP: `/healthz` answers
//!   200 `ok`, anything else 200 with `pod=<ns>/<name> node=<node>
//!   client=<addr> path=<path>`. Otherwise a line echo: each line comes back
//!   as `<ns>/<name>: <line>`.
//! - UDP: each datagram comes back as `<ns>/<name>: <payload>`.
//! - SCTP: the kernel of the CI machines has no SCTP sockets; such a port is
//!   reported and skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// One port to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Tcp(u16),
    Udp(u16),
    Sctp(u16),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        let (proto, port) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not PROTOCOL:PORT"))?;
        let port: u16 = port.parse().map_err(|_| format!("{s:?}: bad port"))?;
        match proto.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Listen::Tcp(port)),
            "udp" => Ok(Listen::Udp(port)),
            "sctp" => Ok(Listen::Sctp(port)),
            _ => Err(format!("{s:?}: protocol must be tcp, udp or sctp")),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(p) => write!(f, "tcp:{p}"),
            Listen::Udp(p) => write!(f, "udp:{p}"),
            Listen::Sctp(p) => write!(f, "sctp:{p}"),
        }
    }
}

/// Who is answering.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `namespace/name`.
    pub pod: String,
    pub node: String,
}

/// Dual-stack wildcard: one socket for both families.
fn any(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
}

const HTTP_METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
];

fn serve_tcp(conn: TcpStream, id: &Identity) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    // A dual-stack socket sees IPv4 clients as ::ffff:a.b.c.d; say a.b.c.d.
    let client = conn
        .peer_addr()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()).to_string())
        .unwrap_or_default();
    let mut first = [0u8; 8];
    let n = conn.peek(&mut first)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    if HTTP_METHODS
        .iter()
        .any(|m| first[..n].starts_with(&m[..m.len().min(n)]) && n >= 4)
    {
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        // Drain the headers.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let body = if path == "/healthz" {
            "ok\n".to_string()
        } else {
            format!(
                "pod={} node={} client={client} path={path}\n",
                id.pod, id.node
            )
        };
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return out.flush();
    }
    for line in reader.lines() {
        let line = line?;
        writeln!(out, "{}: {line}", id.pod)?;
    }
    Ok(())
}

fn serve_udp(sock: UdpSocket, id: &Identity) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let mut reply = format!("{}: ", id.pod).into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = sock.send_to(&reply, from);
    }
}

/// Serve every port until the process is killed. Ports that cannot be bound
/// are reported on stderr; the rest are served.
pub fn run(id: Identity, listen: Vec<Listen>) -> std::io::Result<()> {
    let mut threads = vec![];
    for l in listen {
        let id = id.clone();
        match l {
            Listen::Tcp(port) => {
                let listener = TcpListener::bind(any(port))?;
                threads.push(std::thread::spawn(move || {
                    for conn in listener.incoming().flatten() {
                        let id = id.clone();
                        std::thread::spawn(move || {
                            let _ = serve_tcp(conn, &id);
                        });
                    }
                }));
            }
            Listen::Udp(port) => {
                let sock = UdpSocket::bind(any(port))?;
                threads.push(std::thread::spawn(move || serve_udp(sock, &id)));
            }
            Listen::Sctp(port) => {
                eprintln!(
                    "{}: SCTP port {port} is not served: this kernel has no SCTP sockets",
                    id.pod
                );
            }
        }
    }
    eprintln!("{}: serving", id.pod);
    for t in threads {
        let _ = t.join();
    }
    // Nothing to serve (only SCTP ports, or none): stay up like a container.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// One TCP exchange against a pod server: send a line, read the answer.
pub fn tcp_echo(addr: SocketAddr, line: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    writeln!(s, "{line}")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs_parse() {
        assert_eq!("tcp:80".parse::<Listen>().unwrap(), Listen::Tcp(80));
        assert_eq!("UDP:53".parse::<Listen>().unwrap(), Listen::Udp(53));
        assert!("icmp:1".parse::<Listen>().is_err());
        assert_eq!(Listen::Sctp(9).to_string(), "sctp:9");
    }

    #[test]
    fn answers_http_lines_and_datagrams_with_its_name() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let id = Identity {
            pod: "x/a".into(),
            node: "n1".into(),
        };
        let id2 = id.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let id = id2.clone();
                std::thread::spawn(move || serve_tcp(c, &id));
            }
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(
            tcp_echo(addr, "hello", Duration::from_secs(2)).unwrap(),
            "x/a: hello\n"
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("ok\n"),
            "{r}"
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /echo HTTP/1.1\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert!(r.contains("pod=x/a node=n1"), "{r}");

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uaddr = u.local_addr().unwrap();
        std::thread::spawn(move || serve_udp(u, &id));
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.send_to(b"ping", uaddr).unwrap();
        let mut b = [0u8; 64];
        let (n, _) = c.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"x/a: ping");
    }
}
