//! The data plane of a tunnel stream (docs/PROTOCOL.md section 9.2): the request and reply that
//! open it, and [`splice`], which carries one TCP connection over it in DATA, END and ABORT
//! frames. Everything here is generic over tokio I/O: the libp2p stream enters as
//! `stream.compat()` (tokio-util), and the tests use in-memory pipes and loopback sockets.
//!
//! This file owns the byte layout only; which streams are opened or accepted, and the limits
//! on them, belong to the rest of the tunnel module.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use libp2p::StreamProtocol;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::time::Instant;
use tracing::debug;

use crate::p2p::ConnectionPath;

/// The stream protocol of tunnels (section 9.2).
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/p2pdns/tunnel/1.0.0");

/// The request version this node speaks.
const VERSION: u8 = 1;
/// The longest name of a request, in bytes (a DNS name in presentation form, no final dot).
const MAX_NAME: usize = 253;
/// The longest reply reason or ABORT reason, in bytes (its length is one byte).
const MAX_TEXT: usize = 255;
/// The largest payload of one DATA frame, in bytes (its length is a u16).
const MAX_DATA: usize = 65_535;
/// Frame kinds.
const FRAME_DATA: u8 = 0;
const FRAME_END: u8 = 1;
const FRAME_ABORT: u8 = 2;
/// A DATA frame's header: kind and length.
const DATA_HEADER: usize = 3;
/// How long an ABORT may take to go out: the peer may have stopped reading (which may be why
/// the tunnel is idle), and a tunnel being torn down must not hang on it.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Errors of the request and reply that open a tunnel stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading or writing the stream failed while exchanging the request (a reply write
    /// included).
    #[error("the tunnel stream failed")]
    Io(#[from] io::Error),
    /// The request's version is not 1 (the server replies [`Status::Malformed`]).
    #[error("the tunnel request has version {0}; this node speaks version 1")]
    Version(u8),
    /// A request name of 0 or more than 253 bytes, read or about to be written.
    #[error("the tunnel request's name is {0} bytes long, not 1 to 253")]
    NameLength(usize),
    /// A request name that is not ASCII, read or about to be written.
    #[error("the tunnel request's name is not ASCII")]
    NameNotAscii,
    /// The stream ended inside the request.
    #[error("the tunnel stream ended inside the request")]
    Truncated,
    /// A reply whose status is none of the table of section 9.2.
    #[error("the tunnel reply has status {0}, which this node does not know")]
    UnknownStatus(u8),
    /// The stream ended or failed before a full reply: the server did not take the stream
    /// (it drops those it cannot accept in time), so the client may open another.
    #[error("the peer closed the tunnel stream before replying (it did not take the stream)")]
    NotTaken(#[source] Option<io::Error>),
}

/// The request a client sends first on a tunnel stream: which service it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    /// The tunnelled name in presentation form, lower case, without the final dot
    /// (`site.p2p`).
    pub name: String,
    /// The TCP port of the service, as listed in the name's SRV records (section 9.1).
    pub port: u16,
}

