//! UPnP IGD port mapping that keeps looking for a gateway.
//!
//! libp2p's UPnP behaviour searches for a gateway once, when it is built: a laptop that starts
//! before the network is up, or a router that reboots later, never gets a mapping. This wrapper
//! builds a fresh one when the search found nothing (after 30 s, then twice as long each time,
//! up to an hour) and tells it the listen addresses the old one had seen.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, ExpiredListenAddr, FromSwarm, ListenerClosed,
        NetworkBehaviour, NewListenAddr, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
        dummy,
    },
    upnp,
};
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// The first wait before searching again, and the longest.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const LAST_RETRY: Duration = Duration::from_secs(3600);

/// [`upnp::tokio::Behaviour`], searching again while no gateway is found.
pub(crate) struct Upnp {
    inner: upnp::tokio::Behaviour,
    /// Listen addresses seen so far, told to each new search.
    listening: Vec<(libp2p::core::transport::ListenerId, Multiaddr)>,
    /// When to search again, and the wait after that.
    retry: Option<Pin<Box<Sleep>>>,
    next_wait: Duration,
}

impl Default for Upnp {
    fn default() -> Self {
        Self {
            inner: upnp::tokio::Behaviour::default(),
            listening: Vec::new(),
            retry: None,
            next_wait: FIRST_RETRY,
        }
    }
}

impl NetworkBehaviour for Upnp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = upnp::Event;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::NewListenAddr(NewListenAddr { listener_id, addr }) => {
                self.listening.push((*listener_id, (*addr).clone()));
            }
            FromSwarm::ExpiredListenAddr(ExpiredListenAddr { listener_id, addr }) => {
                self.listening
                    .retain(|(id, a)| !(id == listener_id && a == *addr));
            }
            FromSwarm::ListenerClosed(ListenerClosed { listener_id, .. }) => {
                self.listening.retain(|(id, _)| id != listener_id);
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<upnp::Event, THandlerInEvent<Self>>> {
        if let Some(retry) = &mut self.retry
            && retry.as_mut().poll(cx).is_ready()
        {
            self.retry = None;
            debug!("searching for a UPnP gateway again");
            self.inner = upnp::tokio::Behaviour::default();
            for (listener_id, addr) in &self.listening {
                self.inner
                    .on_swarm_event(FromSwarm::NewListenAddr(NewListenAddr {
                        listener_id: *listener_id,
                        addr,
                    }));
            }
        }
        let polled = self.inner.poll(cx);
        match &polled {
            Poll::Ready(ToSwarm::GenerateEvent(upnp::Event::GatewayNotFound)) => {
                self.retry = Some(Box::pin(tokio::time::sleep_until(
                    Instant::now() + self.next_wait,
                )));
                self.next_wait = (self.next_wait * 2).min(LAST_RETRY);
                // Registers the timer with this task.
                if let Some(retry) = &mut self.retry {
                    let _ = retry.as_mut().poll(cx);
                }
            }
            Poll::Ready(ToSwarm::GenerateEvent(upnp::Event::NewExternalAddr { .. })) => {
                self.next_wait = FIRST_RETRY;
            }
            _ => {}
        }
        polled
    }
}
