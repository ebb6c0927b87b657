//! Accepted connections, with a deadline for their first bytes.
//!
//! hyper waits for a new connection's HTTP/2 preface with no time limit, and
//! a graceful stop waits for connections still in that handshake. So one
//! peer that opens a TCP connection and sends nothing would hold a socket
//! forever and make every shutdown wait its whole grace period. Each
//! accepted stream here must deliver its first [`PREFACE_BYTES`] bytes (the
//! HTTP/2 preface, or the start of a TLS hello) within the deadline, and
//! until it has, it is closed the moment the server starts to stop.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Length of the HTTP/2 client connection preface.
pub const PREFACE_BYTES: usize = 24;

/// Every connection accepted on `listener`, with `TCP_NODELAY` set (without
/// it, Nagle turns a 0.3 ms round trip into tens of ms) and a `deadline` for
/// its first bytes. When `stopping` turns true, connections that have not
/// sent them yet are closed.
pub fn incoming(
    listener: TcpListener,
    deadline: Duration,
    stopping: watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<Guarded>> {
    TcpListenerStream::new(listener).map(move |accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(Guarded::new(stream, deadline, stopping.clone()))
    })
}

type Expiry = Pin<Box<dyn std::future::Future<Output = &'static str> + Send>>;

/// A TCP stream that fails its reads if its first bytes come too late.
pub struct Guarded {
    inner: TcpStream,
    /// Bytes still expected before the peer counts as speaking; 0 once it has.
    awaiting: usize,
    /// Resolves, with the reason, when the wait for those bytes is over.
    expiry: Option<Expiry>,
}

impl Guarded {
    fn new(inner: TcpStream, deadline: Duration, mut stopping: watch::Receiver<bool>) -> Self {
        let expiry: Expiry = Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep(deadline) => "no handshake bytes within the deadline",
                _ = stopping.wait_for(|&s| s) => "server stopping before the handshake",
            }
        });
        Self {
            inner,
            awaiting: PREFACE_BYTES,
            expiry: Some(expiry),
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(expiry) = self.expiry.as_mut() {
            if let Poll::Ready(why) = expiry.as_mut().poll(cx) {
                self.expiry = None;
                self.awaiting = usize::MAX; // stays failed
                tracing::debug!(peer = ?self.inner.peer_addr().ok(), why, "connection closed");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
            }
        } else if self.awaiting == usize::MAX {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.expiry.is_some() {
            let got = buf.filled().len() - before;
            self.awaiting = self.awaiting.saturating_sub(got);
            if self.awaiting == 0 {
                self.expiry = None; // it speaks: no more deadline
            }
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
