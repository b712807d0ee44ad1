//! The gRPC health protocol (`grpc.health.v1.Health/Check`), both ends, as a
//! kubelet's `grpc` probe speaks it: plaintext HTTP/2 with prior knowledge.
//!
//! The two messages are one field each, so they are encoded by hand rather
//! than generated:
//!
//! ```text
//! message HealthCheckRequest  { string service = 1; }
//! message HealthCheckResponse { ServingStatus status = 1; }
//! ```
//!
//! On the wire a gRPC message is framed as one byte "compressed" (always 0
//! here), a 4-byte big-endian length and the protobuf bytes; the outcome is
//! the `grpc-status` trailer (0 is OK), with a percent-encoded
//! `grpc-message`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The path of the one method served.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// gRPC status codes used here.
const GRPC_OK: u32 = 0;
const GRPC_INVALID_ARGUMENT: u32 = 3;
const GRPC_UNIMPLEMENTED: u32 = 12;

/// Requests are one short service name; anything bigger is refused.
const MAX_MESSAGE: usize = 64 * 1024;

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingStatus {
    Unknown,
    Serving,
    NotServing,
    ServiceUnknown,
}

impl ServingStatus {
    /// The protobuf enum value.
    pub fn code(self) -> u64 {
        match self {
            ServingStatus::Unknown => 0,
            ServingStatus::Serving => 1,
            ServingStatus::NotServing => 2,
            ServingStatus::ServiceUnknown => 3,
        }
    }

    /// The status of a protobuf enum value; values this version does not
    /// know are `Unknown`, as proto3 open enums are read.
    pub fn from_code(code: u64) -> ServingStatus {
        match code {
            1 => ServingStatus::Serving,
            2 => ServingStatus::NotServing,
            3 => ServingStatus::ServiceUnknown,
            _ => ServingStatus::Unknown,
        }
    }
}

impl std::fmt::Display for ServingStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServingStatus::Unknown => "UNKNOWN",
            ServingStatus::Serving => "SERVING",
            ServingStatus::NotServing => "NOT_SERVING",
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        })
    }
}

