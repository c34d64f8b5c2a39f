//! HTTPS: the server's rustls configuration and its certificate, reloaded in place.
//!
//! `--tls-cert`/`--tls-key` name two PEM files (the chain, leaf first, and its private key).
//! [`ServerTls::load`] reads them once at start, where any error stops the node. Afterwards
//! [`ServerTls::spawn_reloader`] polls both files every [`TLS_RELOAD_INTERVAL_MS`]; when their
//! contents change it parses them and swaps the [`CertifiedKey`] behind [`ReloadingCert`],
//! which every new handshake asks for. Connections already open keep the session they
//! negotiated, so a rotation (cert-manager, a Kubernetes Secret, certbot) needs no restart and
//! drops no connection.
//!
//! Failure model: a reload that fails (a half-written file, a key that does not match the
//! certificate because only one of the two files was replaced yet) keeps the old certificate
//! and logs a warning; the next change of either file is tried again. Contents rather than
//! modification times are compared, so a Kubernetes Secret update (an atomic symlink swap that
//! may keep the mtime) is seen too. HTTP/2 is offered by ALPN next to HTTP/1.1; the connection
//! then speaks whichever the client chose (hyper recognises the HTTP/2 preface).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use parking_lot::RwLock;
use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::limits::TLS_RELOAD_INTERVAL_MS;

/// ALPN protocols offered, in the server's order of preference.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM block of the expected kind.
    #[error("{path} holds no valid {what} in PEM: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// The parser's reason.
        detail: String,
    },
    /// rustls refused the pair (unsupported key type, key not matching the certificate, …).
    #[error("the key in {key} does not fit the certificate in {cert}: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the server configuration.
    #[error("invalid tls configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The two PEM files of the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl CertFiles {
    /// Returns the raw contents of both files, compared between polls to detect a change.
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Parses the contents read by [`CertFiles::read`] into a key rustls can sign with.
    fn parse(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let pem_error = |path: &Path, what, detail: String| TlsError::Pem {
            path: path.to_owned(),
            what,
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(&self.cert, "certificate", e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_error(
                &self.cert,
                "certificate",
                "no CERTIFICATE block".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| pem_error(&self.key, "private key", e.to_string()))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }
}

/// The certificate every new handshake gets; swapped whole when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    /// The current certificate and key. A handshake clones the `Arc` under a read lock held
    /// for nanoseconds; the reloader takes the write lock once per change.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// The server side of HTTPS: the acceptor and what the reloader needs.
#[derive(Clone)]
pub struct ServerTls {
    /// Performs handshakes with the current certificate.
    pub acceptor: TlsAcceptor,
    /// The swappable certificate behind the acceptor.
    resolver: Arc<ReloadingCert>,
    /// Where the certificate comes from.
    files: CertFiles,
    /// rustls on ring, the provider the rest of the tree (reqwest, the AWS client) uses.
    provider: Arc<CryptoProvider>,
}

impl ServerTls {
    /// Returns the server configuration for `files`, or why they cannot be used.
    pub fn load(files: CertFiles) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = files.read()?;
        let certified = files.parse(&cert_pem, &key_pem, &provider)?;
        let resolver = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(certified)),
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            files,
            provider,
        })
    }

    /// Polls the files until `stop` is cancelled, swapping in each new valid certificate.
    pub fn spawn_reloader(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            // What was last tried, valid or not: a bad pair is reported once, not every poll.
            let mut seen_opt = this.files.read().ok();
            let interval = Duration::from_millis(TLS_RELOAD_INTERVAL_MS);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                this.reload_if_changed(&mut seen_opt);
            }
        })
    }

    /// Reads the files and swaps the certificate if they changed and parse.
    fn reload_if_changed(&self, seen_opt: &mut Option<(Vec<u8>, Vec<u8>)>) {
        let files = &self.files;
        let (cert_pem, key_pem) = match files.read() {
            Ok(read) => read,
            Err(error) => {
                // Reported on every poll while a file is missing: a rotation that deleted
                // the certificate needs an operator.
                tracing::warn!(%error, "tls certificate not reloaded; keeping the current one");
                return;
            }
        };
        if seen_opt
            .as_ref()
            .is_some_and(|(cert, key)| *cert == cert_pem && *key == key_pem)
        {
            return;
        }
        match files.parse(&cert_pem, &key_pem, &self.provider) {
            Ok(certified) => {
                *self.resolver.current.write() = Arc::new(certified);
                tracing::info!(cert = %files.cert.display(), "tls certificate reloaded");
            }
            Err(error) => {
                tracing::warn!(%error, "tls certificate not reloaded; keeping the current one");
            }
        }
        *seen_opt = Some((cert_pem, key_pem));
    }
}
