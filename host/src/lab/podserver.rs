//! The lab's stand-in for a container: for each port a Pod declares, a small
//! server that says which pod answered. It runs as its own process inside the
//! pod's network namespace, so it outlives an agent restart as a container
//! outlives a kubelet restart.
//!
//! - TCP: if the first bytes are the HTTP/2 preface, the gRPC health service
//!   (`grpc.health.v1`, see `grpc_health`), SERVING. If they are an HTTP
//!   request, HTTP: `/healthz` answers 200 `ok`, anything else 200 with
//!   `pod=<ns>/<name> node=<node> client=<addr> path=<path>`. Otherwise a
//!   line echo: each line comes back as `<ns>/<name>: <line>`.
//! - UDP: each datagram comes back as `<ns>/<name>: <payload>`.
//! - SCTP: the kernel of the CI machines has no SCTP sockets; such a port is
//!   reported and skipped.
//!
//! A `Behaviour` (from the Pod's annotations) makes the server misbehave on
//! purpose, for probes to notice: `/healthz` and gRPC health fail after a
//! while, answers are slow, ports are bound late or closed early, the
//! process exits.

use super::behaviour::Behaviour;
use crate::probe::grpc_health::{self, ServingStatus};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// A behaviour and the clock it runs on: every time in it counts from the
/// start of the server.
#[derive(Debug, Clone, Copy)]
struct Conduct {
    started: Instant,
    behaviour: Behaviour,
}

impl Conduct {
    fn new(behaviour: Behaviour) -> Conduct {
        Conduct {
            started: Instant::now(),
            behaviour,
        }
    }

    /// Whether `/healthz` and gRPC health still say all is well.
    fn healthy(&self) -> bool {
        self.behaviour
            .healthz_fail_after
            .is_none_or(|d| self.started.elapsed() < d)
    }

    /// Hold an answer back for the respond delay.
    fn hold(&self) {
        if let Some(d) = self.behaviour.respond_delay {
            std::thread::sleep(d);
        }
    }

    /// When the TCP listeners close.
    fn refuse_at(&self) -> Option<Instant> {
        self.behaviour.refuse_after.map(|d| self.started + d)
    }
}

/// The HTTP/2 connection preface, as far as it tells HTTP/2 from HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// How long one gRPC connection is served at most (a probe makes one call).
const GRPC_CONNECTION_LIMIT: Duration = Duration::from_secs(30);

const HTTP_METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
];

/// Peek at the first bytes of a connection: at least enough to tell the
/// HTTP/2 preface apart, unless they already differ from it or the client
/// sends no more.
fn peek_start(conn: &TcpStream, buf: &mut [u8; 16]) -> std::io::Result<usize> {
    let mut n = conn.peek(buf)?;
    // A preface split over packets: wait a little for the rest, bounded.
    for _ in 0..50 {
        if n == 0 || n >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&buf[..n]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        n = conn.peek(buf)?;
    }
    Ok(n)
}

fn serve_tcp(conn: TcpStream, id: &Identity, conduct: &Conduct) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    // A dual-stack socket sees IPv4 clients as ::ffff:a.b.c.d; say a.b.c.d.
    let client = conn
        .peer_addr()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()).to_string())
        .unwrap_or_default();
    let mut first = [0u8; 16];
    let n = peek_start(&conn, &mut first)?;
    if first[..n].starts_with(H2_PREFACE) {
        return serve_grpc(conn, conduct);
    }
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
        let (status, body) = if path == "/healthz" {
            if conduct.healthy() {
                ("200 OK", "ok\n".to_string())
            } else {
                ("500 Internal Server Error", "failing\n".to_string())
            }
        } else {
            (
                "200 OK",
                format!(
                    "pod={} node={} client={client} path={path}\n",
                    id.pod, id.node
                ),
            )
        };
        conduct.hold();
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return out.flush();
    }
    for line in reader.lines() {
        let line = line?;
        conduct.hold();
        writeln!(out, "{}: {line}", id.pod)?;
    }
    Ok(())
}

