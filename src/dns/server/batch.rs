//! Datagrams read in batches: on Linux one `recvmmsg(2)` reads up to [`BATCH`] queries
//! waiting on a socket, so that a loaded socket pays one system call and one readiness check
//! per batch instead of per datagram (issue 14's profile: entering and leaving the kernel and
//! finding the socket again were 8-10 % of a cached answer's time). A socket with one
//! datagram waiting reads one, as before. Elsewhere, and on wildcard addresses (whose reads
//! carry ancillary data, [`super::pktinfo`]), one datagram per call. Replies leave one by
//! one: nix's `sendmmsg` reports how many were sent only by reading memory it never wrote.

use std::{io, net::SocketAddr};

use tokio::net::UdpSocket;

use super::pktinfo::{self, Destination};

/// Most datagrams read, and replies sent, by one call.
pub const BATCH: usize = 16;
/// Largest datagram read (a DNS message over UDP fits in 65,535 octets).
const MAX_DATAGRAM: usize = 65_535;

/// Where a datagram came from, and where it went when the socket's address does not say.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Octets read.
    pub len: usize,
    /// The sender.
    pub src: SocketAddr,
    /// The destination, on a wildcard address ([`pktinfo`]).
    pub dst: Option<Destination>,
}

/// Room for [`BATCH`] datagrams, reused by every read of one socket. The buffers are
/// zeroed allocations: the pages a datagram never reaches are never made resident.
pub struct Inbox {
    bufs: Vec<Vec<u8>>,
    received: Vec<Received>,
}

impl Inbox {
    /// Empty room for a batch.
    pub fn new() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            received: Vec::with_capacity(BATCH),
        }
    }

    /// Reads what `socket` holds, at least one datagram (waiting for it) and at most
    /// [`BATCH`]; `control` is given on a wildcard address, where one is read per call.
    ///
    /// # Errors
    /// The `recvmmsg(2)` or `recvmsg(2)` error; nothing was read then.
    pub async fn recv(
        &mut self,
        socket: &UdpSocket,
        control: Option<&mut pktinfo::Control>,
    ) -> io::Result<usize> {
        self.received.clear();
        match control {
            Some(control) => {
                let (len, src, dst) = pktinfo::recv(socket, &mut self.bufs[0], control).await?;
                self.received.push(Received { len, src, dst });
            }
            None => {
                let bufs = &mut self.bufs;
                let received = &mut self.received;
                socket
                    .async_io(tokio::io::Interest::READABLE, || {
                        sys::recv_many(socket, bufs, received)
                    })
                    .await?;
            }
        }
        Ok(self.received.len())
    }

    /// The `i`th datagram of the last read, with where it came from.
    ///
    /// # Panics
    /// When the last read took fewer than `i + 1`.
    pub fn get(&self, i: usize) -> (&[u8], Received) {
        let received = self.received[i];
        (&self.bufs[i][..received.len], received)
    }

    /// A buffer for a single read outside batches (while draining).
    pub fn first_buffer(&mut self) -> &mut [u8] {
        &mut self.bufs[0]
    }
}

impl Default for Inbox {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::{
        io::{self, IoSliceMut},
        net::SocketAddr,
        os::fd::AsRawFd,
    };

    use nix::sys::socket::{self, MsgFlags, MultiHeaders, SockaddrStorage};
    use tokio::net::UdpSocket;

    use super::Received;

    /// One `recvmmsg(2)` without waiting: what the socket holds, up to one per buffer.
    pub(super) fn recv_many(
        socket: &UdpSocket,
        bufs: &mut [Vec<u8>],
        received: &mut Vec<Received>,
    ) -> io::Result<()> {
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
        let mut slices: Vec<[IoSliceMut<'_>; 1]> =
            bufs.iter_mut().map(|buf| [IoSliceMut::new(buf)]).collect();
        let read = socket::recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        for message in read {
            // A datagram without an IP source (none on an IP socket) is skipped: only its
            // slot is lost, and the slots stay in step with the buffers.
            let src = message
                .address
                .as_ref()
                .and_then(super::pktinfo::socket_addr)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            received.push(Received {
                len: message.bytes,
                src,
                dst: None,
            });
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::{io, net::SocketAddr};

    use tokio::net::UdpSocket;

    use super::Received;

    /// One datagram without waiting.
    pub(super) fn recv_many(
        socket: &UdpSocket,
        bufs: &mut [Vec<u8>],
        received: &mut Vec<Received>,
    ) -> io::Result<()> {
        let (len, src) = socket.try_recv_from(&mut bufs[0])?;
        received.push(Received {
            len,
            src,
            dst: None,
        });
        Ok(())
    }
}
