//! The node's DNS on the wire: a UDP socket and a TCP listener per
//! address. Zone and cache answers are written on the receiving task;
//! forwarded questions run on tasks of their own (at most
//! [`MAX_FORWARDS`] at once; past that, SERVFAIL), so a slow upstream never
//! holds up cluster names. TCP connections (at most [`MAX_TCP`]) close
//! after [`TCP_IDLE`] without a query.
//!
//! Sockets are bound with `IP_FREEBIND`: the node-local address and the
//! cluster DNS Service's addresses may reach the node's dummy link after
//! the server starts, and may move.

use super::{Dns, Step, Transport};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

pub const MAX_FORWARDS: usize = 1024;
pub const MAX_TCP: usize = 256;
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Receiving tasks per UDP socket.
const UDP_WORKERS: usize = 2;

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_freebind_v6(true)?;
    } else {
        s.set_freebind_v4(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// The sockets of one address, bound (so an address in use is said before
/// anything is served).
pub struct Bound {
    udp: UdpSocket,
    tcp: TcpListener,
    pub addr: SocketAddr,
}

/// Bind UDP and TCP on `addr` (port 0: one free port for both, for tests).
pub fn bind(addr: SocketAddr) -> std::io::Result<Bound> {
    let udp = socket(addr, Type::DGRAM, Protocol::UDP)?;
    let addr = udp.local_addr()?.as_socket().unwrap_or(addr);
    let tcp = socket(addr, Type::STREAM, Protocol::TCP)?;
    tcp.listen(128)?;
    Ok(Bound {
        udp: UdpSocket::from_std(udp.into())?,
        tcp: TcpListener::from_std(tcp.into())?,
        addr,
    })
}

/// Serve `dns` on `bound` until `stop`.
pub async fn serve(dns: Arc<Dns>, bound: Vec<Bound>, stop: impl std::future::Future<Output = ()>) {
    dns.set_own(bound.iter().map(|b| b.addr).collect());
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let conns = Arc::new(Semaphore::new(MAX_TCP));
    let mut tasks = tokio::task::JoinSet::new();
    for b in bound {
        tracing::info!(addr = %b.addr, "serving DNS");
        let udp = Arc::new(b.udp);
        for _ in 0..UDP_WORKERS {
            tasks.spawn(udp_loop(dns.clone(), udp.clone(), forwards.clone()));
        }
        tasks.spawn(tcp_loop(dns.clone(), b.tcp, conns.clone()));
    }
    stop.await;
    tasks.shutdown().await;
}

async fn udp_loop(dns: Arc<Dns>, sock: Arc<UdpSocket>, forwards: Arc<Semaphore>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "DNS receive");
                continue;
            }
        };
        match dns.step(&buf[..n], from, Transport::Udp) {
            Step::Reply(bytes) => {
                let _ = sock.send_to(&bytes, from).await;
            }
            Step::Drop => {}
            Step::Forward(p) => match forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (dns, sock) = (dns.clone(), sock.clone());
                    tokio::spawn(async move {
                        let bytes = dns.forward(p).await;
                        let _ = sock.send_to(&bytes, from).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let bytes = dns.overloaded(p);
                    let _ = sock.send_to(&bytes, from).await;
                }
            },
        }
    }
}

async fn tcp_loop(dns: Arc<Dns>, listener: TcpListener, conns: Arc<Semaphore>) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            // Full: the client retries or falls back to another server.
            continue;
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            let _ = tcp_conn(&dns, stream, from).await;
            drop(permit);
        });
    }
}

async fn tcp_conn(dns: &Dns, mut s: TcpStream, from: SocketAddr) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let bytes = match dns.step(&buf, from, Transport::Tcp) {
            Step::Reply(b) => b,
            Step::Drop => return Ok(()),
            Step::Forward(p) => dns.forward(p).await,
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        s.write_all(&framed).await?;
    }
}
