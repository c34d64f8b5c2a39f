//! The cheapest HTTP/1.1 server possible: answers every request with a canned `200 ok`.
//!
//! It exists to measure the generator's own ceiling: against it, nearly all CPU goes to the
//! generator, so the rate reached is the client's limit, not a server's. It reads requests
//! without bodies only (`GET`), handles keep-alive and pipelining, runs on one thread, listens
//! where told (use 127.0.0.1) and exits by itself after `SECONDS` (default 300).
//!
//! `cargo run --release -p saldo-loadtest --example canned_server -- 127.0.0.1:9999 [SECONDS]`

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Response sent to every request.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";

/// Largest unread request data kept per connection.
const BUFFER_BYTES_MAX: usize = 64 * 1024;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9999".to_string());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("canned_server: listening on {addr} for {seconds}s");
        let serve = async {
            loop {
                let (mut stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(8 * 1024);
                    let mut out = Vec::with_capacity(8 * 1024);
                    loop {
                        if buf.len() >= BUFFER_BYTES_MAX {
                            return;
                        }
                        buf.reserve(8 * 1024);
                        match stream.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let mut consumed = 0;
                        while let Some(end) = find(&buf[consumed..], b"\r\n\r\n") {
                            consumed += end + 4;
                            out.extend_from_slice(RESPONSE);
                        }
                        buf.drain(..consumed);
                        if !out.is_empty() {
                            if stream.write_all(&out).await.is_err() {
                                return;
                            }
                            out.clear();
                        }
                    }
                });
            }
        };
        tokio::select! {
            result = serve => result,
            () = tokio::time::sleep(Duration::from_secs(seconds)) => Ok(()),
        }
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
