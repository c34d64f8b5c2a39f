//! `https://` targets: the rustls client configuration and the connection's transport.
//!
//! The server is trusted through the Mozilla roots (webpki-roots) or, with `--ca-file`, through
//! that PEM file's certificates only: a test deployment with a self-signed CA then needs no
//! change to the system's trust store. ALPN offers `http/1.1` alone for the hand-written client,
//! or `h2` alone with `--http2` (a server that cannot speak it fails the run instead of quietly
//! measuring HTTP/1.1). Sessions are resumed on reconnection (rustls' default
//! in-memory cache), so a reconnecting worker pays for a full handshake only once.

use std::{
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use anyhow::Context as _;
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

/// What an `https://` endpoint needs to open a session.
#[derive(Clone)]
pub struct TlsTarget {
    /// Performs handshakes with the trusted roots.
    pub connector: TlsConnector,
    /// The name the certificate must carry (the target's host, a DNS name or an IP address).
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsTarget {
    /// Returns the client side of TLS for `host`, trusting `ca_file_opt` or the Mozilla roots,
    /// offering `h2` by ALPN when `http2` is set and `http/1.1` otherwise.
    pub fn new(host: &str, ca_file_opt: Option<&Path>, http2: bool) -> anyhow::Result<TlsTarget> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file_opt {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("reading the CA file {}", path.display()))?;
                anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
                for cert in certs {
                    roots.add(cert).context("adding a CA certificate")?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("tls protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_owned())
            .with_context(|| format!("{host} is not a valid TLS server name"))?;
        Ok(TlsTarget {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// The transport of one connection: the socket, or a TLS session over it.
pub enum Stream {
    /// `http://`.
    Plain(TcpStream),
    /// `https://` (boxed: a session is several KiB).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Returns the transport over `tcp`, after a handshake when `tls_opt` is set.
    pub async fn open(tcp: TcpStream, tls_opt: Option<&TlsTarget>) -> io::Result<Stream> {
        match tls_opt {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let session = tls.connector.connect(tls.server_name.clone(), tcp).await?;
                Ok(Stream::Tls(Box::new(session)))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