impl TunnelRequest {
    /// Writes the request and flushes it (the client waits for the reply next).
    ///
    /// # Errors
    /// [`WireError::NameLength`] or [`WireError::NameNotAscii`] for a name the format cannot
    /// carry (nothing is written then), [`WireError::Io`] if the stream fails.
    pub async fn write_to(&self, w: &mut (impl AsyncWrite + Unpin)) -> Result<(), WireError> {
        let name = self.name.as_bytes();
        let len = check_name(name)?;
        let mut buf = [0u8; 2 + MAX_NAME + 2];
        buf[0] = VERSION;
        buf[1] = u8::try_from(len).expect("check_name keeps names under 254 bytes");
        buf[2..2 + len].copy_from_slice(name);
        buf[2 + len..4 + len].copy_from_slice(&self.port.to_be_bytes());
        w.write_all(&buf[..4 + len]).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads a request, never more bytes than its header announces (what follows is the
    /// client's, after the reply).
    ///
    /// # Errors
    /// [`WireError::Version`], [`WireError::NameLength`] and [`WireError::NameNotAscii`] for a
    /// malformed request (the server replies [`Status::Malformed`]), [`WireError::Truncated`]
    /// if the stream ends inside it, [`WireError::Io`] if the stream fails.
    pub async fn read_from(r: &mut (impl AsyncRead + Unpin)) -> Result<Self, WireError> {
        let request_io = |e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof => WireError::Truncated,
            _ => WireError::Io(e),
        };
        // The version first: another version may lay out the rest differently.
        let version = r.read_u8().await.map_err(request_io)?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let len = usize::from(r.read_u8().await.map_err(request_io)?);
        if !(1..=MAX_NAME).contains(&len) {
            return Err(WireError::NameLength(len));
        }
        let mut body = [0u8; MAX_NAME + 2];
        r.read_exact(&mut body[..len + 2])
            .await
            .map_err(request_io)?;
        check_name(&body[..len])?;
        let name = String::from_utf8_lossy(&body[..len]).into_owned();
        let port = u16::from_be_bytes([body[len], body[len + 1]]);
        Ok(Self { name, port })
    }
}

/// The length of a request name, if the format can carry it.
fn check_name(name: &[u8]) -> Result<usize, WireError> {
    if !(1..=MAX_NAME).contains(&name.len()) {
        return Err(WireError::NameLength(name.len()));
    }
    if !name.is_ascii() {
        return Err(WireError::NameNotAscii);
    }
    Ok(name.len())
}

/// The server's answer to a [`TunnelRequest`] (the status table of section 9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// 0: the server is connected to the service; frames follow.
    Accepted,
    /// 1: no service for this name and port.
    NotExposed,
    /// 2: the client's key is not on the service's allow list.
    NotAllowed,
    /// 3: a limit of the server (streams per peer, streams in all) is reached.
    Busy,
    /// 4: connecting to the local service failed.
    Unreachable,
    /// 5: a malformed request or an unsupported version.
    Malformed,
}

impl Status {
    const ALL: [Self; 6] = [
        Self::Accepted,
        Self::NotExposed,
        Self::NotAllowed,
        Self::Busy,
        Self::Unreachable,
        Self::Malformed,
    ];

    /// The status byte on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The status of a status byte, `None` for a byte outside the table.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Accepted => "accepted",
            Self::NotExposed => "not exposed",
            Self::NotAllowed => "not allowed",
            Self::Busy => "busy",
            Self::Unreachable => "service unreachable",
            Self::Malformed => "malformed request",
        })
    }
}

/// The reply a server sends to a [`TunnelRequest`], once it has decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelReply {
    /// The decision.
    pub status: Status,
    /// Why, for the client's log; may be empty. Only its first 255 bytes are sent.
    pub reason: String,
}

