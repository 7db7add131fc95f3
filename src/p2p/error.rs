//! The P2P node's error type.

use std::error::Error;

use libp2p::{Multiaddr, PeerId, kad, swarm::DialError};

/// Errors of the P2P node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listen address could not be used, and no other one could either.
    #[error("failed to listen on {addr}")]
    Listen {
        /// The first listen address that failed.
        addr: Multiaddr,
        /// Why the transport refused it.
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    /// Every listener failed before it reported an address.
    #[error("no P2P listen address could be used")]
    NoListenAddress,
    /// The swarm could not be built (transport or behaviour set-up).
    #[error("failed to start the P2P node")]
    Build {
        /// The transport's or a behaviour's error.
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// The event loop is gone (daemon shutting down).
    #[error("the P2P node is not running")]
    Stopped,
    /// Too many lookups are running.
    #[error("too many DHT lookups in flight")]
    Busy,
    /// No connection to a peer could be made; the error of the last failed dial.
    #[error("cannot connect to {peer}")]
    Connect {
        /// The peer dialled.
        peer: PeerId,
        /// Why the dial failed.
        #[source]
        source: Box<DialError>,
    },
    /// The record could not be stored locally (the store is full, or it is too large).
    #[error("failed to store the record")]
    Store(#[source] kad::store::Error),
}
