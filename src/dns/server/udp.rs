//! DNS over UDP: each datagram answered in a task of its own, with a bound on how many are
//! being answered at once (a datagram past it is dropped, as unbound drops queries past
//! `num-queries-per-thread`: the client asks again). Only queries waiting on an upstream or a
//! DHT lookup take long, and those are bounded by `dns.max_inflight` already; this bound keeps
//! a flood of instant answers from piling up tasks faster than they finish. On a wildcard
//! address each answer leaves from the address its query was sent to ([`pktinfo`]).

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_server::net::xfer::Protocol;
use tokio::{
    net::UdpSocket,
    sync::Semaphore,
    task::{Id, JoinError, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{
    batch::{Inbox, Outbox, Received},
    message,
    pktinfo::{self, Destination},
};
use crate::dns::{exchange::is_local_shortage, handler::Handler, memo::MEMO_MAX_REPLY};
use crate::log_limit::LogLimit;

/// Datagrams being answered at once, per UDP socket.
pub const MAX_ANSWERING: usize = 4096;
/// Wait after the system ran out of buffers before reading again.
const SHORTAGE_PAUSE: Duration = Duration::from_millis(50);

/// Datagrams whose source cannot be answered (port 0, unspecified or broadcast address).
pub static NO_REPLY_ADDRESS: LogLimit =
    LogLimit::new("UDP query from an address that cannot be answered");
/// Datagrams dropped because [`MAX_ANSWERING`] were being answered.
pub static BUSY: LogLimit = LogLimit::new("UDP query dropped: too many being answered");
/// Receive or send errors.
pub static SOCKET_ERROR: LogLimit = LogLimit::new("UDP socket error");

/// Answers the queries that come to `socket` until `draining`; then answers those in flight,
/// refusing what comes meanwhile (a query in flight sent again excepted), and returns once
/// they are answered or at `stop`, closing the socket. On a wildcard address, `socket` was
/// made ready with [`pktinfo::enable`].
pub async fn serve(
    socket: UdpSocket,
    handler: Handler,
    draining: CancellationToken,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut server = Server::new(socket, handler);
    let mut inbox = Inbox::new();
    loop {
        let read = tokio::select! {
            read = inbox.recv(&server.socket, server.control.as_mut()) => read,
            () = draining.cancelled() => break,
        };
        server.on_batch(read, &inbox, None).await;
    }
    server.drain(&mut inbox, &stop).await;
    Ok(())
}

/// One UDP socket and the queries it is answering.
struct Server {
    socket: Arc<UdpSocket>,
    /// On a wildcard address, where each datagram's destination is read (see [`pktinfo`]).
    control: Option<pktinfo::Control>,
    handler: Handler,
    answering: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// Who asked each query being answered, by task: a query sent again while the server
    /// shuts down is known as one in flight, whose answer is coming.
    asking: HashMap<Id, Asker>,
    /// Replies from the handler's memo, sent without a task of their own, a batch at a time.
    memo_replies: Outbox,
}

/// The source address and message ID of a query. Not its port: some clients send a query
/// again from a new port (hickory's does, every try from a port of its own).
type Asker = (IpAddr, u16);

impl Server {
    fn new(socket: UdpSocket, handler: Handler) -> Self {
        let wildcard = socket
            .local_addr()
            .is_ok_and(|addr| addr.ip().is_unspecified());
        Self {
            socket: Arc::new(socket),
            control: wildcard.then(pktinfo::Control::new),
            handler,
            answering: Arc::new(Semaphore::new(MAX_ANSWERING)),
            tasks: JoinSet::new(),
            asking: HashMap::new(),
            memo_replies: Outbox::new(MEMO_MAX_REPLY),
        }
    }

    /// Answers the queries in flight, then returns (or at `stop`). The socket stays open for
    /// their answers, which must leave from its address; a query that comes meanwhile is
    /// answered REFUSED at once, which stub resolvers take, like the port unreachable they get
    /// once the socket is closed, as the cue to ask their next server (instead of waiting out
    /// their timeout for a query read and never answered). A query in flight sent again (a
    /// stub's retransmission) is not refused: its answer is coming.
    async fn drain(&mut self, inbox: &mut Inbox, stop: &CancellationToken) {
        let in_flight: HashSet<Asker> = self.asking.values().copied().collect();
        while !self.tasks.is_empty() {
            let event = tokio::select! {
                read = inbox.recv(&self.socket, self.control.as_mut()) => Ok(read),
                Some(ended) = self.tasks.join_next_with_id() => Err(ended),
                () = stop.cancelled() => return,
            };
            match event {
                Ok(read) => self.on_batch(read, inbox, Some(&in_flight)).await,
                Err(ended) => self.ended(ended),
            }
        }
    }

    fn ended(&mut self, ended: Result<(Id, ()), JoinError>) {
        let id = match ended {
            Ok((id, ())) => id,
            Err(error) => error.id(),
        };
        self.asking.remove(&id);
    }

    /// Answers the datagrams of the last read of `inbox` (`read`: how many, or its error),
    /// then sends the replies from the memo among them; or, while draining (given the queries
    /// in flight then), refuses them.
    async fn on_batch(
        &mut self,
        read: io::Result<usize>,
        inbox: &Inbox,
        draining: Option<&HashSet<Asker>>,
    ) {
        while let Some(ended) = self.tasks.try_join_next_with_id() {
            self.ended(ended);
        }
        match read {
            Ok(count) => {
                for i in 0..count {
                    let (query, received) = inbox.get(i);
                    self.on_datagram(query, received, draining).await;
                }
                self.memo_replies.flush(&self.socket).await;
            }
            Err(error) => {
                if SOCKET_ERROR.admit() {
                    warn!(%error, "receiving a DNS query over UDP failed");
                }
                if is_local_shortage(&error) {
                    tokio::time::sleep(SHORTAGE_PAUSE).await;
                }
            }
        }
    }

    /// Answers `query`; or, while draining, refuses it (see [`Server::on_batch`]).
    async fn on_datagram(
        &mut self,
        query: &[u8],
        Received { src, dst, .. }: Received,
        draining: Option<&HashSet<Asker>>,
    ) {
        if !answerable(src) {
            if NO_REPLY_ADDRESS.admit() {
                warn!(%src, "dropping a UDP query from an address no answer can go to");
            }
            return;
        }
        let asker = (src.ip(), message_id(query));
        if let Some(in_flight) = draining {
            if !in_flight.contains(&asker)
                && let Some(refused) = message::refused(query)
            {
                send(&self.socket, &refused, src, dst).await;
            }
            return;
        }
        let reply = self.memo_replies.next_reply();
        if self.handler.answer_from_memo(query, src.ip(), reply) {
            match dst {
                // On a wildcard address a reply carries its source: sent alone.
                Some(_) => send(&self.socket, reply, src, dst).await,
                None => self.memo_replies.keep(&self.socket, src).await,
            }
            return;
        }
        let Ok(permit) = self.answering.clone().try_acquire_owned() else {
            if BUSY.admit() {
                warn!(%src, limit = MAX_ANSWERING, "dropping a UDP query: too many are being answered");
            }
            return;
        };
        let query = query.to_vec();
        let (socket, handler) = (self.socket.clone(), self.handler.clone());
        let task = self.tasks.spawn(async move {
            let _permit = permit;
            if let Some(answer) = message::answer(&handler, query, src, Protocol::Udp).await {
                send(&socket, &answer, src, dst).await;
            }
        });
        self.asking.insert(task.id(), asker);
    }
}

/// The ID of the DNS message `bytes` (0 if too short to have one: no answer goes to it).
fn message_id(bytes: &[u8]) -> u16 {
    match bytes {
        [high, low, ..] => u16::from_be_bytes([*high, *low]),
        _ => 0,
    }
}

/// Sends `answer` to `to`, from `from` if given (else from where the kernel picks).
async fn send(socket: &UdpSocket, answer: &[u8], to: SocketAddr, from: Option<Destination>) {
    let sent = match from {
        Some(from) => pktinfo::send_from(socket, answer, to, from).await,
        None => socket.send_to(answer, to).await,
    };
    if let Err(error) = sent {
        send_failed(to, &error);
    }
}

/// Logs (rate-limited) that an answer to `to` could not be sent.
pub(super) fn send_failed(to: SocketAddr, error: &io::Error) {
    if SOCKET_ERROR.admit() {
        warn!(%to, %error, "sending a DNS answer over UDP failed");
    }
}

/// Can an answer go to `src`? Port 0 and the unspecified and broadcast addresses are not
/// where any client listens, only where a spoofer points replies.
fn answerable(src: SocketAddr) -> bool {
    let ip = src.ip().to_canonical();
    let broadcast = match ip {
        IpAddr::V4(v4) => v4.is_broadcast(),
        IpAddr::V6(_) => false,
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
