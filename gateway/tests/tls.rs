//! Encryption in transit: HTTPS with certificates made here (rcgen), HTTP/2 by ALPN, a
//! certificate replaced on disk while a client stays connected, `--behind-tls-proxy`, and the
//! refusal to start `--auth jwt` beyond loopback without TLS.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{test_config, TestServer};
use gateway::config::AuthMode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{json, Value};

/// Longest wait for the reloader to serve a replaced certificate (it polls every second).
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// Longest wait for `saldo serve` to refuse its configuration (it does so before listening).
const REFUSAL_WAIT: Duration = Duration::from_secs(20);

/// A development secret for HS256 tokens (>= 32 bytes).
const HS256_SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// A test certificate authority and one server certificate it signed.
struct TestPki {
    /// The CA certificate, PEM: what clients trust.
    ca_pem: String,
    /// The server's certificate, PEM.
    cert_pem: String,
    /// The server's certificate, DER: what a client sees as the peer certificate.
    cert_der: Vec<u8>,
    /// The server's private key, PEM.
    key_pem: String,
}

impl TestPki {
    /// Returns a fresh CA and a certificate for 127.0.0.1 and localhost signed by it.
    fn new() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("ca signs itself");
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("ca signs the server certificate");
        TestPki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the certificate and key over `files` (certificate first, as a rotation would).
    fn write(&self, files: &(PathBuf, PathBuf)) {
        std::fs::write(&files.0, &self.cert_pem).expect("write certificate");
        std::fs::write(&files.1, &self.key_pem).expect("write key");
    }

    /// Returns a client that trusts only this CA (and never reuses another client's pool).
    fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("client builds")
    }

    /// Returns a builder that trusts only this CA and reports the peer certificate.
    fn client_builder(&self) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca pem");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .tls_info(true)
    }
}

/// Returns a test configuration serving HTTPS with `pki`'s certificate, written into `dir`,
/// and the certificate and key paths.
fn https_config(dir: &Path, pki: &TestPki) -> (gateway::Config, (PathBuf, PathBuf)) {
    let files = (dir.join("tls.crt"), dir.join("tls.key"));
    pki.write(&files);
    let mut config = test_config(&dir.join("data"));
    config.tls.cert_file = Some(files.0.clone());
    config.tls.key_file = Some(files.1.clone());
    (config, files)
}

/// Returns the DER of the certificate the server presented on this answer's connection.
fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("tls_info(true) reports the peer certificate")
        .to_vec()
}

