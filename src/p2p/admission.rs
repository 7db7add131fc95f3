//! Which incoming connections may run their handshake (TCP then Noise and Yamux, or QUIC's):
//! a transport wrapper with a budget of handshakes in flight per transport, shared fairly
//! between address groups (IPv4 /24, IPv6 /48) and addresses (IPv4 address, IPv6 /64).
//!
//! A handshake slot is cheap to hold: an idle TCP connection costs its sender nothing. With one
//! budget that refuses newcomers once full (libp2p's `connection_limits`), 300 addresses with
//! one idle connection each kept every node out, QUIC's too since both shared the budget. A
//! handshake timeout of 2 s instead of 6 only moved that to about 2,000 addresses (the flood
//! opens again what is cut; half the first tries failed at 500), and limits per /24 only to as
//! many /24s, which an attacker with a few hundred of them, or an IPv6 /32, has. So a full
//! budget refuses no one outright ([`FairShare`]): the newcomer takes the slot of the oldest
//! handshake of the group holding the most, then of its address holding the most; unless the
//! newcomer's own group and address hold as many, in which case it is the one refused. A
//! group alone gets the whole budget when no one else asks; under a flood each group keeps its
//! share, and a handshake from a group that is not the busiest is dropped only once every
//! group holds as few and as many newer handshakes as the budget holds arrived (at 256 slots,
//! some 1,000 new connections a second from as many /24s to drop a handshake of a quarter
//! second). A peer gets its connection at its first try instead of waiting for a slot to come
//! free. (Ranking addresses by the connections they opened lately, as open connections are,
//! served 4 of 10 first tries under 1,000 flooding addresses: the node trying again ranked as
//! a flood.)
//!
//! Each transport has its own budget (`p2p.max_pending_incoming`), so a TCP flood leaves QUIC
//! alone and the other way round. Relayed connections are not wrapped: the relay bounds them.
//! The handshake timeout stays the transports' own (`DIAL_TIMEOUT` in
//! [`super::behaviour`]): it frees slots when no one asks for them, and no longer decides who
//! gets in. [`FairShare`] also shares an introduction server's open connections
//! ([`crate::intro::per_ip`]).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::{FutureExt, TryFutureExt, future::MapErr};
use libp2p::{
    Multiaddr,
    core::transport::{Boxed, DialOpts, ListenerId, Transport, TransportError, TransportEvent},
};
use tokio::sync::oneshot;
use tracing::debug;

use super::fair_share::{FairShare, Source};

/// What [`Admission`] grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdmissionLimits {
    /// Handshakes in flight at once on this transport (at least 1).
    pub(crate) budget: usize,
    /// Handshakes in flight at once from one address (IPv6: one /64); `None`: the budget.
    pub(crate) per_address: Option<u32>,
}

/// Why an incoming connection's handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmissionError<E> {
    /// The transport's own error (the handshake failed or timed out, say).
    #[error(transparent)]
    Transport(E),
    /// The handshake was dropped to make room for one from an address group holding fewer.
    #[error(
        "handshake dropped: the budget of handshakes was full, and its address group holds the most"
    )]
    Evicted,
}

/// Incoming connections refused in one poll at most, before others get a turn.
const REFUSALS_PER_TURN: usize = 64;

/// Handshakes in flight: each one's sender, which drops the handshake when dropped and is
/// closed once the handshake ended either way.
type InFlight = FairShare<oneshot::Sender<()>>;

/// Counts a handshake from `source`; returns what it must watch, or `None` when refused.
fn admit_handshake(in_flight: &mut InFlight, source: Source) -> Option<oneshot::Receiver<()>> {
    if in_flight.contended(source) {
        // Forget the handshakes that ended (their future completed or was dropped).
        in_flight.retain(|abort| !abort.is_closed());
    }
    let (abort, watch) = oneshot::channel();
    match in_flight.admit(source, abort) {
        Ok((_, displaced)) => {
            if displaced.is_some() {
                debug!("handshake dropped for a newcomer from a less busy address group");
            }
            Some(watch)
        }
        Err(_) => None,
    }
}

/// A transport whose incoming connections are admitted as the module says; dials and
/// listeners are the wrapped transport's.
pub(crate) struct Admission<T> {
    inner: T,
    in_flight: InFlight,
}