impl TunnelReply {
    /// A reply with `status` and `reason` (empty when accepted).
    pub fn new(status: Status, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// Writes the reply, with the reason cut to 255 bytes at a character boundary, and
    /// flushes it.
    ///
    /// # Errors
    /// [`WireError::Io`] if the stream fails.
    pub async fn write_to(&self, w: &mut (impl AsyncWrite + Unpin)) -> Result<(), WireError> {
        let mut buf = [0u8; 2 + MAX_TEXT];
        let len = put_text(self.status.code(), &self.reason, &mut buf);
        w.write_all(&buf[..len]).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads a reply (a reason that is not UTF-8 is read lossily: it is only for a log).
    ///
    /// # Errors
    /// [`WireError::NotTaken`] if the stream ends or fails before a full reply (the caller
    /// may open another stream), [`WireError::UnknownStatus`] for a status byte outside the
    /// table.
    pub async fn read_from(r: &mut (impl AsyncRead + Unpin)) -> Result<Self, WireError> {
        let not_taken = |e: io::Error| {
            WireError::NotTaken((e.kind() != io::ErrorKind::UnexpectedEof).then_some(e))
        };
        let code = r.read_u8().await.map_err(not_taken)?;
        let status = Status::from_code(code).ok_or(WireError::UnknownStatus(code))?;
        let reason = read_text(r).await.map_err(not_taken)?;
        Ok(Self { status, reason })
    }
}

/// Puts `tag | len:u8 | text` (a reply, or an ABORT frame) at the start of `out` and returns its
/// length; the text is cut to 255 bytes at a character boundary.
fn put_text(tag: u8, text: &str, out: &mut [u8]) -> usize {
    let mut len = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    out[0] = tag;
    out[1] = u8::try_from(len).expect("cut to 255 bytes above");
    out[2..2 + len].copy_from_slice(&text.as_bytes()[..len]);
    2 + len
}

/// Reads `len:u8 | text`, the text read lossily as UTF-8.
async fn read_text(r: &mut (impl AsyncRead + Unpin)) -> io::Result<String> {
    let len = usize::from(r.read_u8().await?);
    let mut buf = [0u8; MAX_TEXT];
    r.read_exact(&mut buf[..len]).await?;
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Why a tunnel ended before both directions carried END.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The local TCP connection failed; an ABORT with its error went to the peer.
    #[error("the local TCP connection of the tunnel failed")]
    Tcp(#[source] io::Error),
    /// The peer sent ABORT: its TCP side failed or timed out.
    #[error("the peer aborted the tunnel: {0}")]
    PeerAborted(String),
    /// The stream ended (EOF, reset, closed connection) or failed before END or ABORT. Why
    /// depends on the connection's path ([`SpliceError::cut_cause`] words it).
    #[error("the tunnel was cut before its end: the peer's stream closed")]
    Cut(#[source] Option<io::Error>),
    /// No byte went either way for the idle timeout; an ABORT went to the peer.
    #[error("the tunnel carried no byte for {} s", .0.as_secs())]
    Idle(Duration),
    /// The peer broke the frame format; an ABORT went to the peer.
    #[error("the peer broke the tunnel protocol")]
    Protocol(#[from] ProtocolViolation),
}

/// A frame the format does not allow (section 9.2: the reader aborts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// A frame kind other than DATA, END and ABORT.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A DATA frame without payload.
    #[error("DATA frame of length 0")]
    EmptyData,
}

impl SpliceError {
    /// The peer closed or reset its end of the stream while the connection stayed up: for a
    /// client, its program closed the connection (nothing failed). A lost connection is not
    /// this.
    pub fn peer_closed(&self) -> bool {
        match self {
            Self::Cut(None) => true,
            Self::Cut(Some(error)) => error.kind() == io::ErrorKind::ConnectionReset,
            _ => false,
        }
    }

    /// What likely cut a tunnel on a connection with `path` (`None` when it is not known), to
    /// follow a [`SpliceError::Cut`]'s text: a relay's limits only on a relayed connection.
    pub fn cut_cause(path: Option<ConnectionPath>) -> &'static str {
        match path {
            Some(ConnectionPath::Relayed) => RELAY_LIMITS,
            Some(ConnectionPath::Direct) => {
                " (on a direct connection: the peer stopped, or the network between the two \
                 nodes failed)"
            }
            None => " (the peer stopped, or the connection between the two nodes was lost)",
        }
    }
    /// The reason of the ABORT this error sends, `None` when the stream is gone or the peer
    /// ended it.
    fn abort_reason(&self) -> Option<String> {
        match self {
            Self::Tcp(error) => Some(error.to_string()),
            Self::Idle(idle) => Some(format!("idle for {} s", idle.as_secs())),
            Self::Protocol(violation) => Some(violation.to_string()),
            Self::PeerAborted(_) | Self::Cut(_) => None,
        }
    }
}

/// Why a tunnel on a relayed connection was cut, as the client's and the server's messages
/// say it: the limits bound the one relayed connection between the two nodes, which all their
/// tunnels share over its life.
pub const RELAY_LIMITS: &str = " (the connection between the two nodes goes through a relay, \
    which ends it at its time and byte limits, shared by every tunnel between them over the \
    connection's life; introduction servers default to 2 minutes and 1 MiB per relayed \
    connection between two nodes; or the peer stopped)";

/// A stream error: its end (`UnexpectedEof`, no cause worth printing) or failure.
fn cut(error: io::Error) -> SpliceError {
    SpliceError::Cut((error.kind() != io::ErrorKind::UnexpectedEof).then_some(error))
}

/// TCP payload bytes a tunnel moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes read from the TCP connection and sent on the stream.
    pub sent: u64,
    /// Bytes received on the stream and written to the TCP connection.
    pub received: u64,
}

/// Live byte counts of open tunnels, added to after each chunk moved, for `status`. One per
/// tunnel gives that tunnel's bytes (also after [`splice`] fails); one shared by several gives
/// their sum.
#[derive(Debug, Default)]
pub struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Counters {
    /// Counts bytes moved without frames (a connection this node serves itself).
    pub fn add(&self, sent: u64, received: u64) {
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
    }

    /// The bytes counted so far.
    pub fn transfer(&self) -> Transfer {
        Transfer {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}

/// Makes dropping `tcp` reset the connection (RST) instead of closing it (FIN), so that its
/// peer cannot mistake a cut tunnel for a complete transfer (section 9.2). Call it when
/// [`splice`] fails, then drop the stream.
///
/// # Errors
/// The `setsockopt(SO_LINGER)` error, if any.
pub fn reset(tcp: &tokio::net::TcpStream) -> io::Result<()> {
    socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO))
}

/// Undoes [`reset`]: dropping `tcp` closes it cleanly again, after its queued bytes. A tunnel
/// sets [`reset`] as soon as it holds a connection, so that the connection is reset even when
/// the daemon dies (the kernel closes its sockets), and calls this once [`splice`] ended
/// cleanly.
///
/// # Errors
/// The `setsockopt(SO_LINGER)` error, if any.
pub fn close_cleanly(tcp: &tokio::net::TcpStream) -> io::Result<()> {
    socket2::SockRef::from(tcp).set_linger(None)
}

/// Carries the TCP connection `tcp` over the tunnel stream `stream` (after an accepted reply)
/// in both directions until both have carried END, and returns the bytes moved.
///
/// Reading END half-closes `tcp` while the other direction goes on; TCP's EOF sends END and
/// closes the stream's writing half. No byte in either direction for `idle` (which must not be
/// zero) aborts the tunnel. The counters are added to as bytes move.
///
/// # Errors
/// A [`SpliceError`] when the tunnel did not end cleanly; the ABORT it calls for has been sent
/// (within 5 s), and the caller resets `tcp` (see [`reset`]) and drops it. The counters hold
/// the bytes moved before the error.
pub async fn splice<T, S>(
    tcp: &mut T,
    stream: S,
    idle: Duration,
    counters: &Counters,
) -> Result<Transfer, SpliceError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tcp_read, tcp_write) = tokio::io::split(tcp);
    let (stream_read, stream_write) = tokio::io::split(stream);
    let mut up = Upstream {
        tcp: tcp_read,
        stream: stream_write,
        frame: vec![0; DATA_HEADER + MAX_DATA].into_boxed_slice(),
        pos: 0,
        len: 0,
        ended: false,
    };
    let mut down = Downstream {
        stream: BufReader::with_capacity(DATA_HEADER + MAX_DATA, stream_read),
        tcp: tcp_write,
    };
    let activity = Activity::new();
    let result = tokio::select! {
        both = async {
            tokio::try_join!(up.run(counters, &activity), down.run(counters, &activity))
        } => both,
        () = activity.expiry(idle) => Err(SpliceError::Idle(idle)),
    };
    match result {
        Ok((sent, received)) => Ok(Transfer { sent, received }),
        Err(error) => {
            if let Some(reason) = error.abort_reason() {
                match tokio::time::timeout(ABORT_GRACE, up.abort(&reason)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "the tunnel's ABORT was not sent"),
                    Err(_) => debug!("the tunnel's ABORT was not sent in time"),
                }
            }
            Err(error)
        }
    }
}