fn transfer(id: &str, from: &str, to: &str, amount: &str) -> Value {
    json!({"id": id, "from": from, "to": to, "amount": amount, "currency": "BRL"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_happy_path_and_negotiates_http2_by_alpn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new();
    let (config, _files) = https_config(dir.path(), &pki);
    let s = TestServer::start_with(config, "https", pki.client()).await;

    s.funded_account("tls-a", "100.00").await;
    s.funded_account("tls-b", "0").await;
    let r = s
        .post(
            "/v1/transfers",
            transfer("tls-t1", "tls-a", "tls-b", "12.50"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "committed");
    assert_eq!(s.balance("tls-a").await, "87.50");
    assert_eq!(s.balance("tls-b").await, "12.50");
    let r = s.get("/v1/transfers/tls-t1").await;
    assert_eq!((r.status, r.body["amount"].as_str()), (200, Some("12.50")));

    let h2 = s.client.get(format!("{}/healthz", s.base)).send().await;
    let h2 = h2.expect("https request");
    assert_eq!(h2.version(), reqwest::Version::HTTP_2, "h2 offered by ALPN");
    assert_eq!(peer_certificate(&h2), pki.cert_der);
    let h1_client = pki.client_builder().http1_only().build().expect("client");
    let h1 = h1_client.get(format!("{}/healthz", s.base)).send().await;
    let h1 = h1.expect("https request over http/1.1");
    assert_eq!(
        h1.version(),
        reqwest::Version::HTTP_11,
        "http/1.1 still offered"
    );
    let console = s.get("/console/").await;
    assert_eq!(console.status, 200, "the console is served over https too");

    let plain = reqwest::Client::new();
    let r = plain.get(format!("http://{}/healthz", s.addr)).send().await;
    assert!(r.is_err(), "no clear-text HTTP on the HTTPS port: {r:?}");
    let untrusting = TestPki::new().client();
    let r = untrusting.get(format!("{}/healthz", s.base)).send().await;
    assert!(
        r.is_err(),
        "a client that does not trust the CA fails the handshake"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_new_connections_while_open_ones_keep_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old = TestPki::new();
    let (config, files) = https_config(dir.path(), &old);
    // One HTTP/2 connection, kept open for the whole test (the pool never expires it).
    let kept = old
        .client_builder()
        .pool_idle_timeout(None)
        .build()
        .expect("client");
    let s = TestServer::start_with(config, "https", kept).await;
    s.funded_account("rot-a", "10.00").await;

    let new = TestPki::new();
    new.write(&files);
    let started = Instant::now();
    let response = loop {
        let attempt = new.client().get(format!("{}/healthz", s.base)).send().await;
        match attempt {
            Ok(response) => break response,
            Err(_) if started.elapsed() < RELOAD_WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the new certificate was not served: {e}"),
        }
    };
    assert_eq!(
        peer_certificate(&response),
        new.cert_der,
        "a new connection, the new cert"
    );
    let r = s
        .client
        .get(format!("{}/v1/accounts/rot-a", s.base))
        .send()
        .await;
    let r = r.expect("the connection opened before the rotation still works");
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_certificate(&r),
        old.cert_der,
        "it is the old connection"
    );
    let fresh_old = old.client().get(format!("{}/healthz", s.base)).send().await;
    assert!(
        fresh_old.is_err(),
        "a new connection no longer gets the old certificate"
    );

    // A broken replacement is refused and the current certificate stays.
    std::fs::write(&files.1, "not a key").expect("write a broken key");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let r = new.client().get(format!("{}/healthz", s.base)).send().await;
    let r = r.expect("a failed reload keeps the current certificate");
    assert_eq!(peer_certificate(&r), new.cert_der);
    s.stop().await;
}

fn hs256_token(scope: &str) -> String {
    let now_s = jsonwebtoken::get_current_timestamp();
    let claims = json!({"sub": "proxy-test", "scope": scope, "iat": now_s, "exp": now_s + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .expect("token signs")
}

/// Returns a jwt (HS256) configuration behind a TLS proxy at `trusted`.
fn proxied_config(dir: &Path, trusted: &str) -> gateway::Config {
    let mut config = test_config(dir);
    config.auth = AuthMode::Jwt;
    config.jwt.hs256_secret = Some(HS256_SECRET.into());
    config.tls.behind_tls_proxy = true;
    config.tls.trusted_proxies = vec![trusted.parse().expect("network")];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tls_proxy_only_requests_from_a_trusted_proxy_saying_https_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start(proxied_config(dir.path(), "127.0.0.0/8")).await;
    let bearer = format!("Bearer {}", hs256_token("ledger:read ledger:write"));
    let get = |proto_opt: Option<&str>| {
        let mut request = s
            .client
            .get(format!("{}/v1/accounts/nobody", s.base))
            .header("authorization", &bearer);
        if let Some(proto) = proto_opt {
            request = request.header("x-forwarded-proto", proto);
        }
        s.send(request)
    };
    get(Some("https"))
        .await
        .assert_problem(404, "account_not_found");
    get(None).await.assert_problem(403, "tls_required");
    get(Some("http")).await.assert_problem(403, "tls_required");
    get(Some("https, http"))
        .await
        .assert_problem(403, "tls_required");
    let health = s.get("/healthz").await;
    assert_eq!(
        health.status, 200,
        "load balancer probes come without the header"
    );
    s.stop().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start(proxied_config(dir.path(), "10.0.0.0/8")).await;
    let r = s
        .send(
            s.client
                .get(format!("{}/v1/accounts/nobody", s.base))
                .header("authorization", &bearer)
                .header("x-forwarded-proto", "https"),
        )
        .await;
    r.assert_problem(403, "tls_required");
    s.stop().await;
}

/// Runs `saldo serve EXTRA…` with a jwt development secret and returns its exit status and
/// stderr, killing it (by its PID) if it is still running after [`REFUSAL_WAIT`].
fn serve_jwt(data_dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_saldo"))
        .args(["serve", "--auth", "jwt", "--jwt-hs256-secret", HS256_SECRET])
        .args(["--fsync", "false", "--log-format", "text"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("saldo starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > REFUSAL_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)
        .expect("read stderr");
    (status.and_then(|s| s.code()), stderr)
}

#[test]
fn jwt_on_a_wildcard_address_without_tls_refuses_to_start_naming_both_ways_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, stderr) = serve_jwt(dir.path(), &["--listen", "0.0.0.0:0"]);
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    assert!(stderr.contains("--tls-cert/--tls-key"), "{stderr}");
    assert!(stderr.contains("--behind-tls-proxy"), "{stderr}");
    assert!(
        !stderr.contains("listening"),
        "refused before listening: {stderr}"
    );

    // With the proxy flag the TLS check passes. The address is TEST-NET-1, not on this host:
    // the start then fails at bind, so the test never listens beyond loopback.
    let (code, stderr) = serve_jwt(
        dir.path(),
        &[
            "--listen",
            "192.0.2.1:8080",
            "--behind-tls-proxy",
            "--trusted-proxy",
            "10.0.0.0/8",
        ],
    );
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    assert!(
        !stderr.contains("--behind-tls-proxy"),
        "not the tls refusal: {stderr}"
    );
    assert!(
        stderr.contains("failed to listen on 192.0.2.1:8080"),
        "{stderr}"
    );
}
