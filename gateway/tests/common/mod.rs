//! Test harness: starts `gateway::run` on 127.0.0.1:0 with a temporary data directory and
//! stops it through its shutdown future.

#![allow(dead_code)]

use std::{net::SocketAddr, path::Path, time::Duration};

use gateway::{config::Config, GatewayError};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// Most polls of `/readyz` while a server starts (25 ms apart: 20 s in all).
const READY_POLLS_MAX: u32 = 800;

/// Returns a configuration for tests: loopback, the given data dir, no fsync (tests that check
/// durability across a restart turn it on), 4 shards.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        data_dir: data_dir.to_owned(),
        fsync: false,
        ..Config::default()
    };
    config.engine.shards = 4;
    config
}

/// A running gateway.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// A client for it.
    pub client: reqwest::Client,
    /// Completes the server's shutdown future.
    stop_tx: Option<oneshot::Sender<()>>,
    /// The server task.
    handle: Option<JoinHandle<Result<(), GatewayError>>>,
}

/// An answer, with its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// Returns the `code` of a problem answer.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// Returns a header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts this is a problem+json answer with `status` and `code`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.code(), code, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        for key in ["type", "title", "status", "detail", "code"] {
            assert!(
                !self.body[key].is_null(),
                "problem lacks {key}: {}",
                self.text
            );
        }
        assert_eq!(self.body["status"], status);
    }
}

impl TestServer {
    /// Starts a server and waits until `/readyz` answers 200.
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_with(config, "http", reqwest::Client::new()).await
    }

    /// Starts a server reached as `scheme://127.0.0.1:PORT` through `client` (HTTPS tests pass
    /// a client that trusts their test CA) and waits until `/readyz` answers 200.
    pub async fn start_with(config: Config, scheme: &str, client: reqwest::Client) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(gateway::run(listener, config, async move {
            let _ = stop_rx.await;
        }));
        let server = TestServer {
            base: format!("{scheme}://{addr}"),
            addr,
            client,
            stop_tx: Some(stop_tx),
            handle: Some(handle),
        };
        for _ in 0..READY_POLLS_MAX {
            if let Ok(r) = server
                .client
                .get(format!("{}/readyz", server.base))
                .send()
                .await
            {
                if r.status() == 200 {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server did not become ready");
    }

    /// Shuts the server down gracefully and checks it stopped without error.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.take().expect("stopped once").send(());
        let result = self
            .handle
            .take()
            .expect("stopped once")
            .await
            .expect("server task joins");
        result.expect("the server stops cleanly");
    }

    /// Sends a request and parses the answer.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Resp {
        let r = request.send().await.expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    /// `POST path` with a JSON body and extra headers.
    pub async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Resp {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(&body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.send(request).await
    }

    /// `POST path` with a raw body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        content_type: &str,
    ) -> Resp {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        self.send(request).await
    }

    /// Opens a BRL account and funds it with a credit entry of `funds` (skipped when "0").
    pub async fn funded_account(&self, id: &str, funds: &str) {
        let r = self
            .post(
                "/v1/accounts",
                serde_json::json!({"id": id, "currency": "BRL"}),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "open {id}: {}", r.text);
        if funds != "0" {
            let r = self
                .post(
                    &format!("/v1/accounts/{id}/entries"),
                    serde_json::json!({"id": format!("fund-{id}"), "type": "credit", "amount": funds}),
                )
                .await;
            assert!(r.status == 201 || r.status == 200, "fund {id}: {}", r.text);
        }
    }

    /// Returns an account's `balance`.
    pub async fn balance(&self, id: &str) -> String {
        let r = self.get(&format!("/v1/accounts/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["balance"]
            .as_str()
            .expect("balance is a string")
            .to_owned()
    }
}
