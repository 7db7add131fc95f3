//! Binding the DNS sockets and running hickory's server on them.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hickory_server::Server;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::{TcpListener, UdpSocket},
    time::Instant,
};
use tracing::{info, warn};

use super::handler::Handler;

/// Receive buffer asked for on each UDP socket: room for bursts while the workers are busy.
const UDP_RECV_BUFFER: usize = 4 * 1024 * 1024;
/// Pending TCP connections the kernel queues for us.
const TCP_BACKLOG: i32 = 1024;
/// Responses queued per TCP connection; pipelined queries are answered concurrently.
const TCP_RESPONSE_BUFFER: usize = 256;
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
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    // Lets a restarted daemon bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(TCP_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The running DNS server.
pub struct DnsServer {
    server: Server<Handler>,
    addrs: Vec<SocketAddr>,
    in_flight: Arc<AtomicUsize>,
}

impl DnsServer {
    /// Starts serving `sockets` with `handler`.
    pub fn serve(sockets: BoundSockets, handler: Handler, tcp_idle_timeout: Duration) -> Self {
        let in_flight = handler.in_flight();
        let mut server = Server::new(handler);
        for socket in sockets.udp {
            server.register_socket(socket);
        }
        for listener in sockets.tcp {
            server.register_listener(listener, tcp_idle_timeout, TCP_RESPONSE_BUFFER);
        }
        for addr in &sockets.addrs {
            info!(%addr, "DNS listening on UDP and TCP");
        }
        Self {
            server,
            addrs: sockets.addrs,
            in_flight,
        }
    }

    /// The addresses served, UDP and TCP each (port 0 resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Runs until every listener stops; only returns early if one failed.
    pub async fn wait(&mut self) -> Result<(), DnsError> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| DnsError::Stopped(e.to_string()))
    }

    /// Lets the queries being answered finish (new ones are still answered meanwhile) for at
    /// most `drain`, then closes the listeners.
    pub async fn shutdown(&mut self, drain: Duration) -> Result<(), DnsError> {
        let deadline = Instant::now() + drain;
        while self.in_flight.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= deadline {
                let left = self.in_flight.load(Ordering::Relaxed);
                warn!(
                    queries = left,
                    "shutting down with queries still unanswered"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| DnsError::Stopped(e.to_string()))
    }
}
