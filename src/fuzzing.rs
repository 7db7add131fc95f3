//! Entry points for the fuzz targets of `tests/fuzz` (feature `fuzzing` only): the private
//! functions that first read what the network and local clients send, reached exactly as the
//! daemon reaches them. Each wraps one function and adds no logic of its own; the daemon never
//! calls anything here. The public ones (`dns::handler::Handler`, `dns::exchange::wire`,
//! `dns::scrub`, `dns::cache`, `record`, `naming::parse_zone`...) are driven directly.

use std::{io, net::SocketAddr};

use hickory_proto::op::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

use crate::{
    control::Context,
    dns::exchange::{self, Datagram, ExchangeError, Exchanged},
    stun::{self, StunError},
};

/// What a forwarder's UDP try does with `datagram`, come from the upstream that `query` was
/// sent to (RFC 5452 section 9.1): `None` when it keeps listening (a stray datagram with
/// another ID, or junk with the query's ID that does not answer it), else the answer, decoded
/// or malformed (`ExchangeError::Malformed`).
pub fn upstream_answer(
    datagram: &[u8],
    query: &Message,
) -> Option<Result<Exchanged, ExchangeError>> {
    match exchange::sort(datagram, query) {
        Datagram::Answer(answer) => Some(answer),
        Datagram::Junk(_) | Datagram::Stray => None,
    }
}

/// The STUN server's reply to `datagram` from `source` (RFC 8489 section 6.3), or why there
/// is none.
///
/// # Errors
/// The reason the datagram is dropped unanswered.
pub fn stun_reply(datagram: &[u8], source: SocketAddr) -> Result<Vec<u8>, &'static str> {
    stun::respond(datagram, source)
}

/// What the STUN client makes of `datagram` from `server` while it waits for the answer to its
/// transaction `id`: `None` for anything that is not that answer.
pub fn stun_answer(
    datagram: &[u8],
    id: &[u8; 12],
    server: SocketAddr,
) -> Option<Result<SocketAddr, StunError>> {
    stun::read_response(datagram, id, server)
}

/// Sends `line` to the control server's handling of one client, over a Unix socket pair, and
/// returns every byte it answers until it closes the connection.
///
/// # Errors
/// The socket pair could not be made, or reading the answer failed.
pub async fn control_exchange(line: &[u8], context: &Context) -> io::Result<Vec<u8>> {
    let (mut cli, daemon) = UnixStream::pair()?;
    let mut answer = Vec::new();
    let talk = async {
        // The server reads one line at most and may close before all of `line` is sent.
        let _ = cli.write_all(line).await;
        let _ = cli.shutdown().await;
        cli.read_to_end(&mut answer).await
    };
    let (_, read) = tokio::join!(crate::control::server::client(daemon, context), talk);
    read?;
    Ok(answer)
}
