//! TCP dials that reuse the listening port, with a fresh port when the kernel refuses it.
//!
//! libp2p dials TCP from the node's listening port ([`PortUse::Reuse`]) so that a NAT maps
//! the outgoing connection like the listener and peers learn an address they can dial back.
//! To do so it binds the dialing socket to the wildcard address and the listening port
//! (`0.0.0.0:4747`). Linux refuses that bind with `EADDRINUSE` whenever another socket holds
//! the same port on any address without `SO_REUSEPORT` (a program listening on
//! `127.0.0.2:4747`, a connection that left from `192.0.2.7:4747`), and for as long as that
//! socket lives. libp2p-tcp (0.45) falls back to a fresh port only when the connect fails with
//! `EADDRNOTAVAIL`; on `EADDRINUSE` the dial fails, and the next one too: a node listening on
//! one address could not reach its bootstrap peer at all (seen in CI: "Address already in use"
//! on every dial for 10 s while another program held the port on another loopback address).
//!
//! [`FreshPortOnConflict`] dials once more from a port of the kernel's choosing when the dial
//! from the listening port fails with `EADDRINUSE`, as libp2p does for `EADDRNOTAVAIL`. The
//! connection works; only the port a NAT maps it to is not the listener's, which a peer
//! dialing back learns from identify as usual.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{FutureExt, future::BoxFuture};
use libp2p::{
    Multiaddr,
    core::transport::{DialOpts, ListenerId, PortUse, Transport, TransportError, TransportEvent},
};
use tracing::debug;

/// A TCP transport whose dials from the listening port fall back to a fresh port on
/// `EADDRINUSE` (see the module documentation). Listening and everything else is the inner
/// transport's.
pub(crate) struct FreshPortOnConflict<T> {
    inner: T,
}

impl<T> FreshPortOnConflict<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self { inner }
    }
}

impl<T> Transport for FreshPortOnConflict<T>
where
    T: Transport<Error = io::Error> + Unpin,
    T::Dial: Send + 'static,
    T::Output: Send + 'static,
{
    type Output = T::Output;
    type Error = io::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = BoxFuture<'static, Result<T::Output, io::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    /// Dials `addr`; with [`PortUse::Reuse`], a second dial from a fresh port is prepared at
    /// once (the socket is made now, connected only if the first fails with `EADDRINUSE`), as
    /// the transport can no longer be reached from inside the returned future.
    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let first = self.inner.dial(addr.clone(), opts)?;
        if opts.port_use != PortUse::Reuse {
            return Ok(first.boxed());
        }
        let fresh = self.inner.dial(
            addr.clone(),
            DialOpts {
                port_use: PortUse::New,
                ..opts
            },
        )?;
        Ok(async move {
            match first.await {
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                    debug!(%addr, "the listening port is held on another address; dialing from a fresh port");
                    fresh.await
                }
                other => other,
            }
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};

    use libp2p::{core::Endpoint, multiaddr::Protocol, tcp};

    use super::*;

    fn reuse() -> DialOpts {
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    fn tcp_addr(addr: SocketAddr) -> Multiaddr {
        Multiaddr::from(addr.ip()).with(Protocol::Tcp(addr.port()))
    }

    /// A TCP transport listening on 127.0.0.1 (a port of the kernel's choosing) and that port.
    async fn listening<T: Transport + Unpin>(transport: &mut T) -> u16 {
        transport
            .listen_on(
                ListenerId::next(),
                "/ip4/127.0.0.1/tcp/0".parse().expect("a valid address"),
            )
            .map_err(|_| "listen")
            .expect("listening on loopback");
        let event = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            futures_util::future::poll_fn(|cx| Pin::new(&mut *transport).poll(cx)),
        )
        .await
        .expect("a listen address within 5 s");
        match event {
            TransportEvent::NewAddress { listen_addr, .. } => match listen_addr.iter().nth(1) {
                Some(Protocol::Tcp(port)) => port,
                other => panic!("not a TCP listen address: {other:?}"),
            },
            _ => panic!("not a listen address"),
        }
    }

    /// Whatever holds the listening port on another loopback address: a listener or a
    /// connected socket, neither with `SO_REUSEPORT` (std sets none).
    enum Holder {
        Listener,
        Connection,
    }

    /// Holds `port` on 127.0.0.2 the way `holder` says; the sockets must live as long as the
    /// test.
    fn hold(port: u16, holder: &Holder) -> Vec<Box<dyn std::any::Any>> {
        let on = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port));
        match holder {
            Holder::Listener => vec![Box::new(TcpListener::bind(on).expect("127.0.0.2 free"))],
            Holder::Connection => {
                let server = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )
                .expect("a socket");
                socket.bind(&on.into()).expect("127.0.0.2 free");
                socket
                    .connect(&server.local_addr().expect("bound").into())
                    .expect("connects on loopback");
                let accepted = server.accept().expect("accepted");
                vec![Box::new(server), Box::new(socket), Box::new(accepted)]
            }
        }
    }

    /// A loopback TCP server to dial, and its address.
    async fn server() -> (tokio::net::TcpListener, Multiaddr) {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let target = tcp_addr(server.local_addr().expect("bound"));
        (server, target)
    }

    /// Dials `target` with `transport`, to the connection or its error.
    async fn dial<T: Transport>(
        transport: &mut T,
        target: Multiaddr,
        port_use: PortUse,
    ) -> Result<T::Output, T::Error> {
        let opts = DialOpts {
            port_use,
            ..reuse()
        };
        let dial = transport.dial(target, opts);
        dial.map_err(|_| "dial").expect("a TCP address").await
    }

    /// The fault itself, then the fix: with the listening port held elsewhere, the bare
    /// transport's dial fails with `EADDRINUSE`, and the wrapped one connects.
    #[tokio::test]
    async fn a_dial_whose_listening_port_is_held_elsewhere_connects_from_a_fresh_port() {
        for holder in [Holder::Listener, Holder::Connection] {
            let (server, target) = server().await;

            let mut bare = tcp::tokio::Transport::new(tcp::Config::default());
            let port = listening(&mut bare).await;
            let _held = hold(port, &holder);
            let error = dial(&mut bare, target.clone(), PortUse::Reuse)
                .await
                .expect_err("the bind to the held port fails");
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");

            let mut wrapped =
                FreshPortOnConflict::new(tcp::tokio::Transport::new(tcp::Config::default()));
            let port = listening(&mut wrapped).await;
            let _held = hold(port, &holder);
            let stream = dial(&mut wrapped, target, PortUse::Reuse)
                .await
                .expect("connected from a fresh port");
            let (_, from) = server
                .accept()
                .await
                .expect("the server sees the connection");
            assert_ne!(from.port(), port);
            drop(stream);
        }
    }

    /// Without a conflict the dial still leaves from the listening port (the point of
    /// reusing it), and a dial with [`PortUse::New`] is passed through.
    #[tokio::test]
    async fn without_a_conflict_the_listening_port_is_used() {
        let (server, target) = server().await;
        let mut wrapped =
            FreshPortOnConflict::new(tcp::tokio::Transport::new(tcp::Config::default()));
        let port = listening(&mut wrapped).await;
        let _stream = dial(&mut wrapped, target.clone(), PortUse::Reuse)
            .await
            .expect("connected");
        let (_, from) = server.accept().await.expect("accepted");
        assert_eq!(from.port(), port);
        let _other = dial(&mut wrapped, target, PortUse::New)
            .await
            .expect("connected");
        let (_, from) = server.accept().await.expect("accepted");
        assert_ne!(from.port(), port);
    }
}
