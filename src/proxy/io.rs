//! The adapter between glommio sockets and hyper. glommio's `TcpStream`
//! (and futures-rustls over it) speak futures-io's `AsyncRead` /
//! `AsyncWrite`; hyper 1 has its own `hyper::rt::{Read, Write}`. [`HyperIo`]
//! bridges the two. hyper's connection-level client (`client::conn::http1`)
//! needs no executor or timer: the connection future is spawned here on the
//! shard's own executor, and timeouts are glommio timers around the calls.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::client::TlsStream;
use glommio::net::TcpStream;

/// An upstream connection, in clear or over TLS.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Reads at most this much per call: hyper offers its whole (possibly large)
/// uninitialised buffer, which must be zeroed before a futures-io read may
/// see it; zeroing more than one read can fill is waste.
const READ_CHUNK: usize = 64 * 1024;

pub struct HyperIo(pub Upstream);

impl hyper::rt::Read for HyperIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: only initialised bytes are written below, and `advance`
        // is called with the count the read reports filled.
        let spare = unsafe { buf.as_mut() };
        let len = spare.len().min(READ_CHUNK);
        let spare = &mut spare[..len];
        spare.fill(MaybeUninit::new(0));
        // SAFETY: every byte of `spare` was initialised just above.
        let bytes = unsafe { &mut *(spare as *mut [MaybeUninit<u8>] as *mut [u8]) };
        let read = match &mut self.0 {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, bytes),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, bytes),
        };
        match read {
            Poll::Ready(Ok(n)) => {
                // SAFETY: the read filled `n` bytes of the cursor's buffer.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Upstream::Plain(s) => Pin::new(s).poll_close(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
