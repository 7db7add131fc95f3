//! The cloneable handle through which the rest of the program drives the node: each method
//! sends a [`Command`] over a bounded channel to the event loop and awaits its answer on a
//! oneshot channel.

use std::time::Duration;

use hickory_proto::rr::Name;
use libp2p::{Multiaddr, PeerId};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use super::{ConnectionInfo, NodeError, NodeStatus, keep_alive::KeepAlive};
use crate::record::NameRecord;

/// Valid replicas of a name found in the DHT so far.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    /// Each valid record, with the peer that returned it (`None`: this node's own store).
    pub records: Vec<(Option<PeerId>, NameRecord)>,
    /// Replicas that failed validation (forged, expired, hijacked...).
    pub invalid: usize,
    /// The query ended and no peer had any record: the name is absent from the DHT.
    pub absent: bool,
    /// Requests the query had sent to peers when this answer was given.
    pub requests: u32,
    /// Peers that had answered those requests.
    pub peers_answered: u32,
}

/// What the event loop is asked to do.
pub(crate) enum Command {
    Lookup {
        name: Name,
        wanted: usize,
        answer_by: Option<Instant>,
        /// The owner key that alone may answer for the name (a key name's, a pin's).
        owner: Option<[u8; 32]>,
        reply: oneshot::Sender<Replicas>,
    },
    Publish {
        record: NameRecord,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Dial {
        addr: Multiaddr,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    Stored {
        name: Name,
        reply: oneshot::Sender<Option<NameRecord>>,
    },
    Connect {
        peer: PeerId,
        /// Open a new relayed connection even when connected, so that the peers try hole
        /// punching again (a direct connection died right after it was made).
        through_relay: bool,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Connections {
        peer: PeerId,
        reply: oneshot::Sender<Vec<ConnectionInfo>>,
    },
    CloseRelayed {
        peer: PeerId,
        reply: oneshot::Sender<usize>,
    },
}

/// A cloneable handle to the running node.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    joined: watch::Receiver<bool>,
    streams: libp2p_stream::Control,
    keep_alive: KeepAlive,
}

impl NodeHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        peer_id: PeerId,
        joined: watch::Receiver<bool>,
        streams: libp2p_stream::Control,
        keep_alive: KeepAlive,
    ) -> Self {
        Self {
            commands,
            peer_id,
            joined,
            streams,
            keep_alive,
        }
    }

    /// A tunnel stream with `peer` opened or ended: the direct connections with it stay open
    /// for 10 minutes from now, so that the next tunnel connection needs no introduction
    /// server (relayed connections are never kept).
    pub fn in_use(&self, peer: PeerId) {
        self.keep_alive.mark(peer);
    }

    /// Opens and accepts streams of protocols served outside the swarm (tunnels). Clone it per
    /// task: one opens one stream at a time. A stream opened to a peer without a connection
    /// dials it by peer id first; with several connections, libp2p-stream picks one at random
    /// (see [`NodeHandle::close_relayed`]).
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// This node's libp2p identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Completes once the node has met its first DHT peer (at once if it already has): the
    /// moment to push names published while it was alone.
    /// Every caller is told, however many wait; a node that is gone never completes it.
    pub async fn joined(&self) {
        let mut joined = self.joined.clone();
        if joined.wait_for(|joined| *joined).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Asks the DHT for `name` (a DHT name, `site.p2p.`) and returns the valid replicas found
    /// once `wanted` are in, or once a majority of `wanted` name one owner and a grace for a
    /// newer `seq` has passed (see [`NodeHandle::lookup_for`]), or when the query ends. The
    /// caller bounds the wait; the query goes on without it.
    ///
    /// # Errors
    /// [`NodeError::Busy`] when the command queue is full or the lookup table is full of
    /// lookups within their answer time,
    /// [`NodeError::Stopped`] when the node is gone.
    pub async fn lookup(&self, name: Name, wanted: usize) -> Result<Replicas, NodeError> {
        self.lookup_inner(name, wanted, None, None).await
    }

    /// As [`NodeHandle::lookup`], but answers after `answer_by` with the valid replicas found
    /// so far when there is at least one: a peer that never answers (a node behind NAT that
    /// the DHT still lists) must not hold a found record back.
    pub async fn lookup_within(
        &self,
        name: Name,
        wanted: usize,
        answer_by: Duration,
    ) -> Result<Replicas, NodeError> {
        self.lookup_for(name, wanted, answer_by, None).await
    }

    /// As [`NodeHandle::lookup_within`], for a name whose owner key may be known (a key name,
    /// or a human name pinned to `owner`, docs/PROTOCOL.md sections 6 and 7): then one replica
    /// of that owner decides the owner, so the lookup answers once the grace for a newer `seq`
    /// after the first replica from a peer has passed (as long as that replica took to come,
    /// 5 ms at least), without waiting for `wanted` replicas. Replicas of other owners are kept
    /// but decide nothing. Without `owner`, exactly [`NodeHandle::lookup_within`].
    ///
    /// # Errors
    /// As [`NodeHandle::lookup`].
    pub async fn lookup_for(
        &self,
        name: Name,
        wanted: usize,
        answer_by: Duration,
        owner: Option<[u8; 32]>,
    ) -> Result<Replicas, NodeError> {
        let answer_by = Some(Instant::now() + answer_by);
        self.lookup_inner(name, wanted, answer_by, owner).await
    }

    async fn lookup_inner(
        &self,
        name: Name,
        wanted: usize,
        answer_by: Option<Instant>,
        owner: Option<[u8; 32]>,
    ) -> Result<Replicas, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.try_send(Command::Lookup {
            name,
            wanted,
            answer_by,
            owner,
            reply,
        })?;
        rx.await.map_err(|_| NodeError::Busy)
    }

