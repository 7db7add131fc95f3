//! DNS over TLS (RFC 7858): DNS messages with TCP's two-octet length prefix (RFC 1035 section
//! 4.2.2) on one TLS connection, many queries out at once (RFC 7766 section 6.2.1.1), answers
//! in any order, told apart by their ID ([`super::session`] chooses the IDs).

use std::io;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::{
    io::{AsyncWriteExt, ReadHalf, WriteHalf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::debug;

use super::session::Incoming;
use crate::dns::exchange::MAX_MESSAGE;

type Stream = TlsStream<TcpStream>;

/// One DoT connection.
pub(super) struct DotLink {
    /// Messages as they come, cut at their length prefixes (cancel-safe).
    frames: FramedRead<ReadHalf<Stream>, LengthDelimitedCodec>,
    writer: WriteHalf<Stream>,
}

impl DotLink {
    /// A link over an established TLS connection.
    pub(super) fn new(stream: Stream) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        let codec = LengthDelimitedCodec::builder()
            .length_field_type::<u16>()
            .max_frame_length(MAX_MESSAGE)
            .new_codec();
        Self {
            frames: FramedRead::new(reader, codec),
            writer,
        }
    }

    /// Sends the query `wire` (at most 65535 octets), length first, in one write.
    pub(super) async fn send(&mut self, wire: &[u8]) -> io::Result<()> {
        let len =
            u16::try_from(wire.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(wire);
        self.writer.write_all(&framed).await?;
        self.writer.flush().await
    }

    /// Closes the connection: TLS close_notify, then the TCP FIN.
    pub(super) async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }

    /// The next answer, under its ID; `None` once the connection closed or failed.
    pub(super) async fn next(&mut self) -> Option<Incoming> {
        loop {
            match self.frames.next().await {
                Some(Ok(frame)) if frame.len() >= 2 => {
                    let id = u16::from_be_bytes([frame[0], frame[1]]);
                    return Some(Incoming::Answer(id, Bytes::from(frame)));
                }
                Some(Ok(_)) => debug!("ignoring a message shorter than its ID"),
                Some(Err(error)) => {
                    debug!(%error, "the DoT connection failed");
                    return None;
                }
                None => return None,
            }
        }
    }
}
