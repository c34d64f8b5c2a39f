//! A connection that reconnects by itself, with a timeout on every request, and a pool of them.
//!
//! `Client` wraps one `http::Conn`: it connects lazily, drops the connection after any failure
//! or timeout (its state is unknown then), and reports failures as short stable keys
//! (`connect`, `timeout`, `io`) that the report counts like problem codes. `Pool` lends clients
//! to the many small concurrent jobs of set-up, resolution and verification.

use std::time::Duration;

use parking_lot::Mutex;

use crate::http::{Conn, Endpoint, Method};

/// A transport failure, named by a stable key.
pub type TransportError = &'static str;

/// One lazily (re)connecting keep-alive connection.
pub struct Client {
    /// Where requests go.
    endpoint: Endpoint,
    /// Bound on connecting plus one request and its response.
    timeout: Duration,
    /// The open connection, if any.
    conn_opt: Option<Conn>,
}

impl Client {
    /// Returns a client that has not connected yet.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Client {
        Client {
            endpoint,
            timeout,
            conn_opt: None,
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
    /// Idle clients; at most as many as jobs ever ran at once.
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    /// Returns an empty pool.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Pool {
        Pool {
            endpoint,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Takes an idle client or makes a new one.
    pub fn take(&self) -> Client {
        self.idle
            .lock()
            .pop()
            .unwrap_or_else(|| Client::new(self.endpoint.clone(), self.timeout))
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
