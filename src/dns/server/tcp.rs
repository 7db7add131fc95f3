//! DNS over TCP: the accept loop and the table of open connections it owns. The caps of
//! `[dns]` hold at every accept: at `tcp_max_per_client` connections from the new client's
//! address (an IPv6 client: its /64) that client's oldest idle connection is closed, at
//! `tcp_max_connections` in all the oldest idle connection of anyone is (RFC 7766 section
//! 6.2.3 lets a server close idle connections, oldest first); with none idle, the new
//! connection is closed instead. An accept that fails for want of descriptors (EMFILE,
//! ENFILE) pauses accepting for a moment instead of spinning on a listener that stays
//! readable; the caps, not this, are what keeps TCP clients from taking every descriptor.

use std::{
    collections::HashMap,
    future::poll_fn,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    task::Poll,
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::{AbortHandle, Id, JoinError, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection::{self, Activity};
use crate::log_limit::LogLimit;
use crate::{
    config::DnsConfig,
    dns::{exchange::is_local_shortage, handler::Handler},
};

/// How long accepting pauses after the process ran out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// New connections closed because the caps were reached with no idle connection to close.
pub static REFUSED: LogLimit = LogLimit::new("DNS TCP connection refused at the cap");
/// Idle connections closed to make room for a new one.
pub static EVICTED: LogLimit = LogLimit::new("idle DNS TCP connection closed at the cap");
/// Accepts that failed.
pub static ACCEPT_FAILED: LogLimit = LogLimit::new("accepting a DNS TCP connection failed");

/// The TCP bounds of `[dns]`.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// `dns.tcp_max_connections`.
    pub max_connections: usize,
    /// `dns.tcp_max_per_client`.
    pub max_per_client: usize,
    /// `dns.tcp_max_pending`.
    pub max_pending: usize,
    /// `dns.tcp_idle_timeout_secs`.
    pub idle_timeout: Duration,
}

impl TcpLimits {
    /// The bounds `config` sets.
    pub fn new(config: &DnsConfig) -> Self {
        Self {
            max_connections: config.tcp_max_connections,
            max_per_client: config.tcp_max_per_client,
            max_pending: config.tcp_max_pending,
            idle_timeout: Duration::from_secs(config.tcp_idle_timeout_secs),
        }
    }
}

/// Accepts connections on `listeners` (every TCP address of `dns.listen`, under one set of
/// caps) and serves them until `draining`. Then the listeners close (the kernel refuses new
/// connections), the connections are read no more and close once their answers in flight are
/// written; at `stop` every connection still open is closed.
pub async fn serve(
    listeners: Vec<TcpListener>,
    handler: Handler,
    limits: TcpLimits,
    draining: CancellationToken,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut table = Table {
        limits,
        epoch: Instant::now(),
        tasks: JoinSet::new(),
        open: HashMap::new(),
        draining: draining.clone(),
    };
    let accept = || {
        poll_fn(|cx| {
            listeners
                .iter()
                .find_map(|listener| match listener.poll_accept(cx) {
                    Poll::Ready(accepted) => Some(accepted),
                    Poll::Pending => None,
                })
                .map_or(Poll::Pending, Poll::Ready)
        })
    };
    loop {
        tokio::select! {
            accepted = accept() => match accepted {
                Ok((stream, peer)) => table.open(stream, peer, &handler),
                Err(error) => table.accept_failed(&error).await,
            },
            Some(ended) = table.tasks.join_next_with_id() => table.ended(ended),
            () = draining.cancelled() => break,
        }
    }
    drop(listeners);
    while !table.tasks.is_empty() {
        tokio::select! {
            Some(ended) = table.tasks.join_next_with_id() => table.ended(ended),
            () = stop.cancelled() => break,
        }
    }
    Ok(())
}

/// The open connections, of every listener.
struct Table {
    limits: TcpLimits,
    epoch: Instant,
    /// One task per connection; dropping the table closes them all.
    tasks: JoinSet<()>,
    open: HashMap<Id, Open>,
    /// Tells the connections to read no more queries.
    draining: CancellationToken,
}

/// One open connection.
struct Open {
    /// Its client, as counted for `tcp_max_per_client`.
    client: IpAddr,
    activity: Arc<Activity>,
    abort: AbortHandle,
}

impl Table {
    fn open(&mut self, stream: TcpStream, peer: SocketAddr, handler: &Handler) {
        let client = client_key(peer.ip());
        if !self.make_room(client) {
            if REFUSED.admit() {
                warn!(%peer, open = self.open.len(), "closing a new DNS TCP connection: the connection caps are reached and none is idle");
            }
            return;
        }
        let activity = Arc::new(Activity::new(self.epoch));
        let connection = connection::serve(
            stream,
            peer,
            handler.clone(),
            self.limits,
            activity.clone(),
            self.draining.clone(),
        );
        let abort = self.tasks.spawn(connection);
        let open = Open {
            client,
            activity,
            abort,
        };
        self.open.insert(open.abort.id(), open);
    }

    /// Closes what the caps ask to close before a connection from `client` may open; false if
    /// it may not.
    fn make_room(&mut self, client: IpAddr) -> bool {
        let from_client = self.open.values().filter(|o| o.client == client).count();
        if from_client >= self.limits.max_per_client && !self.close_oldest_idle(Some(client)) {
            return false;
        }
        self.open.len() < self.limits.max_connections || self.close_oldest_idle(None)
    }

    /// Closes the connection idle the longest (of `client` only, if given); false if none is
    /// idle.
    fn close_oldest_idle(&mut self, client: Option<IpAddr>) -> bool {
        let oldest = self
            .open
            .iter()
            .filter(|(_, open)| client.is_none_or(|c| open.client == c))
            .filter_map(|(id, open)| open.activity.idle_since().map(|since| (since, *id)))
            .min();
        let Some((_, id)) = oldest else {
            return false;
        };
        if let Some(open) = self.open.remove(&id) {
            open.abort.abort();
            if EVICTED.admit() {
                info!(client = %open.client, open = self.open.len(), "closed the oldest idle DNS TCP connection to make room");
            }
        }
        true
    }

    fn ended(&mut self, ended: Result<(Id, ()), JoinError>) {
        let id = match ended {
            Ok((id, ())) => id,
            Err(error) => {
                if error.is_panic() {
                    warn!(%error, "a DNS TCP connection task panicked");
                }
                error.id()
            }
        };
        self.open.remove(&id);
    }

    async fn accept_failed(&self, error: &io::Error) {
        if !is_local_shortage(error) {
            // The connection was gone before it was accepted (reset, aborted): nothing to do.
            debug!(%error, "accepting a DNS TCP connection failed");
            return;
        }
        if ACCEPT_FAILED.admit() {
            warn!(%error, open = self.open.len(), "out of descriptors accepting DNS TCP connections; pausing");
        }
        tokio::time::sleep(ACCEPT_PAUSE).await;
    }
}

/// The address counted for `tcp_max_per_client`: an IPv4 address, or the /64 of an IPv6 one
/// (a host commonly has a whole /64 to pick addresses from).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_its_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("127.0.0.2"), key("::ffff:127.0.0.2"));
        assert_ne!(key("127.0.0.1"), key("127.0.0.2"));
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:2"));
        assert_ne!(key("2001:db8:0:1::1"), key("2001:db8::1"));
    }
}
