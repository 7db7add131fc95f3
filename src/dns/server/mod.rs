//! The DNS server: it binds the UDP and TCP sockets of `dns.listen`, then serves them with
//! loops of its own ([`udp`], [`tcp`] and its [`connection`]s), where every resource a client
//! can take is bounded (issue 15): TCP connections in total and per client, answers queued per
//! connection, datagrams being answered, and the log lines a client can cause ([`crate::log_limit`]).
//! Each message goes to the [`Handler`] as hickory's `Request` ([`message`]); hickory's own
//! server loops are not used, as they offer no hook for these bounds.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::tcp::TcpLimits;
use super::handler::Handler;
use crate::{
    config::DnsConfig,
    log_limit::{self, LogLimit},
};

pub mod batch;
pub mod connection;

pub mod message;
pub mod pktinfo;
pub mod tcp;
pub mod udp;

/// Every rate-limited kind of log line of the server, for their summaries.
static LOG_LIMITS: [&LogLimit; 6] = [
    &udp::NO_REPLY_ADDRESS,
    &udp::BUSY,
    &udp::SOCKET_ERROR,
    &tcp::REFUSED,
    &tcp::EVICTED,
    &tcp::ACCEPT_FAILED,
];

/// Receive buffer asked for on each UDP socket: room for bursts while the workers are busy.
const UDP_RECV_BUFFER: usize = 4 * 1024 * 1024;
/// Pending TCP connections the kernel queues for us.
const TCP_BACKLOG: i32 = 1024;
/// Send and receive buffers of each TCP connection, in bytes (Linux doubles them for its
/// bookkeeping): room for a few answers written ahead of a client and a burst of pipelined
/// queries. Left to autotuning, a client that sends queries and never reads the answers made
/// the kernel hold up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB, per connection; now
/// `dns.tcp_max_connections` (256) hold about 16 MiB at most.
const TCP_BUFFER: usize = 16 * 1024;
/// How often to try again when port 0 gave a UDP port whose TCP twin is taken.
const PORT_ZERO_TRIES: usize = 16;

/// Errors while binding or running the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Binding a port below 1024 without the privilege to.
    #[error(
        "failed to bind DNS {proto} socket on {addr}: permission denied; run as root, grant the \
         capability (setcap cap_net_bind_service=+ep /path/to/p2pdns), or choose another port \
         (--dns-listen 127.0.0.1:5353)"
    )]
    BindPermission {
        /// `"UDP"` or `"TCP"`.
        proto: &'static str,
        /// The address asked for (its port 0 resolved, for TCP).
        addr: SocketAddr,
    },
    /// Another program already listens there.
    #[error(
        "failed to bind DNS {proto} socket on {addr}: address already in use by another program \
         (see `ss -lunp 'sport = :{port}'`); stop it or choose another address with --dns-listen",
        port = addr.port()
    )]
    AddrInUse {
        /// `"UDP"` or `"TCP"`.
        proto: &'static str,
        /// The address asked for (its port 0 resolved, for TCP).
        addr: SocketAddr,
    },
    /// Any other bind failure (address not on this machine, ...).
    #[error("failed to bind DNS {proto} socket on {addr}")]
    Bind {
        /// `"UDP"` or `"TCP"`.
        proto: &'static str,
        /// The address asked for (its port 0 resolved, for TCP).
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The server stopped on its own.
    #[error("the DNS server stopped: {0}")]
    Stopped(String),
}

impl DnsError {
    fn bind(proto: &'static str, addr: SocketAddr, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::PermissionDenied => Self::BindPermission { proto, addr },
            io::ErrorKind::AddrInUse => Self::AddrInUse { proto, addr },
            _ => Self::Bind {
                proto,
                addr,
                source,
            },
        }
    }
}

/// Bound UDP and TCP sockets for every listen address, before any is served.
pub struct BoundSockets {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
}

impl BoundSockets {
    /// Binds UDP and TCP on each address. Port 0 picks one free port for both protocols.
    pub fn bind(listen: &[SocketAddr]) -> Result<Self, DnsError> {
        let mut bound = Self {
            udp: Vec::new(),
            tcp: Vec::new(),
            addrs: Vec::new(),
        };
        for &addr in listen {
            let (udp, tcp, actual) = bind_pair(addr)?;
            bound.udp.push(udp);
            bound.tcp.push(tcp);
            bound.addrs.push(actual);
        }
        Ok(bound)
    }

