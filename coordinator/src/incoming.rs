//! Accepted connections (TCP or Unix socket), with a deadline for their first bytes.
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

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::listen::Listener;

/// Length of the HTTP/2 client connection preface.
pub const PREFACE_BYTES: usize = 24;

/// Every connection accepted on `listener`, TCP ones with `TCP_NODELAY` set
/// (without it, Nagle turns a 0.3 ms round trip into tens of ms), with a
/// `deadline` for its first bytes. When `stopping` turns true, connections
/// that have not sent them yet are closed. At most `slots` are open at once
/// ([`crate::fds::Budget`]): one more is closed as soon as it is accepted.
/// A failed accept (out of file descriptors) pauses the loop for
/// [`crate::fds::ACCEPT_BACKOFF`] rather than spinning on it. The loop ends
/// when the server drops the stream.
pub fn incoming(
    listener: Listener,
    deadline: Duration,
    stopping: watch::Receiver<bool>,
    slots: usize,
) -> Pin<Box<dyn Stream<Item = io::Result<Guarded>> + Send>> {
    let (tx, rx) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(slots));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = accept(&listener) => accepted,
                () = tx.closed() => return,
            };
            let conn = match accepted {
                Ok(Some(conn)) => conn,
                Ok(None) => continue, // reset before it could be set up
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; pausing");
                    tokio::time::sleep(crate::fds::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!(peer = ?conn.peer(), "connection limit reached; closed");
                continue;
            };
            let guarded = Guarded::new(conn, deadline, stopping.clone(), slot);
            if tx.send(Ok(guarded)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// One connection from `listener`: `Err` if accepting failed, `None` if the
/// connection failed before it could be used.
async fn accept(listener: &Listener) -> io::Result<Option<Conn>> {
    Ok(match listener {
        Listener::Tcp(l) => {
            let (stream, _) = l.accept().await?;
            stream.set_nodelay(true).ok().map(|()| Conn::Tcp(stream))
        }
        Listener::Unix(l, _) => Some(Conn::Unix(l.accept().await?.0)),
    })
}

/// An accepted connection of either kind.
#[derive(Debug)]
pub enum Conn {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

/// Forwards a poll to the stream inside a [`Conn`].
macro_rules! on_conn {
    ($self:expr, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Tcp($s) => $e,
            Conn::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_conn!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_conn!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_conn!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_conn!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_conn!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl Conn {
    /// The peer, for logs: its address over TCP, none over a Unix socket.
    fn peer(&self) -> Option<std::net::SocketAddr> {
        match self {
            Conn::Tcp(s) => s.peer_addr().ok(),
            Conn::Unix(_) => None,
        }
    }
}

type Expiry = Pin<Box<dyn std::future::Future<Output = &'static str> + Send>>;

/// A connection that fails its reads if its first bytes come too late.
pub struct Guarded {
    inner: Conn,
    /// Bytes still expected before the peer counts as speaking; 0 once it has.
    awaiting: usize,
    /// Resolves, with the reason, when the wait for those bytes is over.
    expiry: Option<Expiry>,
    /// Its place among the connections the loop may hold, given back on drop.
    _slot: OwnedSemaphorePermit,
}

impl Guarded {
    fn new(
        inner: Conn,
        deadline: Duration,
        mut stopping: watch::Receiver<bool>,
        slot: OwnedSemaphorePermit,
    ) -> Self {
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
            _slot: slot,
        }
    }
}

impl Connected for Guarded {
    /// The TCP addresses (none over a Unix socket): what interceptors log.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.inner {
            Conn::Tcp(s) => s.connect_info(),
            Conn::Unix(_) => TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
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
                tracing::debug!(peer = ?self.inner.peer(), why, "connection closed");
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
