//! A connection that reconnects by itself, with a timeout on every request, and a pool of them.
//!
//! `Client` wraps one `http::Conn` (HTTP/1.1): it connects lazily, drops the connection after
//! any failure or timeout (its state is unknown then), and reports failures as short stable keys
//! (`connect`, `timeout`, `io`) that the report counts like problem codes. With `--http2` a
//! client is one stream at a time on an `http2::H2Conn` that several clients share. `Pool` lends
//! clients to the many small concurrent jobs of set-up, resolution and verification.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::http::{Conn, Endpoint, Method};
use crate::http2::{H2Conn, H2Failure};

/// A transport failure, named by a stable key.
pub type TransportError = &'static str;

/// One lazily (re)connecting keep-alive connection, or one stream at a time on a shared
/// HTTP/2 connection.
pub struct Client {
    /// Where requests go.
    endpoint: Endpoint,
    /// Bound on connecting plus one request and its response.
    timeout: Duration,
    /// The open HTTP/1.1 connection, if any.
    conn_opt: Option<Conn>,
    /// The shared HTTP/2 connection (`--http2`); `conn_opt` stays empty then.
    h2_opt: Option<Arc<H2Conn>>,
    /// Responses received over HTTP/2, counted so that a report can prove the protocol.
    pub num_responses_http2: u64,
    /// Responses received over HTTP/1.x.
    pub num_responses_http1: u64,
}

impl Client {
    /// Returns a client that has not connected yet: HTTP/1.1, or HTTP/2 on a connection of its
    /// own when the endpoint says so.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Client {
        let h2_opt = endpoint
            .http2
            .then(|| Arc::new(H2Conn::new(endpoint.clone())));
        Client {
            endpoint,
            timeout,
            conn_opt: None,
            h2_opt,
            num_responses_http2: 0,
            num_responses_http1: 0,
        }
    }

    /// Returns a client whose requests are streams on `h2`, shared with other clients.
    pub fn over(h2: Arc<H2Conn>, endpoint: Endpoint, timeout: Duration) -> Client {
        Client {
            endpoint,
            timeout,
            conn_opt: None,
            h2_opt: Some(h2),
            num_responses_http2: 0,
            num_responses_http1: 0,
        }
    }

    /// Sends a request and copies the response body into `body_out`; returns the status.
    pub async fn call_into(
        &mut self,
        method: Method,
        path: &str,
        body: &[u8],
        body_out: &mut Vec<u8>,
    ) -> Result<u16, TransportError> {
        body_out.clear();
        if let Some(h2) = &self.h2_opt {
            let send = h2.send(method, path, body, body_out);
            return match tokio::time::timeout(self.timeout, send).await {
                Ok(Ok((status, http2))) => {
                    match http2 {
                        true => self.num_responses_http2 += 1,
                        false => self.num_responses_http1 += 1,
                    }
                    Ok(status)
                }
                Ok(Err(H2Failure::Connect)) => Err("connect"),
                // The stream failed; `H2Conn` drops the connection itself if it closed.
                Ok(Err(H2Failure::Stream)) => Err("io"),
                Err(_elapsed) => Err("timeout"),
            };
        }
        let result = tokio::time::timeout(self.timeout, async {
            if self.conn_opt.is_none() {
                let conn = Conn::connect(&self.endpoint).await.map_err(|_| "connect")?;
                self.conn_opt = Some(conn);
            }
            // Set just above when it was empty.
            let conn = self.conn_opt.as_mut().expect("connected above");
            let response = conn
                .send(&self.endpoint, method, path, body)
                .await
                .map_err(|_| "io")?;
            body_out.extend_from_slice(response.body);
            Ok::<u16, TransportError>(response.status)
        })
        .await;
        let status = match result {
            Ok(Ok(status)) => status,
            Ok(Err(key)) => {
                self.conn_opt = None;
                return Err(key);
            }
            Err(_elapsed) => {
                self.conn_opt = None;
                return Err("timeout");
            }
        };
        if self.conn_opt.as_ref().is_some_and(Conn::is_closed) {
            self.conn_opt = None;
        }
        self.num_responses_http1 += 1;
        Ok(status)
    }

    /// Sends a request and returns the status and an owned body.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), TransportError> {
        let mut body_out = Vec::new();
        let status = self.call_into(method, path, body, &mut body_out).await?;
        Ok((status, body_out))
    }
}

/// Clients lent to concurrent jobs; a job takes one and gives it back.
pub struct Pool {
    /// Where new clients connect.
    endpoint: Endpoint,
    /// Request timeout of new clients.
    timeout: Duration,
    /// With `--http2`, the one connection every client of the pool sends its streams on.
    h2_opt: Option<Arc<H2Conn>>,
    /// Idle clients; at most as many as jobs ever ran at once.
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    /// Returns an empty pool.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Pool {
        let h2_opt = endpoint
            .http2
            .then(|| Arc::new(H2Conn::new(endpoint.clone())));
        Pool {
            endpoint,
            timeout,
            h2_opt,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Takes an idle client or makes a new one.
    pub fn take(&self) -> Client {
        self.idle
            .lock()
            .pop()
            .unwrap_or_else(|| match &self.h2_opt {
                Some(h2) => Client::over(h2.clone(), self.endpoint.clone(), self.timeout),
                None => Client::new(self.endpoint.clone(), self.timeout),
            })
    }

    /// Gives a client back.
    pub fn give(&self, client: Client) {
        self.idle.lock().push(client);
    }

    /// Sends one request on a pooled client.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), TransportError> {
        let mut client = self.take();
        let result = client.call(method, path, body).await;
        self.give(client);
        result
    }
}