/// When the tunnel last moved a byte, shared by both directions and the idle timer.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` (an atomic so the splice future stays `Send`).
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(millis, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `idle`. Sleeps for a duration rather than until
    /// an instant, which a huge `idle` would overflow.
    async fn expiry(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// TCP to stream: DATA frames, then END.
struct Upstream<R, W> {
    tcp: R,
    stream: W,
    /// The frame being written: its header, then the payload read straight behind it, so one
    /// write carries both and no frame allocates.
    frame: Box<[u8]>,
    /// `frame[pos..len]` is still to be written; kept here, not in the future, so that an
    /// ABORT after a cancelled write finishes the frame first instead of corrupting it.
    pos: usize,
    len: usize,
    /// END or ABORT was written: no frame may follow.
    ended: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Upstream<R, W> {
    /// Copies until TCP's EOF, returning the payload bytes sent.
    async fn run(&mut self, counters: &Counters, activity: &Activity) -> Result<u64, SpliceError> {
        let mut sent = 0;
        loop {
            let n = self.read_tcp().await?;
            if n == 0 {
                break;
            }
            activity.touch();
            let len = u16::try_from(n).expect("reads are at most MAX_DATA bytes");
            self.frame[0] = FRAME_DATA;
            self.frame[1..DATA_HEADER].copy_from_slice(&len.to_be_bytes());
            self.queue(DATA_HEADER + n);
            self.write_queued().await?;
            sent += u64::from(len);
            counters.sent.fetch_add(u64::from(len), Ordering::Relaxed);
        }
        self.frame[0] = FRAME_END;
        self.queue(1);
        self.write_queued().await?;
        self.ended = true;
        self.stream.shutdown().await.map_err(cut)?;
        Ok(sent)
    }

    /// Reads TCP into the payload part of `frame`. Frames are flushed only when TCP has
    /// nothing more at once: a burst goes out in few flushes, and nothing waits unflushed
    /// while TCP is quiet.
    async fn read_tcp(&mut self) -> Result<usize, SpliceError> {
        let read = match self.tcp.read(&mut self.frame[DATA_HEADER..]).now_or_never() {
            Some(read) => read,
            None => {
                self.stream.flush().await.map_err(cut)?;
                self.tcp.read(&mut self.frame[DATA_HEADER..]).await
            }
        };
        read.map_err(SpliceError::Tcp)
    }

    fn queue(&mut self, len: usize) {
        self.pos = 0;
        self.len = len;
    }

    /// Writes `frame[pos..len]`, one cancel-safe `write` at a time.
    async fn write_queued(&mut self) -> Result<(), SpliceError> {
        while self.pos < self.len {
            let n = self.stream.write(&self.frame[self.pos..self.len]).await;
            match n.map_err(cut)? {
                0 => return Err(cut(io::ErrorKind::WriteZero.into())),
                n => self.pos += n,
            }
        }
        Ok(())
    }

    /// Finishes the frame an error interrupted, then sends ABORT and closes the stream's
    /// writing half; nothing when END or ABORT went already.
    async fn abort(&mut self, reason: &str) -> Result<(), SpliceError> {
        if self.ended {
            return Ok(());
        }
        self.write_queued().await?;
        let len = put_text(FRAME_ABORT, reason, &mut self.frame);
        self.queue(len);
        self.write_queued().await?;
        self.ended = true;
        self.stream.shutdown().await.map_err(cut)
    }
}

/// Stream to TCP: frames in, bytes out, until END.
struct Downstream<R, W> {
    stream: BufReader<R>,
    tcp: W,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Downstream<R, W> {
    /// Copies until END, returning the payload bytes received.
    async fn run(&mut self, counters: &Counters, activity: &Activity) -> Result<u64, SpliceError> {
        let mut received = 0;
        loop {
            // Flush TCP before waiting on the stream (a no-op for a TcpStream, which does
            // not buffer).
            if self.stream.buffer().is_empty() {
                self.tcp.flush().await.map_err(SpliceError::Tcp)?;
            }
            match self.stream.read_u8().await.map_err(cut)? {
                FRAME_DATA => {
                    let len = self.stream.read_u16().await.map_err(cut)?;
                    if len == 0 {
                        return Err(ProtocolViolation::EmptyData.into());
                    }
                    self.copy_data(usize::from(len), counters, activity).await?;
                    received += u64::from(len);
                }
                FRAME_END => {
                    self.tcp.shutdown().await.map_err(SpliceError::Tcp)?;
                    return Ok(received);
                }
                FRAME_ABORT => {
                    let reason = read_text(&mut self.stream).await.map_err(cut)?;
                    return Err(SpliceError::PeerAborted(reason));
                }
                kind => return Err(ProtocolViolation::UnknownKind(kind).into()),
            }
        }
    }

    /// Writes the next `len` bytes of the stream to TCP, straight from the read buffer.
    async fn copy_data(
        &mut self,
        mut len: usize,
        counters: &Counters,
        activity: &Activity,
    ) -> Result<(), SpliceError> {
        while len > 0 {
            let chunk = self.stream.fill_buf().await.map_err(cut)?;
            if chunk.is_empty() {
                return Err(SpliceError::Cut(None));
            }
            let n = chunk.len().min(len);
            activity.touch();
            self.tcp
                .write_all(&chunk[..n])
                .await
                .map_err(SpliceError::Tcp)?;
            self.stream.consume(n);
            len -= n;
            counters.received.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
