//! The tunnel stream protocol (docs/PROTOCOL.md section 9.2): the request and reply that open
//! a stream, and the DATA/END/ABORT frames that carry one TCP connection over it, so that a
//! clean close, an abort and a cut stream (a relay's limit, a dead peer) read differently.
//!
//! Everything here is generic over tokio's I/O traits: the libp2p stream arrives wrapped with
//! `tokio_util::compat`, and the tests use in-memory pipes.

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// The request version (docs/PROTOCOL.md section 9.2).
const VERSION: u8 = 1;
/// Frame kinds.
const DATA: u8 = 0;
const END: u8 = 1;
const ABORT: u8 = 2;
/// Largest DATA payload, in bytes.
const MAX_DATA: usize = u16::MAX as usize;

/// Errors of the request and reply.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream ended before a whole reply: the server dropped it unanswered (it may drop
    /// streams it cannot accept in time), so another may be opened.
    #[error("the stream ended before the reply")]
    NotTaken,
    /// The request or reply breaks the format (the rule it breaks).
    #[error("malformed tunnel message: {0}")]
    Malformed(&'static str),
    /// Reading or writing the stream failed.
    #[error("the tunnel stream failed")]
    Io(#[from] io::Error),
}

/// The request that opens a stream: which name and port the client wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    /// The name in presentation form, lower case, without the final dot (`site.p2p`).
    pub name: String,
    /// The port.
    pub port: u16,
}

impl TunnelRequest {
    /// Writes the request and flushes.
    ///
    /// # Errors
    /// [`WireError::Malformed`] for an empty, non-ASCII or over-253-byte name; I/O errors.
    pub async fn write_to(&self, w: &mut (impl AsyncWrite + Unpin)) -> Result<(), WireError> {
        let name = self.name.as_bytes();
        if name.is_empty() || name.len() > 253 || !self.name.is_ascii() {
            return Err(WireError::Malformed(
                "the name must be 1 to 253 ASCII bytes",
            ));
        }
        let mut buf = Vec::with_capacity(4 + name.len());
        buf.push(VERSION);
        buf.push(name.len() as u8);
        buf.extend_from_slice(name);
        buf.extend_from_slice(&self.port.to_be_bytes());
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads a request; never more bytes than its header announces.
    ///
    /// # Errors
    /// [`WireError::Malformed`] for another version, a name length of 0 or over 253, or a
    /// name that is not ASCII; I/O errors (an early end is `UnexpectedEof`).
    pub async fn read_from(r: &mut (impl AsyncRead + Unpin)) -> Result<Self, WireError> {
        let mut head = [0; 2];
        r.read_exact(&mut head).await?;
        if head[0] != VERSION {
            return Err(WireError::Malformed("unsupported version"));
        }
        let len = usize::from(head[1]);
        if len == 0 || len > 253 {
            return Err(WireError::Malformed("the name length must be 1 to 253"));
        }
        let mut name = vec![0; len];
        r.read_exact(&mut name).await?;
        let mut port = [0; 2];
        r.read_exact(&mut port).await?;
        let name = String::from_utf8(name)
            .ok()
            .filter(|n| n.is_ascii())
            .ok_or(WireError::Malformed("the name is not ASCII"))?;
        Ok(Self {
            name,
            port: u16::from_be_bytes(port),
        })
    }
}

/// The server's answer to a request (docs/PROTOCOL.md section 9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// The server is connected to the service; frames follow.
    Accepted,
    /// No service for this name and port.
    NotExposed,
    /// The client's key is not on the service's allow list.
    NotAllowed,
    /// A limit of the server is reached.
    Busy,
    /// Connecting to the local service failed.
    Unreachable,
    /// Malformed request or unsupported version.
    Malformed,
}

impl Status {
    fn byte(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::NotExposed => 1,
            Self::NotAllowed => 2,
            Self::Busy => 3,
            Self::Unreachable => 4,
            Self::Malformed => 5,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Accepted,
            1 => Self::NotExposed,
            2 => Self::NotAllowed,
            3 => Self::Busy,
            4 => Self::Unreachable,
            5 => Self::Malformed,
            _ => return None,
        })
    }
}

/// The reply: a status and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelReply {
    /// What the server decided.
    pub status: Status,
    /// Why, for the log (empty when accepted).
    pub reason: String,
}