/// gRPC health on one connection. The rest of the server is plain threads;
/// h2 needs tokio, so this connection gets a small runtime of its own.
fn serve_grpc(conn: TcpStream, conduct: &Conduct) -> std::io::Result<()> {
    conn.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let conduct = *conduct;
    runtime.block_on(async move {
        let conn = tokio::net::TcpStream::from_std(conn)?;
        let status = |_: &str| {
            if conduct.healthy() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let delay = conduct.behaviour.respond_delay.unwrap_or_default();
        let serve = grpc_health::serve_delayed(conn, status, delay);
        let _ = tokio::time::timeout(GRPC_CONNECTION_LIMIT, serve).await;
        Ok(())
    })
}

/// Accept connections, each served on a thread of its own, until the
/// listener closes for `refuse-after`.
fn accept_loop(listener: TcpListener, id: Identity, conduct: Conduct) {
    let serve = |conn: TcpStream| {
        let id = id.clone();
        std::thread::spawn(move || {
            let _ = serve_tcp(conn, &id, &conduct);
        });
    };
    let Some(refuse_at) = conduct.refuse_at() else {
        for conn in listener.incoming().flatten() {
            serve(conn);
        }
        return;
    };
    // Wait for a connection or the deadline, whichever comes first; the
    // listener is non-blocking so that a connection gone between poll and
    // accept cannot hang the loop past the deadline.
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("{}: cannot make the listener non-blocking: {e}", id.pod);
        return;
    }
    loop {
        let left = refuse_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // Round up, so that the deadline is not polled for in a busy loop.
        let wait =
            PollTimeout::try_from(left + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("{}: waiting for connections: {e}", id.pod);
                break;
            }
        }
        match listener.accept() {
            // Accepted sockets are blocking on Linux, but say so.
            Ok((conn, _)) => {
                if conn.set_nonblocking(false).is_ok() {
                    serve(conn);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {}
        }
    }
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    eprintln!(
        "{}: closing TCP port {port}: refuse-after {:?} has passed",
        id.pod,
        conduct.behaviour.refuse_after.unwrap_or_default()
    );
    drop(listener);
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

/// After the start delay, bind every port on `host` and serve it on a
/// thread of its own; returns the threads.
fn start(
    id: &Identity,
    listen: &[Listen],
    host: IpAddr,
    conduct: Conduct,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    if let Some(d) = conduct.behaviour.start_delay {
        eprintln!("{}: binding ports after a start delay of {d:?}", id.pod);
        std::thread::sleep(d.saturating_sub(conduct.started.elapsed()));
    }
    let mut threads = vec![];
    for l in listen {
        let id = id.clone();
        match *l {
            Listen::Tcp(port) => {
                let listener = TcpListener::bind(SocketAddr::new(host, port))?;
                threads.push(std::thread::spawn(move || {
                    accept_loop(listener, id, conduct)
                }));
            }
            Listen::Udp(port) => {
                let sock = UdpSocket::bind(SocketAddr::new(host, port))?;
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
    Ok(threads)
}

/// Serve every port until the process is killed (or `exit-after` ends it),
/// misbehaving as `behaviour` says. Ports are bound on the dual-stack
/// wildcard: one socket for both families.
pub fn run(id: Identity, listen: Vec<Listen>, behaviour: Behaviour) -> std::io::Result<()> {
    // SIGTERM (the kubelet stopping the pod) is taken by a thread of its
    // own: blocked here, before any thread exists, so every thread inherits
    // the mask.
    let mut term = nix::sys::signal::SigSet::empty();
    term.add(nix::sys::signal::Signal::SIGTERM);
    term.thread_block().map_err(std::io::Error::other)?;
    let delay = behaviour.shutdown_delay;
    let pod = id.pod.clone();
    std::thread::spawn(move || {
        if term.wait().is_ok() {
            if let Some(d) = delay {
                eprintln!("{pod}: SIGTERM: serving for {d:?} more (shutdown-delay)");
                std::thread::sleep(d);
            }
            eprintln!("{pod}: SIGTERM: exiting");
            std::process::exit(0);
        }
    });
    let conduct = Conduct::new(behaviour);
    if let Some(after) = behaviour.exit_after {
        let code = behaviour.exit_code();
        let pod = id.pod.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            eprintln!("{pod}: exiting with code {code}: exit-after {after:?} has passed");
            std::process::exit(code);
        });
    }
    let threads = start(&id, &listen, Ipv6Addr::UNSPECIFIED.into(), conduct)?;
    eprintln!("{}: serving", id.pod);
    for t in threads {
        let _ = t.join();
    }
    // Nothing (more) to serve: only SCTP ports, none, or listeners closed
    // by refuse-after. Stay up like a container.
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
        std::thread::spawn(move || accept_loop(l, id2, Conduct::new(Behaviour::default())));
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

    fn pod() -> Identity {
        Identity {
            pod: "x/a".into(),
            node: "n1".into(),
        }
    }

    /// A server on a loopback port with `behaviour`, its clock started now.
    fn serve_with(behaviour: Behaviour) -> (SocketAddr, Conduct, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conduct = Conduct::new(behaviour);
        let t = std::thread::spawn(move || accept_loop(l, pod(), conduct));
        (addr, conduct, t)
    }

    fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r)
    }

    fn grpc_check(addr: SocketAddr) -> Result<ServingStatus, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(grpc_health::check(addr, "", Duration::from_secs(5)))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn healthz_and_grpc_health_fail_after_the_delay() {
        let fail_after = ms(500);
        let (addr, conduct, _) = serve_with(Behaviour {
            healthz_fail_after: Some(fail_after),
            ..Behaviour::default()
        });
        // An answer completed before the deadline must be healthy, one asked
        // after it must be failing; in between either is right. Both phases
        // must be seen.
        let (mut seen_ok, mut seen_failing) = (false, false);
        for _ in 0..40 {
            let asked = conduct.started.elapsed();
            let http = http_get(addr, "/healthz").unwrap();
            let grpc = grpc_check(addr).unwrap();
            let answered = conduct.started.elapsed();
            let http_ok = http.starts_with("HTTP/1.1 200 OK") && http.ends_with("ok\n");
            let http_failing = http.starts_with("HTTP/1.1 500 ") && http.ends_with("failing\n");
            assert!(http_ok || http_failing, "{http}");
            if answered < fail_after {
                assert!(http_ok, "healthy at {answered:?}: {http}");
                assert_eq!(grpc, ServingStatus::Serving, "at {answered:?}");
                seen_ok = true;
            }
            if asked >= fail_after {
                assert!(http_failing, "failing at {asked:?}: {http}");
                assert_eq!(grpc, ServingStatus::NotServing, "at {asked:?}");
                seen_failing = true;
                break;
            }
            std::thread::sleep(ms(50));
        }
        assert!(
            seen_ok && seen_failing,
            "ok {seen_ok}, failing {seen_failing}"
        );
        // Other paths are not health checks and keep answering 200.
        let r = http_get(addr, "/echo").unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    }

    #[test]
    fn respond_delay_holds_every_answer() {
        let delay = ms(300);
        let (addr, _, _) = serve_with(Behaviour {
            respond_delay: Some(delay),
            ..Behaviour::default()
        });
        let limit = Duration::from_secs(5);
        let t = Instant::now();
        assert_eq!(tcp_echo(addr, "hi", limit).unwrap(), "x/a: hi\n");
        let took = t.elapsed();
        assert!(took >= delay && took < limit, "line echo took {took:?}");

        let t = Instant::now();
        let r = http_get(addr, "/healthz").unwrap();
        let took = t.elapsed();
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(took >= delay && took < limit, "HTTP took {took:?}");

        let t = Instant::now();
        assert_eq!(grpc_check(addr), Ok(ServingStatus::Serving));
        let took = t.elapsed();
        assert!(took >= delay && took < limit, "gRPC took {took:?}");
    }

    #[test]
    fn start_delay_binds_late() {
        let delay = ms(400);
        // A free port, to be bound by the server later.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let conduct = Conduct::new(Behaviour {
            start_delay: Some(delay),
            ..Behaviour::default()
        });
        std::thread::spawn(move || {
            start(&pod(), &[Listen::Tcp(port)], addr.ip(), conduct)
                .unwrap()
                .into_iter()
                .for_each(|t| t.join().unwrap())
        });
        let mut refused = 0;
        let mut served_at = None;
        for _ in 0..100 {
            let asked = conduct.started.elapsed();
            match tcp_echo(addr, "hi", Duration::from_secs(2)) {
                Ok(r) => {
                    assert_eq!(r, "x/a: hi\n");
                    assert!(
                        asked >= delay,
                        "served at {asked:?}, before the start delay"
                    );
                    served_at = Some(asked);
                    break;
                }
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                    refused += 1;
                }
            }
            std::thread::sleep(ms(50));
        }
        assert!(refused > 0, "never refused before the start delay");
        assert!(served_at.is_some(), "never served after the start delay");
    }

    #[test]
    fn refuse_after_closes_the_listener() {
        let after = ms(400);
        let (addr, conduct, accepting) = serve_with(Behaviour {
            refuse_after: Some(after),
            ..Behaviour::default()
        });
        let mut served = 0;
        let mut refused_at = None;
        for _ in 0..60 {
            let asked = conduct.started.elapsed();
            match tcp_echo(addr, "hi", Duration::from_secs(2)) {
                Ok(r) => {
                    assert_eq!(r, "x/a: hi\n");
                    assert!(asked < after, "served when asked at {asked:?}");
                    served += 1;
                }
                // Queued just as the listener closed.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                    refused_at = Some(conduct.started.elapsed());
                    break;
                }
            }
            std::thread::sleep(ms(50));
        }
        let refused_at = refused_at.expect("connections were never refused");
        assert!(served > 0, "never served before refuse-after");
        assert!(refused_at >= after, "refused at {refused_at:?}");
        // The accept loop has ended and stays closed.
        accepting.join().unwrap();
        let e = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
