//! The endpoint: a minimal HTTP/1.1 server on tokio that answers `GET /metrics` with the
//! registry in the text format, and nothing else (404 for other paths, 405 for other methods).
//!
//! One request per connection (`Connection: close`), read within [`READ_TIMEOUT`] and
//! [`MAX_REQUEST`] bytes, written within [`WRITE_TIMEOUT`]; at most `metrics.max_connections`
//! at once, a connection past that closed as soon as it is accepted. Prometheus opens a new
//! connection per scrape or keeps one alive and reconnects when it is closed, so nothing more
//! of HTTP is needed; a general HTTP stack (hyper) would be the tree's second one beside h2.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{encoding::text, registry::Registry};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Longest request head read, in bytes: a scraper's is a few hundred.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The text format's media type (OpenMetrics 1.0, which Prometheus asks for and reads).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error("failed to listen for metrics on TCP {addr} (metrics.listen)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        #[source]
        source: io::Error,
    },
}

/// The endpoint's socket, bound before anything is served.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
    max_connections: usize,
}

impl MetricsListener {
    /// Binds `addr` (port 0 picks a free port), to serve at most `max_connections` scrapes at
    /// once.
    ///
    /// # Errors
    /// [`MetricsError::Bind`] when the address is taken or not on this machine.
    pub async fn bind(addr: SocketAddr, max_connections: usize) -> Result<Self, MetricsError> {
        let bind_error = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        info!(%addr, "metrics listening on HTTP (GET /metrics)");
        Ok(Self {
            listener,
            addr,
            max_connections: max_connections.max(1),
        })
    }

    /// The address bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers scrapes of `registry` until `stop`; open connections are dropped then.
    pub async fn serve(self, registry: Registry, stop: CancellationToken) {
        let registry = Arc::new(registry);
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                Some(_) = connections.join_next() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: the next accept may succeed; do not spin.
                    debug!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "metrics connection refused: too many open");
                continue;
            };
            let registry = registry.clone();
            connections.spawn(async move {
                let _slot = slot;
                if let Err(error) = answer(stream, &registry).await {
                    debug!(%peer, %error, "metrics request failed");
                }
            });
        }
        connections.shutdown().await;
    }
}

/// Reads one request from `stream` and answers it.
async fn answer(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request not sent in time"))??;
    let response = match head {
        Some(head) => respond(&head, registry),
        None => reply(
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too long\n",
        ),
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "answer not taken in time"))?
}

/// Reads up to the blank line that ends a request head; `None` when it is longer than
/// [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request ended",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        let end = [&b"\r\n\r\n"[..], b"\n\n"]
            .iter()
            .filter_map(|blank| {
                let at = head.windows(blank.len()).position(|w| w == *blank)?;
                Some(at + blank.len())
            })
            .min();
        if let Some(end) = end {
            // Within the bound, counted to the blank line: what was read past it is not
            // looked at (one request per connection).
            return Ok((end <= MAX_REQUEST).then_some(head));
        }
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

/// The response to a request head.
fn respond(head: &[u8], registry: &Registry) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return reply("400 Bad Request", "text/plain", "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return reply(
            "505 HTTP Version Not Supported",
            "text/plain",
            "HTTP/1.x only\n",
        );
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/metrics" {
        return reply(
            "404 Not Found",
            "text/plain",
            "not found; metrics are at /metrics\n",
        );
    }
    if method != "GET" && method != "HEAD" {
        let response = reply("405 Method Not Allowed", "text/plain", "GET only\n");
        return with_header(response, "Allow: GET, HEAD");
    }
    let mut body = String::with_capacity(16 * 1024);
    if text::encode(&mut body, registry).is_err() {
        return reply(
            "500 Internal Server Error",
            "text/plain",
            "encoding failed\n",
        );
    }
    let mut response = reply("200 OK", CONTENT_TYPE, &body);
    if method == "HEAD" {
        let end = response.len() - body.len();
        response.truncate(end);
    }
    response
}

/// A complete response with `status`, closing the connection.
fn reply(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `response` with `header` added after its status line.
fn with_header(mut response: Vec<u8>, header: &str) -> Vec<u8> {
    let at = response
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(response.len(), |p| p + 2);
    response.splice(at..at, format!("{header}\r\n").into_bytes());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(response: &[u8]) -> String {
        let text = String::from_utf8_lossy(response);
        text.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn only_get_of_the_metrics_path_is_answered() {
        let registry = Registry::default();
        let cases = [
            ("GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK"),
            ("GET /metrics?x=1 HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK"),
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            ("GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
            (
                "POST /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed",
            ),
            (
                "GET /metrics SPDY/3\r\n\r\n",
                "HTTP/1.1 505 HTTP Version Not Supported",
            ),
            ("garbage\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        ];
        for (request, expected) in cases {
            assert_eq!(
                status(&respond(request.as_bytes(), &registry)),
                expected,
                "{request:?}"
            );
        }
        let allowed = respond(b"PUT /metrics HTTP/1.1\r\n\r\n", &registry);
        assert!(String::from_utf8_lossy(&allowed).contains("\r\nAllow: GET, HEAD\r\n"));
        let head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &registry);
        assert!(
            String::from_utf8_lossy(&head).ends_with("\r\n\r\n"),
            "no body after HEAD"
        );
    }

    /// A request head is read to its blank line within [`MAX_REQUEST`] bytes, not a byte more
    /// (a head of 9,216 bytes was taken: the bound was checked after each 1 KiB read).
    #[tokio::test]
    async fn a_request_head_is_bounded_to_the_byte() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (extra, fits) in [(0, true), (1, false), (1000, false)] {
            let filler = MAX_REQUEST - "GET /metrics HTTP/1.1\r\nX: \r\n\r\n".len() + extra;
            let request = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(filler));
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut client, request.as_bytes())
                .await
                .unwrap();
            let head = read_head(&mut server).await.unwrap();
            assert_eq!(head.is_some(), fits, "{} bytes", request.len());
        }
    }
}
