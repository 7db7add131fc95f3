//! DNS over HTTPS (RFC 8484): each query a POST of `application/dns-message` to the server's
//! URI, over one HTTP/2 connection (RFC 8484 section 5.2 recommends HTTP/2), streams
//! multiplexed. Queries go with ID 0 (section 4.1, for HTTP caches); answers get their
//! query's session ID back before [`super::session`] matches them.

use std::{future::Future, pin::Pin};

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, stream::FuturesUnordered};
use h2::{
    Reason,
    client::{Connection, SendRequest},
};
use http::{
    Request, StatusCode, Uri,
    header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE},
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::debug;

use super::session::{ConnectError, HttpFailure, Incoming, RequestError};
use crate::{config::EncryptedServer, dns::exchange::MAX_MESSAGE};

/// RFC 8484 section 6's media type.
const DNS_MESSAGE: &str = "application/dns-message";

type Stream = TlsStream<TcpStream>;
type Exchange = Pin<Box<dyn Future<Output = Incoming> + Send>>;

/// The URI queries are posted to: the server's name (else its address) as the authority.
pub(super) fn uri(server: &EncryptedServer, path: &str) -> Uri {
    let authority = match &server.name {
        Some(name) if server.addr.port() == 443 => name.clone(),
        Some(name) => format!("{name}:{}", server.addr.port()),
        None => server.addr.to_string(),
    };
    format!("https://{authority}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("https://invalid/dns-query"))
}

/// One HTTP/2 connection and the exchanges on it.
pub(super) struct DohLink {
    sender: SendRequest<Bytes>,
    /// The connection's own task, polled by [`DohLink::next`].
    driver: Connection<Stream, Bytes>,
    driver_done: bool,
    uri: Uri,
    exchanges: FuturesUnordered<Exchange>,
}

impl DohLink {
    /// HTTP/2 over `stream`, which must have agreed to it (ALPN `h2`).
    ///
    /// # Errors
    /// [`ConnectError::Setup`] without ALPN `h2`; [`ConnectError::Io`] when the preface fails.
    pub(super) async fn handshake(stream: Stream, uri: Uri) -> Result<Self, ConnectError> {
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::Setup(
                "the server did not agree to HTTP/2 (ALPN h2)".to_owned(),
            ));
        }
        let (sender, driver) = h2::client::Builder::new()
            .enable_push(false)
            .handshake(stream)
            .await
            .map_err(|error| {
                let error = into_io(error);
                ConnectError::Io(error.kind(), error.raw_os_error(), error.to_string())
            })?;
        Ok(Self {
            sender,
            driver,
            driver_done: false,
            uri,
            exchanges: FuturesUnordered::new(),
        })
    }

    /// Starts the exchange of the query `wire` under `id`.
    pub(super) fn send(&mut self, id: u16, mut wire: Vec<u8>) {
        if wire.len() >= 2 {
            wire[..2].copy_from_slice(&[0, 0]);
        }
        let exchange = post(self.sender.clone(), self.uri.clone(), Bytes::from(wire));
        self.exchanges.push(Box::pin(async move {
            match exchange.await {
                Ok(mut answer) => {
                    if answer.len() >= 2 {
                        answer[..2].copy_from_slice(&id.to_be_bytes());
                    }
                    Incoming::Answer(id, answer.freeze())
                }
                Err(error) => Incoming::Failed(id, error),
            }
        }));
    }

    /// The next exchange to end; `None` once the connection is closed and none is left.
    pub(super) async fn next(&mut self) -> Option<Incoming> {
        loop {
            tokio::select! {
                Some(incoming) = self.exchanges.next(), if !self.exchanges.is_empty() => {
                    return Some(incoming);
                }
                result = &mut self.driver, if !self.driver_done => {
                    debug!(?result, "the HTTP/2 connection ended");
                    self.driver_done = true;
                }
                else => return None,
            }
        }
    }
}

/// POSTs `wire`; the answer's body.
async fn post(sender: SendRequest<Bytes>, uri: Uri, wire: Bytes) -> Result<BytesMut, RequestError> {
    let request = Request::post(uri)
        .header(CONTENT_TYPE, DNS_MESSAGE)
        .header(ACCEPT, DNS_MESSAGE)
        .header(CONTENT_LENGTH, wire.len())
        .body(())
        .map_err(|error| RequestError::Io(std::io::Error::other(error)))?;
    let mut sender = sender.ready().await.map_err(h2_error)?;
    let (response, mut body) = sender.send_request(request, false).map_err(h2_error)?;
    body.send_data(wire, true).map_err(h2_error)?;
    let response = response.await.map_err(h2_error)?;
    if response.status() != StatusCode::OK {
        return Err(RequestError::Http(HttpFailure::Status(
            response.status().as_u16(),
        )));
    }
    let media = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim);
    if !media.is_some_and(|media| media.eq_ignore_ascii_case(DNS_MESSAGE)) {
        return Err(RequestError::Http(HttpFailure::ContentType));
    }
    let mut body = response.into_body();
    let mut answer = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(h2_error)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if answer.len() + chunk.len() > MAX_MESSAGE {
            return Err(RequestError::Http(HttpFailure::TooLarge));
        }
        answer.extend_from_slice(&chunk);
    }
    Ok(answer)
}

/// What an HTTP/2 error means for the exchange: one the server never processed (a GOAWAY
/// that left its stream out, or REFUSED_STREAM, RFC 9113 section 8.7) may be sent again.
fn h2_error(error: h2::Error) -> RequestError {
    if error.is_go_away() || error.reason() == Some(Reason::REFUSED_STREAM) {
        return RequestError::NotProcessed;
    }
    RequestError::Io(into_io(error))
}

/// The I/O error behind `error`, or `error` as one.
fn into_io(error: h2::Error) -> std::io::Error {
    if error.get_io().is_none() {
        return std::io::Error::other(error);
    }
    error
        .into_io()
        .unwrap_or_else(|| std::io::Error::other("HTTP/2 I/O error"))
}