// --- protobuf, by hand -----------------------------------------------------

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn get_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = buf.split_first() else {
            return Err("truncated varint".into());
        };
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Walk the fields of a message: `(field number, varint value or bytes)`;
/// fields of other wire types are skipped.
fn for_each_field(
    mut buf: &[u8],
    mut f: impl FnMut(u64, Field<'_>) -> Result<(), String>,
) -> Result<(), String> {
    while !buf.is_empty() {
        let key = get_varint(&mut buf)?;
        let (number, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let v = get_varint(&mut buf)?;
                f(number, Field::Varint(v))?;
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                if buf.len() < n {
                    return Err("truncated fixed-width field".into());
                }
                buf = &buf[n..];
            }
            2 => {
                let len = usize::try_from(get_varint(&mut buf)?)
                    .map_err(|_| "field length out of range".to_string())?;
                if buf.len() < len {
                    return Err("truncated length-delimited field".into());
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                f(number, Field::Bytes(bytes))?;
            }
            t => return Err(format!("unsupported wire type {t}")),
        }
    }
    Ok(())
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn encode_request(service: &str) -> BytesMut {
    let mut m = BytesMut::new();
    if !service.is_empty() {
        put_varint(&mut m, (1 << 3) | 2);
        put_varint(&mut m, service.len() as u64);
        m.put_slice(service.as_bytes());
    }
    m
}

fn decode_request(buf: &[u8]) -> Result<String, String> {
    let mut service = String::new();
    for_each_field(buf, |number, field| {
        if let (1, Field::Bytes(b)) = (number, field) {
            service = String::from_utf8(b.to_vec())
                .map_err(|_| "service name is not UTF-8".to_string())?;
        }
        Ok(())
    })?;
    Ok(service)
}

fn encode_response(status: ServingStatus) -> BytesMut {
    let mut m = BytesMut::new();
    if status.code() != 0 {
        put_varint(&mut m, 1 << 3);
        put_varint(&mut m, status.code());
    }
    m
}

fn decode_response(buf: &[u8]) -> Result<ServingStatus, String> {
    let mut status = ServingStatus::Unknown;
    for_each_field(buf, |number, field| {
        if let (1, Field::Varint(v)) = (number, field) {
            status = ServingStatus::from_code(v);
        }
        Ok(())
    })?;
    Ok(status)
}

// --- gRPC framing ----------------------------------------------------------

fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// The one message of a body; exactly one is expected.
fn unframe(mut body: &[u8]) -> Result<&[u8], String> {
    if body.len() < 5 {
        return Err(format!(
            "a gRPC message needs 5 bytes of framing, got {}",
            body.len()
        ));
    }
    if body.get_u8() != 0 {
        return Err("compressed gRPC messages are not supported".into());
    }
    let len = body.get_u32() as usize;
    if body.len() != len {
        return Err(format!(
            "the gRPC frame says {len} bytes, the body has {}",
            body.len()
        ));
    }
    Ok(body)
}

/// Read a whole body, up to `MAX_MESSAGE` bytes.
async fn read_body(body: &mut h2::RecvStream) -> Result<BytesMut, String> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("reading the body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if buf.len() + chunk.len() > MAX_MESSAGE + 5 {
            return Err(format!("body larger than {MAX_MESSAGE} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Err with the status and message if `headers` carry a non-zero
/// `grpc-status`; `Ok(true)` if they carry `grpc-status: 0`, `Ok(false)` if
/// none.
fn grpc_outcome(headers: &HeaderMap) -> Result<bool, String> {
    let Some(status) = headers.get("grpc-status") else {
        return Ok(false);
    };
    let code: u32 = status
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("bad grpc-status {status:?}"))?;
    if code == GRPC_OK {
        return Ok(true);
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Err(format!("grpc-status {code}: {message}"))
}

// --- client ----------------------------------------------------------------

/// Ask the health service at `addr` about `service` (`""` is the server as a
/// whole), as a kubelet's grpc probe does. Everything (connecting included)
/// must finish within `timeout`.
pub async fn check(
    addr: SocketAddr,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, String> {
    match tokio::time::timeout(timeout, check_inner(addr, service)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
    }
}

async fn check_inner(addr: SocketAddr, service: &str) -> Result<ServingStatus, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
    let exchange = exchange(client, addr, service);
    tokio::pin!(exchange, conn);
    // The connection does the I/O for the exchange: drive both. If the
    // connection ends first without an error, the answer may still be
    // buffered, so keep reading it.
    let mut conn_done = false;
    loop {
        tokio::select! {
            r = &mut exchange => return r,
            r = &mut conn, if !conn_done => {
                conn_done = true;
                r.map_err(|e| format!("HTTP/2 connection to {addr}: {e}"))?;
            }
        }
    }
}

async fn exchange(
    client: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    service: &str,
) -> Result<ServingStatus, String> {
    let h2err = |what: &str, e: h2::Error| format!("{what} ({addr}): {e}");
    let mut client = client
        .ready()
        .await
        .map_err(|e| h2err("HTTP/2 stream", e))?;
    let request = Request::post(format!("http://{addr}{CHECK_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| format!("building the request: {e}"))?;
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| h2err("sending the request", e))?;
    send.send_data(frame(&encode_request(service)), true)
        .map_err(|e| h2err("sending the request body", e))?;
    let response = response
        .await
        .map_err(|e| h2err("reading the response", e))?;
    let (head, mut body) = response.into_parts();
    if head.status != StatusCode::OK {
        return Err(format!("HTTP status {} from {addr}", head.status));
    }
    // A "trailers-only" answer carries grpc-status in the headers.
    if grpc_outcome(&head.headers)? {
        return Err(format!("{addr} answered OK without a message"));
    }
    let data = read_body(&mut body).await?;
    let trailers = body
        .trailers()
        .await
        .map_err(|e| h2err("reading the trailers", e))?
        .unwrap_or_default();
    if !grpc_outcome(&trailers)? {
        return Err(format!("{addr} answered without a grpc-status"));
    }
    decode_response(unframe(&data)?)
}

// --- server ----------------------------------------------------------------

/// Serve the health service on one HTTP/2 connection: `Check` answers
/// `status(service)` for any service name, other methods UNIMPLEMENTED.
pub async fn serve<IO, F>(io: IO, status: F)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(&str) -> ServingStatus,
{
    serve_delayed(io, status, Duration::ZERO).await
}

/// `serve`, with every answer held back `delay` (a slow server).
pub async fn serve_delayed<IO, F>(io: IO, status: F, delay: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Fn(&str) -> ServingStatus,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    // The requests of the connection are answered concurrently, on this
    // task: the IO need not be 'static, nor `status`.
    let mut answers = Vec::new();
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    answers.push(Box::pin(answer(request, respond, &status, delay)));
                }
                _ => break,
            },
            () = poll_all(&mut answers) => {}
        }
    }
}

/// Poll every future of `futures`, dropping those done; never completes.
async fn poll_all<T: Future<Output = ()>>(futures: &mut Vec<Pin<Box<T>>>) {
    std::future::poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        Poll::<()>::Pending
    })
    .await
}

