//! DNS over UDP: each datagram answered in a task of its own, with a bound on how many are
//! being answered at once (a datagram past it is dropped, as unbound drops queries past
//! `num-queries-per-thread`: the client asks again). Only queries waiting on an upstream or a
//! DHT lookup take long, and those are bounded by `dns.max_inflight` already; this bound keeps
//! a flood of instant answers from piling up tasks faster than they finish.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use hickory_server::net::xfer::Protocol;
use tokio::{net::UdpSocket, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{log_limit::LogLimit, message};
use crate::dns::{exchange::is_local_shortage, handler::Handler};

/// Datagrams being answered at once, per UDP socket.
pub const MAX_ANSWERING: usize = 4096;
/// Largest datagram read (a DNS message over UDP fits in 65,535 octets).
const MAX_DATAGRAM: usize = 65_535;
/// Wait after the system ran out of buffers before reading again.
const SHORTAGE_PAUSE: Duration = Duration::from_millis(50);

/// Datagrams whose source cannot be answered (port 0, unspecified or broadcast address).
pub static NO_REPLY_ADDRESS: LogLimit =
    LogLimit::new("UDP query from an address that cannot be answered");
/// Datagrams dropped because [`MAX_ANSWERING`] were being answered.
pub static BUSY: LogLimit = LogLimit::new("UDP query dropped: too many being answered");
/// Receive or send errors.
pub static SOCKET_ERROR: LogLimit = LogLimit::new("UDP socket error");

/// Answers the queries that come to `socket` until `stop`.
pub async fn serve(socket: UdpSocket, handler: Handler, stop: CancellationToken) -> io::Result<()> {
    let socket = Arc::new(socket);
    let answering = Arc::new(Semaphore::new(MAX_ANSWERING));
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            () = stop.cancelled() => return Ok(()),
        };
        while tasks.try_join_next().is_some() {}
        let (len, src) = match received {
            Ok(received) => received,
            Err(error) => {
                if SOCKET_ERROR.admit() {
                    warn!(%error, "receiving a DNS query over UDP failed");
                }
                if is_local_shortage(&error) {
                    tokio::time::sleep(SHORTAGE_PAUSE).await;
                }
                continue;
            }
        };
        if !answerable(src) {
            if NO_REPLY_ADDRESS.admit() {
                warn!(%src, "dropping a UDP query from an address no answer can go to");
            }
            continue;
        }
        let Ok(permit) = answering.clone().try_acquire_owned() else {
            if BUSY.admit() {
                warn!(%src, limit = MAX_ANSWERING, "dropping a UDP query: too many are being answered");
            }
            continue;
        };
        let query = buf[..len].to_vec();
        let (socket, handler) = (socket.clone(), handler.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let Some(answer) = message::answer(&handler, query, src, Protocol::Udp).await else {
                return;
            };
            if let Err(error) = socket.send_to(&answer, src).await
                && SOCKET_ERROR.admit()
            {
                warn!(%src, %error, "sending a DNS answer over UDP failed");
            }
        });
    }
}

/// Can an answer go to `src`? Port 0 and the unspecified and broadcast addresses are not
/// where any client listens, only where a spoofer points replies.
fn answerable(src: SocketAddr) -> bool {
    let ip = src.ip().to_canonical();
    let broadcast = match ip {
        std::net::IpAddr::V4(v4) => v4.is_broadcast(),
        std::net::IpAddr::V6(_) => false,
    };
    src.port() != 0 && !ip.is_unspecified() && !broadcast
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofable_sources_are_not_answered() {
        for src in ["127.0.0.1:0", "0.0.0.0:53", "255.255.255.255:53", "[::]:53"] {
            assert!(!answerable(src.parse().unwrap()), "{src}");
        }
        assert!(answerable("127.0.0.1:5353".parse().unwrap()));
        assert!(answerable("[::1]:5353".parse().unwrap()));
    }
}
