//! TCP endpoints inside network namespaces for the datapath benchmarks: a
//! listener thread that accepts and closes, a client thread that makes one
//! connection per request and times its set-up, and a wait for a count.

use crate::netns::enter;
use anyhow::ensure;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, connect, listen, setsockopt,
    socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Listen on `addr` from a thread inside namespace `ns` and hand every
/// accepted connection (with its peer, from accept() itself: the client
/// has usually reset it by then) to `on_accept`. Returns once listening.
pub fn serve_in(
    ns: &str,
    addr: SocketAddrV4,
    mut on_accept: impl FnMut(TcpStream, SocketAddr) + Send + 'static,
) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let listener = (|| -> anyhow::Result<TcpListener> {
                enter(&ns)?;
                let fd = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                setsockopt(&fd, sockopt::ReuseAddr, &true)?;
                bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
                // A deep accept queue: a full one drops SYNs (a 1 s retry).
                listen(&fd, Backlog::MAXALLOWABLE)?;
                Ok(TcpListener::from(fd))
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            loop {
                if let Ok((conn, peer)) = listener.accept() {
                    on_accept(conn, peer);
                }
            }
        })?;
    ready_rx.recv()?
}

/// Wait (at most 10 s) until `count` reaches `n`: spinning for the first
/// millisecond, then sleeping 100 us at a time.
pub fn wait_for(count: &AtomicU64, n: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    while count.load(Ordering::Acquire) < n {
        let waited = t.elapsed();
        ensure!(
            waited < Duration::from_secs(10),
            "the server accepted {} connections, {n} were made",
            count.load(Ordering::Relaxed)
        );
        if waited < Duration::from_millis(1) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    Ok(())
}

/// One connection to `to`: the time connect() takes, then a reset.
pub fn connect_once(to: SocketAddrV4, timeout: Duration) -> Result<Duration, nix::Error> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // close() sends a RST: no TIME_WAIT, so no port exhaustion.
    setsockopt(
        &fd,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    // A blocking connect() gives up after this (EINPROGRESS).
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &TimeVal::milliseconds(timeout.as_millis() as i64),
    )?;
    let addr = SockaddrIn::from(to);
    let t = Instant::now();
    connect(fd.as_raw_fd(), &addr)?;
    let d = t.elapsed();
    drop(fd);
    Ok(d)
}

/// A connection's set-up time, or why it failed.
pub type Reply = Result<Duration, String>;

/// A thread inside a client namespace that makes connections on request.
pub struct Client {
    jobs: mpsc::Sender<(SocketAddrV4, Duration)>,
    replies: mpsc::Receiver<Reply>,
}

impl Client {
    pub fn start(ns: &str) -> anyhow::Result<Client> {
        let (jobs, job_rx) = mpsc::channel::<(SocketAddrV4, Duration)>();
        let (reply_tx, replies) = mpsc::channel::<Reply>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns = ns.to_string();
        std::thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                if let Err(e) = enter(&ns) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                for (to, timeout) in job_rx {
                    let r = connect_once(to, timeout).map_err(|e| format!("connect to {to}: {e}"));
                    if reply_tx.send(r).is_err() {
                        break;
                    }
                }
            })?;
        ready_rx.recv()??;
        Ok(Client { jobs, replies })
    }

    /// One connection from the client's namespace.
    pub fn connect(&self, to: SocketAddrV4, timeout: Duration) -> anyhow::Result<Reply> {
        self.jobs.send((to, timeout))?;
        Ok(self.replies.recv()?)
    }
}