impl TunnelReply {
    /// A reply with `status` and `reason`.
    pub fn new(status: Status, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// Writes the reply (the reason cut to 255 bytes, on a character boundary) and flushes.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn write_to(&self, w: &mut (impl AsyncWrite + Unpin)) -> Result<(), WireError> {
        let reason = truncated(&self.reason, 255);
        let mut buf = Vec::with_capacity(2 + reason.len());
        buf.push(self.status.byte());
        buf.push(reason.len() as u8);
        buf.extend_from_slice(reason.as_bytes());
        w.write_all(&buf).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads a reply.
    ///
    /// # Errors
    /// [`WireError::NotTaken`] when the stream ends before a whole reply;
    /// [`WireError::Malformed`] for an unknown status; other I/O errors.
    pub async fn read_from(r: &mut (impl AsyncRead + Unpin)) -> Result<Self, WireError> {
        let not_taken = |e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::WriteZero => WireError::NotTaken,
            _ => WireError::Io(e),
        };
        let mut head = [0; 2];
        r.read_exact(&mut head).await.map_err(not_taken)?;
        let status = Status::from_byte(head[0]).ok_or(WireError::Malformed("unknown status"))?;
        let mut reason = vec![0; usize::from(head[1])];
        r.read_exact(&mut reason).await.map_err(not_taken)?;
        Ok(Self {
            status,
            reason: String::from_utf8_lossy(&reason).into_owned(),
        })
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bytes carried by tunnels, updated as frames pass.
#[derive(Debug, Default)]
pub struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Counters {
    /// TCP payload bytes sent into streams.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// TCP payload bytes received from streams.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes sent (for copies that bypass the frames).
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes received.
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
}

/// How a tunnel ended cleanly: the payload bytes each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer {
    /// Bytes read from TCP and sent into the stream.
    pub sent: u64,
    /// Bytes received from the stream and written to TCP.
    pub received: u64,
}

/// Why a tunnel did not end cleanly; the caller resets its TCP connection ([`reset`]).
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// The stream ended (EOF, reset, closed connection) before END or ABORT.
    #[error("the tunnel was cut before its end: the stream to the peer closed")]
    Cut,
    /// The peer sent ABORT, with its reason.
    #[error("the peer aborted the tunnel: {0}")]
    Aborted(String),
    /// The local TCP connection failed; an ABORT was sent.
    #[error("the local connection failed")]
    Local(#[source] io::Error),
    /// No byte either way for the idle timeout; an ABORT was sent.
    #[error("closed after {} s without traffic", .0.as_secs())]
    Idle(Duration),
    /// The peer broke the frame format; an ABORT was sent.
    #[error("the peer broke the tunnel protocol: {0}")]
    Protocol(&'static str),
}

/// Makes dropping `tcp` send a reset (RST) instead of a clean close (FIN): the program on the
/// other end must not take a cut transfer for a complete one.
pub fn reset(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// What one direction of a splice reports.
enum Half {
    /// END was sent or received: this direction is done, after this many payload bytes.
    Done(u64),
    /// The direction failed; the error says how.
    Failed(SpliceError),
}

/// Carries `tcp` over `stream` both ways (DATA frames, END on TCP EOF, half-close on END)
/// until both directions ended with END, or one failed: then ABORT is sent where it can be,
/// and the error returned. No byte either way for `idle` aborts the tunnel. Bytes are counted
/// in `counters` as they pass.
///
/// # Errors
/// [`SpliceError`]: the tunnel was cut, aborted by the peer, failed locally, idled out or
/// broke the protocol. The caller then resets `tcp` ([`reset`]).
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
    let (mut tcp_read, mut tcp_write) = tokio::io::split(tcp);
    let (mut stream_read, stream_write) = tokio::io::split(stream);
    let stream_write = tokio::sync::Mutex::new(stream_write);
    let activity = AtomicU64::new(0);
    let ended = {
        let outbound = tcp_to_stream(&mut tcp_read, &stream_write, counters, &activity);
        let inbound = stream_to_tcp(&mut stream_read, &mut tcp_write, counters, &activity);
        both_halves(outbound, inbound, watch_idle(&activity, idle), idle).await
    };
    let failure = match ended {
        Ok(transfer) => return Ok(transfer),
        Err(failure) => failure,
    };
    if !matches!(failure, SpliceError::Cut | SpliceError::Aborted(_)) {
        let reason = crate::error::one_line(&failure);
        let mut w = stream_write.lock().await;
        let _ = write_abort(&mut *w, &reason).await;
        let _ = w.shutdown().await;
    }
    Err(failure)
}

/// Runs both directions until both are done, or returns the first failure (the other
/// direction is dropped with it), or the idle timeout.
async fn both_halves(
    outbound: impl Future<Output = Half>,
    inbound: impl Future<Output = Half>,
    idle_watch: impl Future<Output = ()>,
    idle: Duration,
) -> Result<Transfer, SpliceError> {
    tokio::pin!(outbound, inbound, idle_watch);
    let (mut sent, mut received) = (None, None);
    loop {
        let half = tokio::select! {
            half = &mut outbound, if sent.is_none() => match half {
                Half::Done(n) => { sent = Some(n); None }
                Half::Failed(e) => Some(e),
            },
            half = &mut inbound, if received.is_none() => match half {
                Half::Done(n) => { received = Some(n); None }
                Half::Failed(e) => Some(e),
            },
            () = &mut idle_watch => Some(SpliceError::Idle(idle)),
        };
        if let Some(failure) = half {
            return Err(failure);
        }
        if let (Some(sent), Some(received)) = (sent, received) {
            return Ok(Transfer { sent, received });
        }
    }
}

/// Resolves once nothing moved for `idle`.
async fn watch_idle(activity: &AtomicU64, idle: Duration) {
    let mut seen = activity.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(idle).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

async fn write_abort(w: &mut (impl AsyncWrite + Unpin), reason: &str) -> io::Result<()> {
    let reason = truncated(reason, 255);
    let mut buf = Vec::with_capacity(2 + reason.len());
    buf.push(ABORT);
    buf.push(reason.len() as u8);
    buf.extend_from_slice(reason.as_bytes());
    w.write_all(&buf).await?;
    w.flush().await
}

/// TCP → stream: DATA frames, then END at TCP EOF (and the stream's write half closed).
async fn tcp_to_stream<R, W>(
    tcp: &mut R,
    stream: &tokio::sync::Mutex<W>,
    counters: &Counters,
    activity: &AtomicU64,
) -> Half
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // 3 bytes of frame header in front of the payload: one write per frame.
    let mut buf = vec![0u8; 3 + MAX_DATA];
    let mut total = 0;
    loop {
        let n = match tcp.read(&mut buf[3..]).await {
            Ok(n) => n,
            Err(error) => return Half::Failed(SpliceError::Local(error)),
        };
        let mut w = stream.lock().await;
        if n == 0 {
            let ended = async {
                w.write_all(&[END]).await?;
                w.flush().await?;
                w.shutdown().await
            };
            return match ended.await {
                Ok(()) => Half::Done(total),
                Err(_) => Half::Failed(SpliceError::Cut),
            };
        }
        buf[0] = DATA;
        buf[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        if w.write_all(&buf[..3 + n]).await.is_err() || w.flush().await.is_err() {
            return Half::Failed(SpliceError::Cut);
        }
        total += n as u64;
        counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        activity.fetch_add(1, Ordering::Relaxed);
    }
}

/// Stream → TCP: DATA payloads written out, END shuts the TCP write half down; an ABORT or an
/// end of the stream before END fails.
async fn stream_to_tcp<R, W>(
    stream: &mut R,
    tcp: &mut W,
    counters: &Counters,
    activity: &AtomicU64,
) -> Half
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; MAX_DATA];
    let mut total = 0;
    loop {
        let mut kind = [0u8; 1];
        if stream.read_exact(&mut kind).await.is_err() {
            return Half::Failed(SpliceError::Cut);
        }
        match kind[0] {
            DATA => {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return Half::Failed(SpliceError::Cut);
                }
                let len = usize::from(u16::from_be_bytes(len));
                if len == 0 {
                    return Half::Failed(SpliceError::Protocol("a DATA frame without data"));
                }
                if stream.read_exact(&mut buf[..len]).await.is_err() {
                    return Half::Failed(SpliceError::Cut);
                }
                if let Err(error) = tcp.write_all(&buf[..len]).await {
                    return Half::Failed(SpliceError::Local(error));
                }
                total += len as u64;
                counters.received.fetch_add(len as u64, Ordering::Relaxed);
                activity.fetch_add(1, Ordering::Relaxed);
            }
            END => {
                let _ = tcp.shutdown().await;
                return Half::Done(total);
            }
            ABORT => {
                let mut len = [0u8; 1];
                let mut reason = Vec::new();
                if stream.read_exact(&mut len).await.is_ok() {
                    reason.resize(usize::from(len[0]), 0);
                    let _ = stream.read_exact(&mut reason).await;
                }
                let reason = String::from_utf8_lossy(&reason).into_owned();
                return Half::Failed(SpliceError::Aborted(reason));
            }
            _ => return Half::Failed(SpliceError::Protocol("an unknown frame kind")),
        }
    }
}
