//! A lean HTTP/1.1 keep-alive client: one TCP (or TLS, see `tls`) connection, one request at
//! a time (`http2` multiplexes instead).
//!
//! The generator must never be the bottleneck, so this is a hand-written client in the spirit of
//! wrk rather than a general one: the request is rendered into a reused buffer and written with
//! one `write_all`, the response is parsed in place with `httparse`, and the body is handed back
//! as a slice of the connection's read buffer. Nothing is allocated per request once the buffers
//! have grown. Both `Content-Length` and chunked bodies are understood; `Connection: close` from
//! the server marks the connection as finished so the caller reconnects.
//!
//! Failure model: every failure is an `io::Error`; after one, the connection is in an unknown
//! state and the caller drops it (the worker loop reconnects lazily). Timeouts are the caller's
//! business (`tokio::time::timeout` around `send`), and a timed-out connection is dropped too.

use std::io;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{HTTP_HEADERS_MAX, HTTP_RESPONSE_BYTES_MAX};
use crate::tls::{Stream, TlsTarget};

/// Where requests go and what every request carries.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Socket address the connections are opened to.
    pub addr: SocketAddr,
    /// Value of the `Host` header, `host:port` as the user wrote it in `--target`.
    pub host: String,
    /// Optional bearer token sent as `Authorization: Bearer …` on every request.
    pub token_opt: Option<String>,
    /// Set for `https://` targets.
    pub tls_opt: Option<TlsTarget>,
    /// Speak HTTP/2 (`--http2`, see `http2`) instead of HTTP/1.1.
    pub http2: bool,
}

impl Endpoint {
    /// Parses `http://host:port` or `https://host:port` (an optional trailing `/` is allowed;
    /// no path). `ca_file_opt` (PEM) replaces the Mozilla roots for an `https://` target; with
    /// `http2` TLS offers only `h2` by ALPN.
    pub fn parse(
        url: &str,
        token_opt: Option<String>,
        ca_file_opt: Option<&Path>,
        http2: bool,
    ) -> anyhow::Result<Endpoint> {
        use std::net::ToSocketAddrs;
        let (rest, default_port, https) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, 80, false)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, 443, true)
        } else {
            anyhow::bail!("target must start with http:// or https:// (got {url})");
        };
        anyhow::ensure!(
            https || ca_file_opt.is_none(),
            "--ca-file is used only with an https:// target"
        );
        let host = rest.trim_end_matches('/');
        anyhow::ensure!(
            !host.contains('/'),
            "target must not carry a path (got {url})"
        );
        let (name, host_port) = match host.rsplit_once(':') {
            Some((name, _)) if !host.ends_with(']') => (name, host.to_string()),
            _ => (host, format!("{host}:{default_port}")),
        };
        let addr = host_port
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("target {url} resolves to no address"))?;
        let tls_opt = match https {
            true => Some(TlsTarget::new(name, ca_file_opt, http2)?),
            false => None,
        };
        Ok(Endpoint {
            addr,
            host: host.to_string(),
            token_opt,
            tls_opt,
            http2,
        })
    }
}

/// HTTP methods the generator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`, never with a body.
    Get,
    /// `POST`, always with a JSON body.
    Post,
}

/// A parsed response whose body borrows the connection's buffer.
#[derive(Debug)]
pub struct Response<'a> {
    /// The HTTP status code.
    pub status: u16,
    /// The body, de-chunked when it was chunked.
    pub body: &'a [u8],
}

/// One keep-alive connection.
pub struct Conn {
    /// The socket (or TLS session), with `TCP_NODELAY` set so small requests leave at once.
    stream: Stream,
    /// Rendered request bytes, reused across requests.
    write_buf: Vec<u8>,
    /// Bytes read from the socket; the current response starts at index 0.
    read_buf: Vec<u8>,
    /// De-chunked body of the last chunked response (empty for `Content-Length` bodies).
    body_buf: Vec<u8>,
    /// Bytes of `read_buf` that belong to the previous response and are dropped before the next.
    consumed: usize,
    /// Set when the server said `Connection: close`; the caller must reconnect.
    closed: bool,
}

