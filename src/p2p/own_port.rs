//! The port a resolver's P2P node listens on when `p2p.listen` is not set: one of its own,
//! drawn at random at its first start and kept in the data directory ([`PORT_FILE`]), so that
//! it stays the same across restarts: a port forward made for it keeps working, and so do the
//! addresses peers keep for the node. A user who sets `p2p.listen` gets exactly that;
//! introduction servers keep the well-known port bootstrap addresses name.
//!
//! Why not one port for every node: machines behind one home router would share it. A NAT
//! keeps a machine's source port when that port is free towards the destination, so the first
//! machine on port 4747 is the router's 4747 everywhere, while the second keeps 4747 only
//! towards destinations the first does not talk to and gets another port towards those it does
//! (the introduction server, a client of both). Its public address then depends on the
//! destination, as behind a symmetric NAT: the address the introduction server saw is not the
//! one a peer's hole punch meets, and the peer's punch to the router's 4747 reaches the first
//! machine. Its tunnels stayed relayed, and downloads were cut at the relay's byte limit
//! (`tests/lab/two_homes.rs`). Their UPnP requests for one external port collide too.
//!
//! The port is drawn from [`PORT_RANGE`]: above the ports services usually take, and below the
//! ephemeral ranges (Linux 32768-60999, IANA and other systems 49152-65535), where the system
//! hands ports to outgoing connections: a kept port there could be held by one of them at the
//! next start.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::Path,
};

use rand::Rng;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};
use tracing::{error, info, warn};

use crate::{
    config::P2pConfig,
    state::{LoadError, load_toml, save_toml},
};

/// The file in the data directory that keeps the port.
pub const PORT_FILE: &str = "p2p-port.toml";
/// Where a node's own port is drawn from.
pub const PORT_RANGE: RangeInclusive<u16> = 20_000..=32_767;
/// Ports drawn and found taken before giving up on the range (then the system picks one).
const DRAWS: usize = 64;

/// The file's contents.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortFile {
    /// The port, for QUIC (UDP) and TCP, IPv4 and IPv6.
    port: u16,
}

/// `config` with `listen` set: as configured when it is, else [`P2pConfig::default_listen`]
/// on this node's own port ([`own_port`]).
pub fn resolve(config: &P2pConfig, data_dir: &Path) -> P2pConfig {
    if config.listen.is_some() {
        return config.clone();
    }
    P2pConfig {
        listen: Some(P2pConfig::default_listen(own_port(data_dir))),
        ..config.clone()
    }
}

/// The port kept in `data_dir`, if one is (read only: nothing is drawn or written).
pub fn kept(data_dir: &Path) -> Option<u16> {
    read_kept(&data_dir.join(PORT_FILE)).ok().flatten()
}

/// The port kept at `path`, if one is (a port 0 is none).
fn read_kept(path: &Path) -> Result<Option<u16>, LoadError> {
    Ok(load_toml::<PortFile>(path)?
        .map(|f| f.port)
        .filter(|p| *p != 0))
}

/// Where an unset `listen` puts the node, for `run --check-config`.
pub fn describe(data_dir: &Path) -> String {
    let file = data_dir.join(PORT_FILE);
    match kept(data_dir) {
        Some(port) => format!(
            "port {port}, QUIC and TCP (this node's own, kept in {})",
            file.display()
        ),
        None => format!(
            "a port of this node's own, drawn at its first start and kept in {}",
            file.display()
        ),
    }
}

/// This node's port: the one kept in `data_dir` while no other program holds it, else a free
/// one drawn from [`PORT_RANGE`] and kept from now on. Never fails: a file that cannot be read
/// or written costs only the port's stability (the log says so), and a range with no free port
/// leaves the choice to the system (port 0).
pub fn own_port(data_dir: &Path) -> u16 {
    let path = data_dir.join(PORT_FILE);
    let (kept, writable) = match read_kept(&path) {
        Ok(kept) => (kept, true),
        Err(e) => {
            error!(error = %crate::error::one_line(&e), "cannot read the kept P2P port; drawing one for this run only");
            (None, false)
        }
    };
    let port = choose(kept, port_free, &mut rand::rng());
    if Some(port) == kept {
        return port;
    }
    match kept {
        _ if port == 0 => warn!(
            kept,
            "no free P2P port found in {}-{}: the system picks one for this run (set \
             p2p.listen for a fixed one)",
            PORT_RANGE.start(),
            PORT_RANGE.end()
        ),
        Some(old) => warn!(
            old,
            new = port,
            "the P2P port this node kept is held by another program: listening on a new one \
             (a port forward made for the old one needs changing)"
        ),
        None => info!(
            port,
            "drew this node's P2P port; it is kept for later starts"
        ),
    }
    if writable
        && port != 0
        && let Err(e) = save_toml(&path, &PortFile { port })
    {
        warn!(error = %crate::error::one_line(&e), port, "cannot keep the P2P port: the next start draws another");
    }
    port
}

