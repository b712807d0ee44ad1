//! One question sent to the node's upstream resolvers: UDP first, TCP when
//! the answer comes back truncated, each upstream in turn until one
//! answers, within a deadline. The question goes out as a fresh message
//! (a new random ID, recursion desired, EDNS with a 1232-byte payload), and
//! an answer counts only if its ID and question match.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

/// How long one upstream gets before the next is tried.
pub const PER_UPSTREAM: Duration = Duration::from_millis(1500);
/// The EDNS payload we advertise and serve (the DNS flag day 2020 size).
pub const PAYLOAD: u16 = 1232;

/// The message we send for `query`, with `id`.
pub fn request(id: u16, query: &Query) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(PAYLOAD);
    m.edns = Some(edns);
    m
}

/// Whether `answer` answers `request`: same ID, a response, the same
/// question (names compared without case).
fn matches(request: &Message, answer: &Message) -> bool {
    answer.metadata.id == request.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries.len() == 1
        && request.queries.len() == 1
        && answer.queries[0].query_type() == request.queries[0].query_type()
        && answer.queries[0]
            .name()
            .to_lowercase()
            .eq(&request.queries[0].name().to_lowercase())
}

async fn udp(
    upstream: SocketAddr,
    bytes: &[u8],
    request: &Message,
    until: Instant,
) -> Result<Message, String> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(upstream).await.map_err(|e| e.to_string())?;
    sock.send(bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = timeout_at(until, sock.recv(&mut buf))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        // Anything that is not the answer (a stray or forged datagram) is
        // ignored until the deadline.
        if let Ok(m) = Message::from_vec(&buf[..n])
            && matches(request, &m)
        {
            return Ok(m);
        }
    }
}

async fn tcp(
    upstream: SocketAddr,
    bytes: &[u8],
    request: &Message,
    until: Instant,
) -> Result<Message, String> {
    let io = async {
        let mut s = TcpStream::connect(upstream).await?;
        s.set_nodelay(true)?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = timeout_at(until, io)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let m = Message::from_vec(&buf).map_err(|e| format!("a malformed answer: {e}"))?;
    if !matches(request, &m) {
        return Err("an answer to another question".into());
    }
    Ok(m)
}

/// The first answer from `upstreams` to `request`, with the upstream that
/// gave it; or why none did.
pub async fn exchange(
    upstreams: &[SocketAddr],
    request: &Message,
) -> Result<(Message, SocketAddr), String> {
    let bytes = request.to_vec().map_err(|e| e.to_string())?;
    let mut errors = vec![];
    for u in upstreams {
        let until = Instant::now() + PER_UPSTREAM;
        let got = match udp(*u, &bytes, request, until).await {
            Ok(m) if m.metadata.truncation => tcp(*u, &bytes, request, until + PER_UPSTREAM).await,
            other => other,
        };
        match got {
            Ok(m) => return Ok((m, *u)),
            Err(e) => errors.push(format!("{u}: {e}")),
        }
    }
    if errors.is_empty() {
        return Err("no upstream resolver is configured".into());
    }
    Err(errors.join("; "))
}