impl Conn {
    /// Opens a connection to the endpoint.
    pub async fn connect(endpoint: &Endpoint) -> io::Result<Conn> {
        let tcp = TcpStream::connect(endpoint.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = Stream::open(tcp, endpoint.tls_opt.as_ref()).await?;
        Ok(Conn {
            stream,
            write_buf: Vec::with_capacity(1024),
            read_buf: Vec::with_capacity(16 * 1024),
            body_buf: Vec::new(),
            consumed: 0,
            closed: false,
        })
    }

    /// Returns true when the server asked to close the connection after the last response.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends one request and reads its whole response.
    pub async fn send(
        &mut self,
        endpoint: &Endpoint,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> io::Result<Response<'_>> {
        self.render(endpoint, method, path, body);
        self.stream.write_all(&self.write_buf).await?;
        self.read_buf.drain(..self.consumed);
        self.consumed = 0;
        self.body_buf.clear();
        loop {
            if let Some(head) = self.parse_head()? {
                if let Some(range) = self.try_body(&head)? {
                    self.closed = head.close;
                    let body = match range {
                        BodyAt::Buffer(start, end) => &self.read_buf[start..end],
                        BodyAt::Chunked => &self.body_buf[..],
                    };
                    return Ok(Response {
                        status: head.status,
                        body,
                    });
                }
            }
            if self.read_buf.len() >= HTTP_RESPONSE_BYTES_MAX {
                return Err(io::Error::other(
                    "response larger than HTTP_RESPONSE_BYTES_MAX",
                ));
            }
            self.read_buf.reserve(16 * 1024);
            let n = self.stream.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn render(&mut self, endpoint: &Endpoint, method: Method, path: &str, body: &[u8]) {
        let buf = &mut self.write_buf;
        buf.clear();
        buf.extend_from_slice(match method {
            Method::Get => b"GET ",
            Method::Post => b"POST ",
        });
        buf.extend_from_slice(path.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        buf.extend_from_slice(endpoint.host.as_bytes());
        buf.extend_from_slice(b"\r\n");
        if let Some(token) = &endpoint.token_opt {
            buf.extend_from_slice(b"Authorization: Bearer ");
            buf.extend_from_slice(token.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        if method == Method::Post {
            buf.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            // Writing into a Vec cannot fail.
            let _ = write!(buf, "{}", body.len());
            buf.extend_from_slice(b"\r\n\r\n");
            buf.extend_from_slice(body);
        } else {
            buf.extend_from_slice(b"\r\n");
        }
    }

    fn parse_head(&self) -> io::Result<Option<Head>> {
        let mut headers = [httparse::EMPTY_HEADER; HTTP_HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        let status = response.parse(&self.read_buf).map_err(io::Error::other)?;
        let httparse::Status::Complete(head_len) = status else {
            return Ok(None);
        };
        // `code` is always set once parsing is complete.
        let status = response.code.unwrap_or(0);
        let mut head = Head {
            status,
            head_len,
            content_length_opt: None,
            chunked: false,
            close: response.version == Some(0),
        };
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let text = std::str::from_utf8(header.value).map_err(io::Error::other)?;
                head.content_length_opt = Some(text.trim().parse().map_err(io::Error::other)?);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = header.value.eq_ignore_ascii_case(b"chunked");
            } else if header.name.eq_ignore_ascii_case("connection") {
                head.close = header.value.eq_ignore_ascii_case(b"close");
            }
        }
        Ok(Some(head))
    }

    /// Returns where the body is when the whole response has arrived, `None` to read more.
    fn try_body(&mut self, head: &Head) -> io::Result<Option<BodyAt>> {
        let start = head.head_len;
        let no_body = head.status == 204 || head.status == 304 || (100..200).contains(&head.status);
        if no_body {
            self.consumed = start;
            return Ok(Some(BodyAt::Buffer(start, start)));
        }
        if head.chunked {
            return self.try_chunked(start);
        }
        let Some(length) = head.content_length_opt else {
            return Err(io::Error::other(
                "response without Content-Length is not supported",
            ));
        };
        if length > HTTP_RESPONSE_BYTES_MAX {
            return Err(io::Error::other(
                "response larger than HTTP_RESPONSE_BYTES_MAX",
            ));
        }
        if self.read_buf.len() < start + length {
            return Ok(None);
        }
        self.consumed = start + length;
        Ok(Some(BodyAt::Buffer(start, start + length)))
    }

    fn try_chunked(&mut self, start: usize) -> io::Result<Option<BodyAt>> {
        self.body_buf.clear();
        let mut at = start;
        loop {
            let Some(line_len) = find_crlf(&self.read_buf[at..]) else {
                return Ok(None);
            };
            let line =
                std::str::from_utf8(&self.read_buf[at..at + line_len]).map_err(io::Error::other)?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(io::Error::other)?;
            if size > HTTP_RESPONSE_BYTES_MAX {
                return Err(io::Error::other(
                    "chunk larger than HTTP_RESPONSE_BYTES_MAX",
                ));
            }
            let data_at = at + line_len + 2;
            if size == 0 {
                // Trailers are not used by saldo; expect the closing empty line.
                if self.read_buf.len() < data_at + 2 {
                    return Ok(None);
                }
                self.consumed = data_at + 2;
                return Ok(Some(BodyAt::Chunked));
            }
            if self.read_buf.len() < data_at + size + 2 {
                return Ok(None);
            }
            self.body_buf
                .extend_from_slice(&self.read_buf[data_at..data_at + size]);
            at = data_at + size + 2;
        }
    }
}

/// What the status line and headers said.
struct Head {
    status: u16,
    head_len: usize,
    content_length_opt: Option<usize>,
    chunked: bool,
    close: bool,
}

enum BodyAt {
    Buffer(usize, usize),
    Chunked,
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parses_host_and_port() {
        let endpoint = Endpoint::parse("http://127.0.0.1:8080/", None, None, false).unwrap();
        assert_eq!(endpoint.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(endpoint.host, "127.0.0.1:8080");
        assert!(endpoint.tls_opt.is_none());
        assert!(Endpoint::parse("ftp://127.0.0.1:8080", None, None, false).is_err());
        assert!(Endpoint::parse("http://127.0.0.1:8080/v1", None, None, false).is_err());
        let ca = Path::new("ca.pem");
        assert!(
            Endpoint::parse("http://127.0.0.1:8080", None, Some(ca), false).is_err(),
            "a CA file means https"
        );
    }

    #[test]
    fn https_endpoints_carry_the_server_name_and_default_to_port_443() {
        let endpoint = Endpoint::parse("https://localhost:8443", None, None, false).unwrap();
        assert_eq!(endpoint.addr.port(), 8443);
        let tls = endpoint.tls_opt.expect("https");
        assert_eq!(format!("{:?}", tls.server_name), "DnsName(\"localhost\")");
        let endpoint = Endpoint::parse("https://127.0.0.1", None, None, false).unwrap();
        assert_eq!(endpoint.addr.port(), 443);
        let tls = endpoint.tls_opt.expect("https");
        assert!(matches!(
            tls.server_name,
            rustls_pki_types::ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn crlf_is_found() {
        assert_eq!(find_crlf(b"ab\r\ncd"), Some(2));
        assert_eq!(find_crlf(b"abcd"), None);
    }
}
