//! Bounded capture of a module's stdout and stderr.
//!
//! A guest's writes always succeed (a full pipe would turn a log line into a
//! panic), but only the last `capacity` bytes are kept: a panic message is
//! written last, so it survives a flood that came before it.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Debug, Default)]
struct Tail {
    buf: VecDeque<u8>,
    dropped: u64,
}

/// A write-only stream that keeps the tail of what was written.
#[derive(Debug, Clone)]
pub(crate) struct CappedOutput {
    capacity: usize,
    inner: Arc<Mutex<Tail>>,
}

impl CappedOutput {
    pub fn new(capacity: usize) -> Self {
        CappedOutput {
            capacity,
            inner: Arc::new(Mutex::new(Tail::default())),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut t = self.inner.lock();
        let keep = bytes.len().min(self.capacity);
        let skipped = bytes.len() - keep;
        t.dropped += skipped as u64;
        t.buf.extend(&bytes[skipped..]);
        while t.buf.len() > self.capacity {
            t.buf.pop_front();
            t.dropped += 1;
        }
    }

    /// What was kept, lossily decoded, and how many bytes were dropped.
    pub fn take(&self) -> (String, u64) {
        let mut t = self.inner.lock();
        let bytes: Vec<u8> = t.buf.drain(..).collect();
        let dropped = std::mem::take(&mut t.dropped);
        (String::from_utf8_lossy(&bytes).into_owned(), dropped)
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_counts_the_rest() {
        let o = CappedOutput::new(8);
        o.push(b"0123");
        o.push(b"456789abcdef");
        let (kept, dropped) = o.take();
        assert_eq!(kept, "89abcdef");
        assert_eq!(dropped, 8);
        assert_eq!(o.take(), (String::new(), 0));
    }
}
