//! The accept loop's bound: at most [`CONNECTIONS_MAX`] client connections are open at once.
//! Past it, `accept` waits for a connection to close (new clients queue in the kernel's
//! backlog) instead of growing without bound. Accepted sockets get `TCP_NODELAY`, so small
//! answers are never held back by Nagle's algorithm.
//!
//! With TLS ([`BoundedListener::with_tls`]) the handshake runs inside the connection's own
//! task, on its first read or write, not in `accept`: the accept loop is one task, and a slow
//! or silent client must not hold up everyone else's handshake. A handshake is bounded by
//! [`TLS_HANDSHAKE_TIMEOUT_MS`], so a client that connects and says nothing gives its permit
//! back.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tokio_rustls::{server::TlsStream, Accept, TlsAcceptor};

use crate::limits::{CONNECTIONS_MAX, TLS_HANDSHAKE_TIMEOUT_MS};

/// A TCP listener that bounds open connections.
pub struct BoundedListener {
    /// The socket.
    inner: TcpListener,
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    /// Set for HTTPS: every accepted connection starts with a handshake.
    tls_opt: Option<TlsAcceptor>,
}

impl BoundedListener {
    /// Returns a listener allowing [`CONNECTIONS_MAX`] open connections.
    pub fn new(inner: TcpListener) -> BoundedListener {
        BoundedListener {
            inner,
            permits: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
            tls_opt: None,
        }
    }

    /// Returns the listener serving HTTPS through `acceptor`.
    pub fn with_tls(self, acceptor: TlsAcceptor) -> BoundedListener {
        BoundedListener {
            tls_opt: Some(acceptor),
            ..self
        }
    }
}

impl Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        // Failing to set the option only costs latency; the connection still works.
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls_opt {
            None => Conn::Plain(stream),
            Some(acceptor) => Conn::Handshake {
                accept: Box::new(acceptor.accept(stream)),
                deadline: Box::pin(tokio::time::sleep(std::time::Duration::from_millis(
                    TLS_HANDSHAKE_TIMEOUT_MS,
                ))),
            },
        };
        (
            BoundedStream {
                stream,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection; closing it returns its permit.
pub struct BoundedStream {
    /// The socket, or the TLS session over it.
    stream: Conn,
    /// Held for as long as the connection is open.
    _permit: OwnedSemaphorePermit,
}

/// The transport of one connection.
enum Conn {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS before the handshake has completed.
    Handshake {
        /// The handshake in progress (boxed: it holds the whole rustls connection state).
        accept: Box<Accept<TcpStream>>,
        /// When the handshake is given up.
        deadline: Pin<Box<Sleep>>,
    },
    /// HTTPS after the handshake (boxed: a session is several KiB, a plain socket is not).
    Tls(Box<TlsStream<TcpStream>>),
    /// The handshake failed; every later read or write fails too.
    Failed,
}

impl BoundedStream {
    /// Drives a pending handshake; ready once the connection can carry data.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Conn::Handshake { accept, deadline } = &mut self.stream else {
            return match self.stream {
                Conn::Failed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                _ => Poll::Ready(Ok(())),
            };
        };
        let result = match Pin::new(accept.as_mut()).poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tls handshake timed out",
                )),
                Poll::Pending => return Poll::Pending,
            },
        };
        match result {
            Ok(tls) => {
                self.stream = Conn::Tls(Box::new(tls));
                Poll::Ready(Ok(()))
            }
            Err(error) => {
                // Per connection, and usually a client that does not trust the certificate
                // or a port scanner: not an operator's business.
                tracing::debug!(%error, "tls handshake failed");
                self.stream = Conn::Failed;
                Poll::Ready(Err(error))
            }
        }
    }
}

/// Forwards a poll to the connection's transport once the handshake (if any) is done.
macro_rules! forward {
    ($self:ident, $cx:ident, |$io:ident| $call:expr) => {{
        let this = $self.get_mut();
        if let Err(e) = std::task::ready!(this.poll_ready($cx)) {
            return Poll::Ready(Err(e));
        }
        match &mut this.stream {
            Conn::Plain(stream) => {
                let $io = Pin::new(stream);
                $call
            }
            Conn::Tls(stream) => {
                let $io = Pin::new(stream.as_mut());
                $call
            }
            Conn::Handshake { .. } | Conn::Failed => unreachable!("poll_ready returned Ok"),
        }
    }};
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, cx, |io| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self, cx, |io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self, cx, |io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        // Both transports write vectors natively (tokio-rustls always says so).
        match &self.stream {
            Conn::Plain(stream) => stream.is_write_vectored(),
            Conn::Handshake { .. } | Conn::Tls(_) | Conn::Failed => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, cx, |io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.stream {
            // Nothing was sent yet: closing the socket is enough.
            Conn::Handshake { .. } | Conn::Failed => Poll::Ready(Ok(())),
            Conn::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The peer of a connection, as handlers and the middleware see it (`ConnectInfo<PeerAddr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, BoundedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}
