//! Replies from the address asked, on a UDP socket bound to a wildcard address (`0.0.0.0`,
//! `[::]`). Such a socket takes datagrams sent to any address of the host, and a plain
//! `sendto` lets the kernel pick the reply's source, which for a query to 127.0.0.7 is
//! 127.0.0.1: clients drop a reply from another address than the one they asked (RFC 1123
//! section 6.1.3.2 wants the reply from the address the query went to). So the kernel is asked
//! for each datagram's destination (IP_PKTINFO, IPV6_RECVPKTINFO) and each reply is sent with
//! that address as its source (IP_PKTINFO, IPV6_PKTINFO ancillary data), as dnsmasq does.
//! Sockets bound to one address need none of this and keep tokio's plain calls.

use std::{
    io::{self, IoSlice, IoSliceMut},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
};

use nix::{
    libc,
    sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, sockopt},
};
use tokio::{io::Interest, net::UdpSocket};

/// The address a datagram was sent to, in the form its reply's source is given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// IPv4: the local address the query reached (`ipi_spec_dst`: the header's destination, or
    /// for a broadcast the address of the interface it came in on).
    V4(Ipv4Addr),
    /// IPv6: the header's destination, and the interface when the address alone does not
    /// name one (link-local, multicast); otherwise 0, so the routing table picks it.
    V6 {
        /// The reply's source; unspecified when the query went to a multicast group.
        addr: Ipv6Addr,
        /// The interface to send on, or 0.
        ifindex: u32,
    },
}

/// Room for the destination of one datagram (an IP_PKTINFO or IPV6_PKTINFO message), reused
/// by every read of a socket.
#[derive(Debug)]
pub struct Control(Vec<u8>);

impl Control {
    /// Room for what [`enable`] asks the kernel for.
    pub fn new() -> Self {
        Self(nix::cmsg_space!(libc::in6_pktinfo))
    }
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

/// Asks the kernel for the destination of each datagram `socket`, an IPv6 one if `ipv6`,
/// reads.
///
/// # Errors
/// The `setsockopt(2)` error.
pub fn enable(socket: &impl AsFd, ipv6: bool) -> io::Result<()> {
    match ipv6 {
        false => socket::setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?,
        true => socket::setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?,
    }
    Ok(())
}

/// Reads the next datagram of `socket` (made ready by [`enable`]) into `buf`: its length,
/// source and destination (`None` if the kernel gave none, which Linux does once asked).
///
/// # Errors
/// The `recvmsg(2)` error.
pub async fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut Control,
) -> io::Result<(usize, SocketAddr, Option<Destination>)> {
    socket
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let msg = socket::recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(control.0.as_mut_slice()),
                MsgFlags::empty(),
            )?;
            let src = msg
                .address
                .as_ref()
                .and_then(socket_addr)
                .ok_or_else(|| io::Error::other("a datagram without an IP source address"))?;
            let dst = msg.cmsgs()?.find_map(destination);
            Ok((msg.bytes, src, dst))
        })
        .await
}

/// Sends `bytes` to `to` from the address `from` (see the module).
///
/// # Errors
/// The `sendmsg(2)` error.
pub async fn send_from(
    socket: &UdpSocket,
    bytes: &[u8],
    to: SocketAddr,
    from: Destination,
) -> io::Result<usize> {
    let to = SockaddrStorage::from(to);
    socket
        .async_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(bytes)];
            let fd = socket.as_raw_fd();
            let flags = MsgFlags::empty();
            let sent = match from {
                Destination::V4(addr) => {
                    let info = libc::in_pktinfo {
                        // Routing picks the interface: the reply may leave by another.
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_ne_bytes(addr.octets()),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    let control = [ControlMessage::Ipv4PacketInfo(&info)];
                    socket::sendmsg(fd, &iov, &control, flags, Some(&to))
                }
                Destination::V6 { addr, ifindex } => {
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: addr.octets(),
                        },
                        ipi6_ifindex: ifindex,
                    };
                    let control = [ControlMessage::Ipv6PacketInfo(&info)];
                    socket::sendmsg(fd, &iov, &control, flags, Some(&to))
                }
            };
            Ok(sent?)
        })
        .await
}

/// The IP address and port of `addr`, if it is one.
pub(super) fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
        (Some(v4), _) => Some(SocketAddr::from(*v4)),
        (_, Some(v6)) => Some(SocketAddr::from(*v6)),
        _ => None,
    }
}

/// The destination a control message reports, if it is one.
fn destination(message: ControlMessageOwned) -> Option<Destination> {
    match message {
        ControlMessageOwned::Ipv4PacketInfo(info) => Some(Destination::V4(Ipv4Addr::from(
            info.ipi_spec_dst.s_addr.to_ne_bytes(),
        ))),
        ControlMessageOwned::Ipv6PacketInfo(info) => Some(v6_destination(
            info.ipi6_addr.s6_addr.into(),
            info.ipi6_ifindex,
        )),
        _ => None,
    }
}

/// The source and interface of a reply to a datagram sent to `addr` on interface `ifindex`.
fn v6_destination(addr: Ipv6Addr, ifindex: u32) -> Destination {
    if addr.is_multicast() {
        // No reply comes from a group address: the kernel picks a source on that interface.
        return Destination::V6 {
            addr: Ipv6Addr::UNSPECIFIED,
            ifindex,
        };
    }
    let scoped = addr.is_unicast_link_local();
    Destination::V6 {
        addr,
        ifindex: if scoped { ifindex } else { 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_replies_keep_the_interface_only_where_the_address_needs_it() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            v6_destination(v6("2001:db8::1"), 3),
            Destination::V6 {
                addr: v6("2001:db8::1"),
                ifindex: 0
            }
        );
        assert_eq!(
            v6_destination(v6("fe80::1"), 3),
            Destination::V6 {
                addr: v6("fe80::1"),
                ifindex: 3
            }
        );
        assert_eq!(
            v6_destination(v6("ff02::fb"), 3),
            Destination::V6 {
                addr: Ipv6Addr::UNSPECIFIED,
                ifindex: 3
            }
        );
    }
}