impl<T> Admission<T> {
    /// Wraps `inner`, admitting its incoming connections within `limits`.
    pub(crate) fn new(inner: T, limits: AdmissionLimits) -> Self {
        Self {
            inner,
            in_flight: FairShare::new(limits.budget, limits.per_address),
        }
    }
}

/// An incoming connection's handshake, dropped when [`Admission`] drops its slot.
pub(crate) struct Admitted<F> {
    inner: Pin<Box<F>>,
    /// Ready (closed) once the slot was given to another; `None` when not counted.
    evicted: Option<oneshot::Receiver<()>>,
}

impl<F, O, E> Future for Admitted<F>
where
    F: Future<Output = Result<O, E>>,
{
    type Output = Result<O, AdmissionError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(evicted) = self.evicted.as_mut()
            && evicted.poll_unpin(cx).is_ready()
        {
            return Poll::Ready(Err(AdmissionError::Evicted));
        }
        self.inner
            .as_mut()
            .poll(cx)
            .map_err(AdmissionError::Transport)
    }
}

type MapErrFn<E> = fn(E) -> AdmissionError<E>;

impl<T> Transport for Admission<T>
where
    T: Transport + Unpin,
    T::Error: 'static,
{
    type Output = T::Output;
    type Error = AdmissionError<T::Error>;
    type ListenerUpgrade = Admitted<T::ListenerUpgrade>;
    type Dial = MapErr<T::Dial, MapErrFn<T::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner
            .listen_on(id, addr)
            .map_err(|e| e.map(AdmissionError::Transport))
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let dial = self
            .inner
            .dial(addr, opts)
            .map_err(|e| e.map(AdmissionError::Transport))?;
        Ok(dial.map_err(AdmissionError::Transport as MapErrFn<T::Error>))
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        // Refusals are cheap, but come in batches: other transports ([`Alternate`]) and the
        // rest of the swarm get their turn.
        for _ in 0..REFUSALS_PER_TURN {
            let event = match Pin::new(&mut this.inner).poll(cx) {
                Poll::Ready(event) => event,
                Poll::Pending => return Poll::Pending,
            };
            let TransportEvent::Incoming {
                listener_id,
                upgrade,
                local_addr,
                send_back_addr,
            } = event
            else {
                let event = event
                    .map_upgrade(|upgrade| Admitted {
                        inner: Box::pin(upgrade),
                        evicted: None,
                    })
                    .map_err(AdmissionError::Transport);
                return Poll::Ready(event);
            };
            let evicted = match Source::of(&send_back_addr) {
                Some(source) => match admit_handshake(&mut this.in_flight, source) {
                    Some(watch) => Some(watch),
                    None => {
                        // Dropping the upgrade closes the connection.
                        debug!(addr = %send_back_addr, "incoming connection refused: its address holds its share of handshakes");
                        continue;
                    }
                },
                None => None,
            };
            return Poll::Ready(TransportEvent::Incoming {
                listener_id,
                upgrade: Admitted {
                    inner: Box::pin(upgrade),
                    evicted,
                },
                local_addr,
                send_back_addr,
            });
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Transports polled in turn, a different one first each time. libp2p's `OrTransport` polls
/// its second transport only while the first has nothing: under a flood on TCP, QUIC's peers
/// waited (2 of 10 first tries served under 5,000 flooding addresses).
pub(crate) struct Alternate<O> {
    transports: Vec<Boxed<O>>,
    next: usize,
}

impl<O> Alternate<O> {
    /// Listens and dials with the first of `transports` that takes the address.
    pub(crate) fn new(transports: Vec<Boxed<O>>) -> Self {
        Self {
            transports,
            next: 0,
        }
    }
}

impl<O> Transport for Alternate<O> {
    type Output = O;
    type Error = std::io::Error;
    type ListenerUpgrade = <Boxed<O> as Transport>::ListenerUpgrade;
    type Dial = <Boxed<O> as Transport>::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        mut addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        for transport in &mut self.transports {
            match transport.listen_on(id, addr) {
                Err(TransportError::MultiaddrNotSupported(back)) => addr = back,
                taken => return taken,
            }
        }
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.transports.iter_mut().any(|t| t.remove_listener(id))
    }

    fn dial(
        &mut self,
        mut addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        for transport in &mut self.transports {
            match transport.dial(addr, opts) {
                Err(TransportError::MultiaddrNotSupported(back)) => addr = back,
                taken => return taken,
            }
        }
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        let count = this.transports.len();
        for turn in 0..count {
            let at = (this.next + turn) % count;
            if let Poll::Ready(event) = Pin::new(&mut this.transports[at]).poll(cx) {
                this.next = (at + 1) % count;
                return Poll::Ready(event);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source::of(&format!("/ip4/{text}/tcp/1").parse().unwrap()).unwrap()
    }

    fn in_flight(budget: usize, per_address: Option<u32>) -> InFlight {
        FairShare::new(budget, per_address)
    }

    /// Counts a handshake from `text`; what it watches, or `None` when refused.
    fn admit(in_flight: &mut InFlight, text: &str) -> Option<oneshot::Receiver<()>> {
        admit_handshake(in_flight, source(text))
    }

    /// Admits from `sources` in turn, keeping what each admitted handshake watches.
    fn admit_all(in_flight: &mut InFlight, sources: &[&str]) -> Vec<Option<oneshot::Receiver<()>>> {
        sources.iter().map(|s| admit(in_flight, s)).collect()
    }

    /// Is the handshake that watches `watch` dropped?
    fn evicted(watch: &mut Option<oneshot::Receiver<()>>) -> bool {
        let watch = watch.as_mut().expect("admitted");
        matches!(watch.try_recv(), Err(oneshot::error::TryRecvError::Closed))
    }

    /// One address cannot hold more than its limit, whatever the budget.
    #[test]
    fn an_address_past_its_limit_is_refused_until_one_of_its_handshakes_ends() {
        let mut in_flight = in_flight(10, Some(2));
        let mut admitted = admit_all(&mut in_flight, &["192.0.2.1", "192.0.2.1"]);
        assert!(admit(&mut in_flight, "192.0.2.1").is_none());
        assert!(admit(&mut in_flight, "192.0.2.2").is_some());
        // A handshake that ended (its future dropped) frees its slot.
        admitted.pop();
        assert!(admit(&mut in_flight, "192.0.2.1").is_some());
        assert!(!evicted(&mut admitted[0]));
    }

    /// A full budget: a newcomer from a quieter group takes the slot of the oldest handshake of
    /// the busiest group (then address); one from the busiest group and address is refused.
    #[test]
    fn a_full_budget_makes_room_in_the_busiest_group() {
        let mut in_flight = in_flight(4, None);
        let mut flood = admit_all(
            &mut in_flight,
            &[
                "198.51.100.1",
                "198.51.100.2",
                "198.51.100.1",
                "203.0.113.1",
            ],
        );
        // The busiest is 198.51.100.0/24, and in it 198.51.100.1: the newcomer from that
        // very address is refused, one from a quiet address of that /24 is not.
        assert!(admit(&mut in_flight, "198.51.100.1").is_none());
        let mut neighbour = admit(&mut in_flight, "198.51.100.9");
        assert!(neighbour.is_some());
        assert!(evicted(&mut flood[0]), "the oldest of the busiest address");
        assert!(!evicted(&mut flood[1]) && !evicted(&mut flood[2]) && !evicted(&mut flood[3]));
        // Now three /24s: 198.51.100.0 holds 3 (one each from .1, .2 and .9).
        let mut quiet = admit(&mut in_flight, "192.0.2.1");
        assert!(quiet.is_some());
        assert!(
            evicted(&mut flood[1]),
            "the oldest of the busiest group, whose addresses tie"
        );
        assert!(!evicted(&mut flood[2]) && !evicted(&mut neighbour) && !evicted(&mut quiet));
        assert_eq!(in_flight.entries.len(), 4);
        assert_eq!(in_flight.count(source("198.51.100.1")), (2, 1));
    }

    /// A thousand addresses, each in a group of its own, take turns; a newcomer is dropped
    /// only after as many newer handshakes as the budget holds.
    #[test]
    fn under_a_flood_of_equals_a_newcomer_keeps_its_slot_for_a_budget_of_arrivals() {
        let budget = 16;
        let mut in_flight = in_flight(budget, Some(1));
        let flooder = |i: usize| format!("10.{}.{}.1", i / 256, i % 256);
        let mut flood: Vec<_> = (0..1000)
            .map(|i| admit(&mut in_flight, &flooder(i)))
            .collect();
        assert!(
            flood.iter().all(Option::is_some),
            "each newcomer takes the oldest's slot"
        );
        assert_eq!(
            flood
                .iter_mut()
                .filter_map(|w| (!evicted(w)).then_some(()))
                .count(),
            budget
        );
        let mut newcomer = admit(&mut in_flight, "192.0.2.1");
        for i in 1000..1000 + budget - 1 {
            flood.push(admit(&mut in_flight, &flooder(i)));
            assert!(
                !evicted(&mut newcomer),
                "dropped after {} arrivals",
                i - 1000 + 1
            );
        }
        // (A handshake whose future is dropped has ended: the flood's are kept.)
        flood.push(admit(&mut in_flight, &flooder(2000)));
        assert!(flood.iter().all(Option::is_some));
        assert!(evicted(&mut newcomer));
        assert_eq!(in_flight.group_counts.len(), budget);
        assert_eq!(in_flight.address_counts.len(), budget);
    }

    /// A transport with an incoming connection from `remote` at every poll (`endless`), or
    /// at the first only.
    struct Incoming {
        remote: Multiaddr,
        endless: bool,
        fired: bool,
    }

    impl Transport for Incoming {
        type Output = ();
        type Error = std::io::Error;
        type ListenerUpgrade = std::future::Ready<Result<(), std::io::Error>>;
        type Dial = std::future::Ready<Result<(), std::io::Error>>;

        fn listen_on(
            &mut self,
            _: ListenerId,
            addr: Multiaddr,
        ) -> Result<(), TransportError<Self::Error>> {
            Err(TransportError::MultiaddrNotSupported(addr))
        }

        fn remove_listener(&mut self, _: ListenerId) -> bool {
            false
        }

        fn dial(
            &mut self,
            addr: Multiaddr,
            _: DialOpts,
        ) -> Result<Self::Dial, TransportError<Self::Error>> {
            Err(TransportError::MultiaddrNotSupported(addr))
        }

        fn poll(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
            if self.fired && !self.endless {
                return Poll::Pending;
            }
            self.fired = true;
            Poll::Ready(TransportEvent::Incoming {
                listener_id: ListenerId::next(),
                upgrade: std::future::ready(Ok(())),
                local_addr: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                send_back_addr: self.remote.clone(),
            })
        }
    }

    /// libp2p's `OrTransport` polls its second transport only while the first has nothing: a
    /// flood on TCP kept QUIC's peers waiting (2 of 10 served under 5,000 flooding addresses).
    /// [`Alternate`] gives each its turn, whether the flood is admitted or refused.
    #[test]
    fn a_transport_under_a_flood_leaves_the_other_its_turn() {
        let limits = |budget| AdmissionLimits {
            budget,
            per_address: None,
        };
        for (budget, remote) in [
            (1_000_000, "/ip4/192.0.2.1/tcp/9"),
            (1, "/ip4/192.0.2.1/tcp/9"),
        ] {
            let flooded = Incoming {
                remote: remote.parse().unwrap(),
                endless: true,
                fired: false,
            };
            let quiet = Incoming {
                remote: "/ip4/198.51.100.1/udp/9/quic-v1".parse().unwrap(),
                endless: false,
                fired: false,
            };
            let mut both = Alternate::new(vec![
                Admission::new(flooded, limits(budget)).boxed(),
                Admission::new(quiet, limits(budget)).boxed(),
            ]);
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            let turn = (1..=4).find(|_| {
                matches!(
                    Pin::new(&mut both).poll(&mut cx),
                    Poll::Ready(TransportEvent::Incoming { send_back_addr, .. })
                        if send_back_addr.to_string().contains("quic")
                )
            });
            assert!(
                turn.is_some(),
                "budget {budget}: the quiet transport never had its turn"
            );
        }
    }
}