async fn answer<F: Fn(&str) -> ServingStatus>(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    status: &F,
    delay: Duration,
) {
    let (head, mut body) = request.into_parts();
    let outcome = if head.uri.path() != CHECK_PATH {
        Err((
            GRPC_UNIMPLEMENTED,
            format!("unknown method {}", head.uri.path()),
        ))
    } else {
        match read_body(&mut body)
            .await
            .and_then(|b| decode_request(unframe(&b)?))
        {
            Ok(service) => Ok(status(&service)),
            Err(e) => Err((GRPC_INVALID_ARGUMENT, e)),
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let grpc_response = || {
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/grpc")
    };
    match outcome {
        Ok(s) => {
            let Ok(head) = grpc_response().body(()) else {
                return;
            };
            let Ok(mut send) = respond.send_response(head, false) else {
                return;
            };
            if send.send_data(frame(&encode_response(s)), false).is_err() {
                return;
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(GRPC_OK));
            let _ = send.send_trailers(trailers);
        }
        Err((code, message)) => {
            // Trailers-only: the status in the headers, no body.
            let Ok(head) = grpc_response()
                .header("grpc-status", code)
                .header("grpc-message", percent_encode(&message))
                .body(())
            else {
                return;
            };
            let _ = respond.send_response(head, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn protobuf_round_trips() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let mut s = &b[..];
            assert_eq!(get_varint(&mut s), Ok(v));
            assert!(s.is_empty());
        }
        assert!(get_varint(&mut &[0x80u8][..]).is_err());
        assert_eq!(&encode_request("web")[..], b"\x0a\x03web");
        assert_eq!(decode_request(&encode_request("web")), Ok("web".into()));
        assert_eq!(decode_request(b""), Ok(String::new()));
        assert_eq!(&encode_response(ServingStatus::NotServing)[..], b"\x08\x02");
        for s in [
            ServingStatus::Unknown,
            ServingStatus::Serving,
            ServingStatus::NotServing,
            ServingStatus::ServiceUnknown,
        ] {
            assert_eq!(decode_response(&encode_response(s)), Ok(s));
        }
        // Unknown fields are skipped: a fixed64 (2), a string (3), then status.
        let msg = b"\x11\x01\x02\x03\x04\x05\x06\x07\x08\x1a\x02hi\x08\x01";
        assert_eq!(decode_response(msg), Ok(ServingStatus::Serving));
        assert!(decode_response(b"\x1a\x05hi").is_err());
        assert_eq!(unframe(&frame(b"abc")), Ok(&b"abc"[..]));
        assert!(unframe(b"\x00\x00\x00\x00\x09abc").is_err());
        assert_eq!(percent_decode(&percent_encode("50% off\n")), "50% off\n");
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn check_against_serve_follows_the_status() {
        runtime().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // 1: serving, 2: not serving.
            let state = Arc::new(AtomicU64::new(1));
            let server_state = state.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let state = server_state.clone();
                    tokio::spawn(async move {
                        serve(conn, |service| {
                            if service == "nope" {
                                ServingStatus::ServiceUnknown
                            } else {
                                ServingStatus::from_code(state.load(Ordering::SeqCst))
                            }
                        })
                        .await
                    });
                }
            });
            let t = Duration::from_secs(5);
            assert_eq!(check(addr, "", t).await, Ok(ServingStatus::Serving));
            assert_eq!(check(addr, "web", t).await, Ok(ServingStatus::Serving));
            assert_eq!(
                check(addr, "nope", t).await,
                Ok(ServingStatus::ServiceUnknown)
            );
            state.store(2, Ordering::SeqCst);
            assert_eq!(check(addr, "", t).await, Ok(ServingStatus::NotServing));
        });
    }

    #[test]
    fn unknown_methods_are_unimplemented() {
        runtime().block_on(async {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            tokio::spawn(serve(server_io, |_: &str| ServingStatus::Serving));
            let (client, conn) = h2::client::handshake(client_io).await.unwrap();
            tokio::spawn(conn);
            let mut client = client.ready().await.unwrap();
            let request = Request::post("http://x/grpc.health.v1.Health/Watch")
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let (response, mut send) = client.send_request(request, false).unwrap();
            send.send_data(frame(&encode_request("")), true).unwrap();
            let response = response.await.unwrap();
            let e = grpc_outcome(response.headers()).unwrap_err();
            assert!(
                e.starts_with("grpc-status 12:") && e.contains("Watch"),
                "{e}"
            );
        });
    }

    #[test]
    fn a_silent_server_times_out() {
        runtime().block_on(async {
            // Accepts (the kernel does, from the backlog) and never answers.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let timeout = Duration::from_millis(300);
            let start = std::time::Instant::now();
            let r = check(addr, "", timeout).await;
            let took = start.elapsed();
            assert!(r.as_ref().is_err_and(|e| e.contains("within")), "{r:?}");
            assert!(took >= timeout && took < Duration::from_secs(3), "{took:?}");
            drop(listener);
        });
    }
}
