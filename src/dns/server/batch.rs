//! Datagrams read and replies sent in batches: on Linux one `recvmmsg(2)` (nix) reads up to
//! [`BATCH`] queries waiting on a socket, and one `sendmmsg(2)` (rustix, whose call returns
//! how many went) sends the replies answered from the answer memo among them, so that a
//! loaded socket pays a system call and a readiness check per batch each way instead of per
//! datagram (issue 14's profile: entering and leaving the kernel and finding the socket
//! again were 8-10 % of a cached answer's time). A socket with one datagram waiting reads
//! one and sends one, as before. Elsewhere, and on wildcard addresses (whose reads and sends
//! carry ancillary data, [`super::pktinfo`]), one datagram per call.

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
}

impl Default for Inbox {
    fn default() -> Self {
        Self::new()
    }
}

/// Replies waiting to leave together, each in a buffer kept from one batch to the next (no
/// allocation per reply).
pub struct Outbox {
    replies: Vec<Vec<u8>>,
    to: Vec<SocketAddr>,
}

impl Outbox {
    /// Room for [`BATCH`] replies of up to `capacity` octets (longer ones grow their buffer).
    pub fn new(capacity: usize) -> Self {
        Self {
            replies: (0..BATCH).map(|_| Vec::with_capacity(capacity)).collect(),
            to: Vec::with_capacity(BATCH),
        }
    }

    /// The buffer the next reply is written into, emptied.
    pub fn next_reply(&mut self) -> &mut Vec<u8> {
        let reply = &mut self.replies[self.to.len()];
        reply.clear();
        reply
    }

    /// Keeps the reply written into [`Outbox::next_reply`] for `to`; sends what is kept when
    /// that fills the batch.
    pub async fn keep(&mut self, socket: &UdpSocket, to: SocketAddr) {
        self.to.push(to);
        if self.to.len() == BATCH {
            self.flush(socket).await;
        }
    }

    /// Sends the replies kept, in order, waiting for room in the socket's buffer when it is
    /// full; a reply the system refuses (no route to its client) is logged and dropped, and
    /// those after it still go.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let mut sent = 0;
        while sent < self.to.len() {
            let (replies, to) = (&self.replies[sent..self.to.len()], &self.to[sent..]);
            let result = socket
                .async_io(tokio::io::Interest::WRITABLE, || {
                    sys::send_many(socket, replies, to)
                })
                .await;
            match result {
                Ok(count) => sent += count.max(1),
                Err(error) => {
                    super::udp::send_failed(self.to[sent], &error);
                    sent += 1;
                }
            }
        }
        self.to.clear();
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::{
        io::{self, IoSlice, IoSliceMut},
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

    /// One `sendmmsg(2)` without waiting: as many of `replies` (each to the address of the
    /// same index in `to`) as the socket takes, in order; how many went, or the error of the
    /// first.
    pub(super) fn send_many(
        socket: &UdpSocket,
        replies: &[Vec<u8>],
        to: &[SocketAddr],
    ) -> io::Result<usize> {
        use rustix::net::{
            MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, addr::SocketAddrArg,
        };

        let addresses: Vec<SocketAddrAny> = to.iter().map(SocketAddrArg::as_any).collect();
        let slices: Vec<[IoSlice<'_>; 1]> =
            replies.iter().map(|reply| [IoSlice::new(reply)]).collect();
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = addresses
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut messages: Vec<MMsgHdr<'_>> = addresses
            .iter()
            .zip(&slices)
            .zip(&mut controls)
            .map(|((address, slice), control)| MMsgHdr::new_with_addr(address, slice, control))
            .collect();
        Ok(rustix::net::sendmmsg(
            socket,
            &mut messages,
            SendFlags::DONTWAIT,
        )?)
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

    /// The first of `replies` without waiting.
    pub(super) fn send_many(
        socket: &UdpSocket,
        replies: &[Vec<u8>],
        to: &[SocketAddr],
    ) -> io::Result<usize> {
        socket.try_send_to(&replies[0], to[0])?;
        Ok(1)
    }
}