/// The kept port while `free`, else the first free port of [`DRAWS`] draws, else 0.
fn choose(kept: Option<u16>, free: impl Fn(u16) -> bool, rng: &mut impl Rng) -> u16 {
    if let Some(port) = kept.filter(|p| free(*p)) {
        return port;
    }
    (0..DRAWS)
        .map(|_| rng.random_range(PORT_RANGE))
        .find(|p| Some(*p) != kept && free(*p))
        .unwrap_or(0)
}

/// Can the default listen addresses take `port`: TCP and UDP on the IPv4 and IPv6 wildcard
/// addresses? A host without IPv6 has no IPv6 port to take.
fn port_free(port: u16) -> bool {
    let wildcards = [
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        IpAddr::from(Ipv6Addr::UNSPECIFIED),
    ];
    wildcards.into_iter().all(|ip| {
        [Type::STREAM, Type::DGRAM].into_iter().all(|kind| {
            match bind_probe(SocketAddr::new(ip, port), kind) {
                Ok(()) => true,
                Err(e) => ip.is_ipv6() && e.kind() != io::ErrorKind::AddrInUse,
            }
        })
    })
}

/// Binds a socket of `kind` to `addr` and lets it go. No SO_REUSEPORT: libp2p's sockets set
/// it, so a probe with it would share a port another p2pdns holds.
fn bind_probe(addr: SocketAddr, kind: Type) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), kind, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if kind == Type::STREAM {
        // Connections of an earlier run lingering in TIME_WAIT do not hold the port.
        socket.set_reuse_address(true)?;
    }
    socket.bind(&addr.into())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};

    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn the_kept_port_stays_while_free_and_a_taken_one_is_replaced_from_the_range() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(choose(Some(4242), |_| true, &mut rng), 4242);
        let drawn = choose(None, |_| true, &mut rng);
        assert!(PORT_RANGE.contains(&drawn), "{drawn}");
        let replaced = choose(Some(drawn), |p| p != drawn, &mut rng);
        assert!(
            PORT_RANGE.contains(&replaced) && replaced != drawn,
            "{replaced}"
        );
        assert_eq!(choose(Some(drawn), |_| false, &mut rng), 0);
    }

    #[test]
    fn a_port_held_over_tcp_or_udp_is_not_free() {
        let tcp = TcpListener::bind("0.0.0.0:0").unwrap();
        assert!(!port_free(tcp.local_addr().unwrap().port()));
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        assert!(!port_free(udp.local_addr().unwrap().port()));
    }

    #[test]
    fn the_port_is_kept_across_starts_and_replaced_when_taken() {
        let dir = std::env::temp_dir().join(format!("p2pdns-port-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(kept(&dir), None);
        assert!(describe(&dir).contains("drawn at its first start"));
        let first = own_port(&dir);
        assert!(describe(&dir).starts_with(&format!("port {first}, ")));
        assert!(PORT_RANGE.contains(&first), "{first}");
        assert_eq!(kept(&dir), Some(first));
        assert_eq!(own_port(&dir), first, "the same port at the next start");

        // Another program holds it (QUIC's UDP port, say): a new one, kept from now on.
        let holder = UdpSocket::bind(("0.0.0.0", first));
        let second = own_port(&dir);
        if holder.is_ok() {
            assert_ne!(second, first);
            assert_eq!(kept(&dir), Some(second));
        }

        // A set listen list is used as it is; an unset one gets the kept port.
        let mut config = P2pConfig::default();
        let resolved = resolve(&config, &dir);
        let port = kept(&dir).unwrap();
        assert_eq!(resolved.listen, Some(P2pConfig::default_listen(port)));
        config.listen = Some(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]);
        assert_eq!(resolve(&config, &dir).listen, config.listen);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