    /// The addresses really bound (port 0 resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let tries = if addr.port() == 0 { PORT_ZERO_TRIES } else { 1 };
    let mut last_error = None;
    for _ in 0..tries {
        let udp = bind_udp(addr).map_err(|e| DnsError::bind("UDP", addr, e))?;
        let actual = udp
            .local_addr()
            .map_err(|e| DnsError::bind("UDP", addr, e))?;
        match bind_tcp(actual) {
            Ok(tcp) => return Ok((udp, tcp, actual)),
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                last_error = Some(e);
            }
            Err(e) => return Err(DnsError::bind("TCP", actual, e)),
        }
    }
    let error = last_error.expect("the loop ran at least once and only continues on error");
    Err(DnsError::bind("TCP", addr, error))
}

fn new_socket(addr: SocketAddr, kind: Type, proto: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(proto))?;
    if addr.is_ipv6() {
        // Each address family is listed on its own; [::] must not also take IPv4.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
    if addr.ip().is_unspecified() {
        pktinfo::enable(&socket, addr.is_ipv6())?;
    }
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    // Lets a restarted daemon bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    // Set on the listener, which every connection inherits them from, so that the window a
    // connection announces from its handshake on fits its receive buffer.
    socket.set_send_buffer_size(TCP_BUFFER)?;
    socket.set_recv_buffer_size(TCP_BUFFER)?;
    socket.bind(&addr.into())?;
    socket.listen(TCP_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The running DNS server.
pub struct DnsServer {
    /// One task per UDP socket, one for every TCP listener, and the one reporting
    /// suppressed log lines.
    tasks: JoinSet<io::Result<()>>,
    /// Cancelled when the shutdown begins: no new query is taken from then on.
    draining: CancellationToken,
    /// Cancelled when the drain is over: what is still open closes.
    stop: CancellationToken,
    addrs: Vec<SocketAddr>,
    in_flight: Arc<AtomicUsize>,
}

impl DnsServer {
    /// Starts serving `sockets` with `handler`, within the bounds of `config`.
    pub fn serve(sockets: BoundSockets, handler: Handler, config: &DnsConfig) -> Self {
        let in_flight = handler.in_flight();
        let stop = CancellationToken::new();
        let draining = stop.child_token();
        let mut tasks = JoinSet::new();
        for socket in sockets.udp {
            let serve = udp::serve(socket, handler.clone(), draining.clone(), stop.clone());
            tasks.spawn(serve);
        }
        let limits = TcpLimits::new(config);
        let serve = tcp::serve(
            sockets.tcp,
            handler.clone(),
            limits,
            draining.clone(),
            stop.clone(),
        );
        tasks.spawn(serve);
        let reporter_stop = draining.clone();
        tasks.spawn(async move {
            log_limit::report_suppressed(&LOG_LIMITS, reporter_stop).await;
            Ok(())
        });
        for addr in &sockets.addrs {
            info!(%addr, "DNS listening on UDP and TCP");
        }
        Self {
            tasks,
            draining,
            stop,
            addrs: sockets.addrs,
            in_flight,
        }
    }

    /// The addresses served, UDP and TCP each (port 0 resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Runs until every socket's task ends (which they do only when stopped); the error of
    /// one that failed, if any did.
    pub async fn wait(&mut self) -> Result<(), DnsError> {
        let mut outcome = Ok(());
        while let Some(ended) = self.tasks.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(error)) => outcome = Err(DnsError::Stopped(error.to_string())),
                Err(error) => outcome = Err(DnsError::Stopped(error.to_string())),
            }
        }
        outcome
    }

    /// Shuts down: takes no new query from now on (the TCP listeners close; a UDP socket
    /// answers REFUSED to what comes until the queries it has in flight are answered, then
    /// closes; TCP connections are no longer read), lets the queries in flight be answered for
    /// at most `drain`, then closes what is still open.
    pub async fn shutdown(&mut self, drain: Duration) -> Result<(), DnsError> {
        self.draining.cancel();
        let (stop, in_flight) = (self.stop.clone(), self.in_flight.clone());
        let wait = self.wait();
        tokio::pin!(wait);
        tokio::select! {
            outcome = &mut wait => return outcome,
            () = tokio::time::sleep(drain) => {}
        }
        let left = in_flight.load(Ordering::Relaxed);
        warn!(
            queries = left,
            "shutting down with queries still unanswered"
        );
        stop.cancel();
        wait.await
    }
}
