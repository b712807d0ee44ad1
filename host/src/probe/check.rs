//! One probe attempt, as the kubelet makes it: HTTP, TCP and gRPC from the
//! node's network namespace to the pod's address (the agent lives in its
//! node's namespace, as the kubelet does), exec inside the pod's namespace.

use super::spec::Handler;
use super::worker::Attempt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the pod is.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's address (its first IP).
    pub address: Option<IpAddr>,
    /// The pod's network namespace (a name under /var/run/netns), for exec.
    pub netns: String,
}

/// At most this much of an HTTP answer is read (the kubelet reads 10 KiB).
const MAX_HTTP_READ: usize = 10 * 1024;

fn addr(host: &Option<String>, t: &Target, port: u16) -> Result<SocketAddr, String> {
    let ip = match host {
        Some(h) => h
            .parse::<IpAddr>()
            .map_err(|_| format!("host {h:?} is not an IP address (the lab resolves no names)"))?,
        None => t.address.ok_or("the pod has no address yet")?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Run one attempt of `h` against `t`, within `timeout`.
pub async fn run(h: &Handler, t: &Target, timeout: Duration) -> Attempt {
    let work = async {
        match h {
            Handler::Tcp { host, port } => {
                let a = match addr(host, t, *port) {
                    Ok(a) => a,
                    Err(e) => return Attempt::Unknown(e),
                };
                match TcpStream::connect(a).await {
                    Ok(_) => Attempt::Success,
                    Err(e) => Attempt::Failure(format!("dial tcp {a}: {e}")),
                }
            }
            Handler::Http {
                https,
                host,
                port,
                path,
                headers,
            } => {
                if *https {
                    return Attempt::Unknown(
                        "HTTPS probes are not supported by the lab's prober".into(),
                    );
                }
                let a = match addr(host, t, *port) {
                    Ok(a) => a,
                    Err(e) => return Attempt::Unknown(e),
                };
                http_get(a, path, headers).await
            }
            Handler::Grpc { port, service } => {
                let a = match addr(&None, t, *port) {
                    Ok(a) => a,
                    Err(e) => return Attempt::Unknown(e),
                };
                match crate::probe::grpc_health::check(a, service, timeout).await {
                    Ok(crate::probe::grpc_health::ServingStatus::Serving) => Attempt::Success,
                    Ok(s) => Attempt::Failure(format!("service unhealthy (responded with {s:?})")),
                    Err(e) => Attempt::Failure(format!("gRPC health check of {a}: {e}")),
                }
            }
            Handler::Exec { command } => exec(&t.netns, command, timeout).await,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(a) => a,
        Err(_) => Attempt::Failure(format!(
            "timeout: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// `GET path` over HTTP/1.1; 200-399 is success (the kubelet's rule; it
/// follows no redirect to another host, and neither do we).
async fn http_get(a: SocketAddr, path: &str, headers: &[(String, String)]) -> Attempt {
    let mut s = match TcpStream::connect(a).await {
        Ok(s) => s,
        Err(e) => return Attempt::Failure(format!("Get \"http://{a}{path}\": dial tcp {a}: {e}")),
    };
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        req.push_str(&format!("Host: {a}\r\n"));
    }
    if !has("user-agent") {
        req.push_str("User-Agent: kube-probe/switchyard\r\n");
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return Attempt::Failure(format!("Get \"http://{a}{path}\": {e}"));
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read until the status line is complete (or the peer closes).
    while !buf.contains(&b'\n') && buf.len() < MAX_HTTP_READ {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Attempt::Failure(format!("Get \"http://{a}{path}\": {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or_default();
    match line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
    {
        Some(code) if (200..400).contains(&code) => Attempt::Success,
        Some(code) => Attempt::Failure(format!("HTTP probe failed with statuscode: {code}")),
        None => Attempt::Failure(format!(
            "Get \"http://{a}{path}\": malformed HTTP response {line:?}"
        )),
    }
}

/// The command in the pod's network namespace (lab pods share the node's
/// file system); exit status 0 is success.
async fn exec(netns: &str, command: &[String], timeout: Duration) -> Attempt {
    let Some((prog, args)) = command.split_first() else {
        return Attempt::Unknown("the exec probe has no command".into());
    };
    match crate::datapath::process::exec_in_netns(netns, prog, args, timeout).await {
        Err(crate::datapath::process::ExecError::Start(e)) => {
            Attempt::Unknown(format!("running ip netns exec: {e}"))
        }
        Err(crate::datapath::process::ExecError::TimedOut) => Attempt::Failure(format!(
            "command {command:?} timed out after {} ms",
            timeout.as_millis()
        )),
        Err(crate::datapath::process::ExecError::Wait(e)) => {
            Attempt::Unknown(format!("waiting for {command:?}: {e}"))
        }
        Ok(o) if o.status.success() => Attempt::Success,
        Ok(o) => {
            let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&o.stderr));
            let out: String = out.trim().chars().take(256).collect();
            Attempt::Failure(format!(
                "command {command:?} exited with {}: {out}",
                o.status.code().unwrap_or(-1)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(answer: &'static str, delay: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                tokio::time::sleep(delay).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        a
    }

    fn target(a: SocketAddr) -> Target {
        Target {
            address: Some(a.ip()),
            netns: String::new(),
        }
    }

    fn http(port: u16) -> Handler {
        Handler::Http {
            https: false,
            host: None,
            port,
            path: "/healthz".into(),
            headers: vec![("X-Probe".into(), "1".into())],
        }
    }

    #[tokio::test]
    async fn http_codes_tcp_and_timeouts() {
        let t = Duration::from_secs(2);
        let ok = serve_once("HTTP/1.1 302 Found\r\n\r\n", Duration::ZERO).await;
        assert_eq!(
            run(&http(ok.port()), &target(ok), t).await,
            Attempt::Success
        );
        let bad = serve_once("HTTP/1.1 500 Internal Server Error\r\n\r\n", Duration::ZERO).await;
        assert_eq!(
            run(&http(bad.port()), &target(bad), t).await,
            Attempt::Failure("HTTP probe failed with statuscode: 500".into())
        );
        let slow = serve_once("HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(5)).await;
        let a = run(
            &http(slow.port()),
            &target(slow),
            Duration::from_millis(200),
        )
        .await;
        assert!(
            matches!(&a, Attempt::Failure(m) if m.starts_with("timeout")),
            "{a:?}"
        );
        let tcp = Handler::Tcp {
            host: None,
            port: ok.port(),
        };
        assert_eq!(run(&tcp, &target(ok), t).await, Attempt::Success);
        // A port nobody listens on: refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let tcp = Handler::Tcp { host: None, port };
        assert!(matches!(
            run(&tcp, &target(ok), t).await,
            Attempt::Failure(_)
        ));
        let none = Target {
            address: None,
            netns: String::new(),
        };
        assert!(matches!(run(&tcp, &none, t).await, Attempt::Unknown(_)));
    }
}
