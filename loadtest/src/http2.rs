//! HTTP/2 (`--http2`): many requests in flight as streams on one connection, so that a client's
//! concurrency stops costing a connection each.
//!
//! An `H2Conn` is one HTTP/2 connection shared by several workers (each of its requests is a
//! stream). It speaks h2c with prior knowledge on an `http://` target (the server's hyper-util
//! auto builder recognises the connection preface) and `h2` chosen by ALPN on an `https://`
//! target (see `tls`). The client is hyper's: HTTP/2's framing, flow control and HPACK are not
//! worth writing by hand. Its cost per request is higher than the hand-written HTTP/1.1
//! client's; the report's `generator_cpu_us_per_request` shows it.
//!
//! Failure model: a failed request is an `H2Failure`, `Connect` when no connection could be
//! opened (the worker then pauses, as over HTTP/1.1) and `Stream` otherwise. The connection is
//! dropped only when hyper says it is closed (a GOAWAY, a broken socket); a request that merely
//! failed or timed out resets its own stream and leaves the others alone. Whichever request
//! next finds the connection gone opens a new one, under the mutex, so a broken connection is
//! replaced once and not once per waiting stream. The server's limit on streams per connection (hyper's
//! default is 200) queues any excess inside the client, where the wait counts as latency.

use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::http::{Endpoint, Method};
use crate::limits::HTTP_RESPONSE_BYTES_MAX;
use crate::tls::Stream;

/// Why a request over HTTP/2 failed, for the report's transport keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Failure {
    /// No connection could be opened (TCP, TLS, ALPN or the HTTP/2 handshake).
    Connect,
    /// The stream failed on an open connection (reset, GOAWAY, broken socket, oversized body).
    Stream,
}

/// One HTTP/2 connection shared by the clients of several workers; opened lazily, reopened
/// after it closed.
pub struct H2Conn {
    /// Where requests go.
    endpoint: Endpoint,
    /// The open connection's request handle. A tokio mutex, because opening the connection
    /// (TCP, TLS, the HTTP/2 handshake) is awaited while it is held.
    sender: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl H2Conn {
    /// Returns a connection that has not connected yet.
    pub fn new(endpoint: Endpoint) -> H2Conn {
        H2Conn {
            endpoint,
            sender: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends one request as a stream and copies the response body into `body_out`; returns
    /// the status and whether the response came over HTTP/2 (it always should).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: &[u8],
        body_out: &mut Vec<u8>,
    ) -> Result<(u16, bool), H2Failure> {
        let mut sender = self.sender().await.map_err(|_| H2Failure::Connect)?;
        let request = self
            .request(method, path, body)
            .map_err(|_| H2Failure::Stream)?;
        let result = async {
            sender.ready().await.map_err(io::Error::other)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(io::Error::other)?;
            let status = response.status().as_u16();
            let http2 = response.version() == hyper::Version::HTTP_2;
            let mut incoming = response.into_body();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(io::Error::other)?;
                if let Some(data) = frame.data_ref() {
                    if body_out.len() + data.len() > HTTP_RESPONSE_BYTES_MAX {
                        return Err(io::Error::other(
                            "response larger than HTTP_RESPONSE_BYTES_MAX",
                        ));
                    }
                    body_out.extend_from_slice(data);
                }
            }
            Ok((status, http2))
        }
        .await;
        if result.is_err() && sender.is_closed() {
            let mut slot = self.sender.lock().await;
            // Another stream may already have replaced it; drop only a closed one.
            if slot.as_ref().is_some_and(SendRequest::is_closed) {
                *slot = None;
            }
        }
        result.map_err(|_: io::Error| H2Failure::Stream)
    }

    /// Returns a handle on the open connection, opening one first if there is none.
    async fn sender(&self) -> io::Result<SendRequest<Full<Bytes>>> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        *slot = None;
        let sender = connect(&self.endpoint).await?;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> io::Result<hyper::Request<Full<Bytes>>> {
        let endpoint = &self.endpoint;
        let scheme = if endpoint.tls_opt.is_some() {
            "https"
        } else {
            "http"
        };
        let mut builder = hyper::Request::builder()
            .method(match method {
                Method::Get => hyper::Method::GET,
                Method::Post => hyper::Method::POST,
            })
            .uri(format!("{scheme}://{}{path}", endpoint.host));
        if let Some(token) = &endpoint.token_opt {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if method == Method::Post {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(io::Error::other)
    }
}

/// Opens the socket (and TLS with ALPN `h2`), performs the HTTP/2 handshake and spawns the task
/// that drives the connection; the task ends when the connection closes or the last handle on
/// it is dropped.
async fn connect(endpoint: &Endpoint) -> io::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(endpoint.addr).await?;
    tcp.set_nodelay(true)?;
    let stream = Stream::open(tcp, endpoint.tls_opt.as_ref()).await?;
    if let Stream::Tls(session) = &stream {
        let alpn_opt = session.get_ref().1.alpn_protocol();
        if alpn_opt != Some(b"h2".as_slice()) {
            return Err(io::Error::other("the server did not choose h2 by ALPN"));
        }
    }
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        // A connection error reaches every stream on it as a request error; nothing to add.
        let _ = connection.await;
    });
    Ok(sender)
}