    /// Never waits for room in the queue: a flood of made-up names must fail fast instead of
    /// piling up tasks that wait to ask.
    fn try_send(&self, command: Command) -> Result<(), NodeError> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NodeError::Busy,
            mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
        })
    }

    /// Stores `record` locally and pushes it to the peers closest to its key; returns once
    /// the PUT query has ended (within Kademlia's query timeout of 10 s). That says nothing
    /// of who kept it: storage nodes acknowledge records they drop (docs/PROTOCOL.md section
    /// 5); read it back with [`NodeHandle::lookup_within`] to learn that.
    ///
    /// # Errors
    /// [`NodeError::Store`] when the local store refuses it (full), [`NodeError::Busy`] or
    /// [`NodeError::Stopped`] as for every command.
    pub async fn publish(&self, record: NameRecord) -> Result<(), NodeError> {
        self.ask(|reply| Command::Publish { record, reply }).await?
    }

    /// Dials a peer (bootstrap or test wiring).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.send(Command::Dial { addr }).await
    }

    /// What the node reports about itself, its peer list included.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Connects to `peer`: at addresses rendezvous points gave and the DHT knows, and through
    /// each bootstrap peer as a relay (where the peer may hold a reservation). Returns once one
    /// connection is up, or the error of the last failed attempt.
    pub async fn connect(&self, peer: PeerId) -> Result<(), NodeError> {
        self.connect_inner(peer, false).await
    }

    /// Opens a new connection to `peer` through the relays, on which the two sides try hole
    /// punching again.
    pub async fn punch_again(&self, peer: PeerId) -> Result<(), NodeError> {
        self.connect_inner(peer, true).await
    }

    async fn connect_inner(&self, peer: PeerId, through_relay: bool) -> Result<(), NodeError> {
        self.ask(|reply| Command::Connect {
            peer,
            through_relay,
            reply,
        })
        .await?
    }

    /// The open connections to `peer`.
    pub async fn connections(&self, peer: PeerId) -> Result<Vec<ConnectionInfo>, NodeError> {
        self.ask(|reply| Command::Connections { peer, reply }).await
    }

    /// Closes the relayed connections to `peer`, so that streams opened afterwards use a direct
    /// one (libp2p-stream cannot choose). Returns how many were closed.
    pub async fn close_relayed(&self, peer: PeerId) -> Result<usize, NodeError> {
        self.ask(|reply| Command::CloseRelayed { peer, reply })
            .await
    }

    /// Whether this node's store holds a valid record for `name` (diagnostics and
    /// benchmarks).
    pub async fn holds(&self, name: &Name) -> Result<bool, NodeError> {
        Ok(self.stored(name.clone()).await?.is_some())
    }

    /// The valid record this node's store holds for `name` (a DHT name, `site.p2p.`), which it
    /// keeps for another node: an answer that needs no lookup. Like a lookup, it never waits
    /// for room in the command queue.
    ///
    /// # Errors
    /// [`NodeError::Busy`] when the command queue is full, [`NodeError::Stopped`] when the
    /// node is gone.
    pub async fn stored(&self, name: Name) -> Result<Option<NameRecord>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.try_send(Command::Stored { name, reply })?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Sends the command `make` builds around a reply channel and awaits the reply.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    async fn send(&self, command: Command) -> Result<(), NodeError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NodeError::Stopped)
    }
}
