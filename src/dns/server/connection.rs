//! One DNS-over-TCP connection (RFC 7766): queries read off it are answered concurrently,
//! each in a task of its own (section 6.2.1.1: a slow answer does not hold up the ones behind
//! it), and the answers written back in the order they are ready. Memory stays bounded
//! whatever the client does: a query is read only once a place in the connection's answer
//! queue is reserved for it, so at most `dns.tcp_max_pending` queries are being answered or
//! waiting to be written, and a client that sends queries without reading the answers is
//! simply no longer read (backpressure: its queries wait in the kernel, then in its own
//! buffers). A connection closes when its client closes it, after `dns.tcp_idle_timeout_secs`
//! with no query and no answer pending, or when its client takes no answer for as long: from
//! the moment the kernel holds an answer it cannot send because the client's receive window is
//! closed (TCP_USER_TIMEOUT, RFC 5482; each connection's kernel buffers are small, so a client
//! that does not read closes its window after a few answers), or an answer cannot even be handed to the kernel. A connection
//! closed for taking no answer is reset, so that the kernel drops what it still holds for it
//! at once.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hickory_server::net::xfer::Protocol;
use socket2::SockRef;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
    task::JoinSet,
    time::{Instant, timeout},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{message, tcp::TcpLimits};
use crate::dns::handler::Handler;

/// Bytes asked of the socket at a time, beyond what the message being read still needs.
const READ_CHUNK: usize = 4096;

/// What the accept loop sees of a connection: whether it is idle, and since when.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// Queries read whose answers are not written yet (or that got none).
    pending: AtomicUsize,
    /// Milliseconds from `epoch` to the last query read or answer written.
    last_ms: AtomicU64,
}

impl Activity {
    /// A connection opened now; times count from `epoch`.
    pub fn new(epoch: Instant) -> Self {
        let activity = Self {
            epoch,
            pending: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        };
        activity.touch();
        activity
    }

    /// When the connection became idle (milliseconds from the epoch), if it is: no query is
    /// being answered and no answer waits to be written.
    pub fn idle_since(&self) -> Option<u64> {
        (self.pending.load(Ordering::Acquire) == 0).then(|| self.last_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn query_read(&self) {
        self.touch();
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    fn query_done(&self) {
        self.touch();
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the connection `stream` from `peer` until it closes (see the module), or, from
/// `draining` on, until the answers to the queries read are written.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Handler,
    limits: TcpLimits,
    activity: Arc<Activity>,
    draining: CancellationToken,
) {
    // Answers are whole messages written at once: no reason to wait for more to coalesce.
    let _ = stream.set_nodelay(true);
    take_no_answer_for(&stream, limits.idle_timeout);
    let (read_half, write_half) = stream.into_split();
    let (answers, queue) = mpsc::channel(limits.max_pending);
    let mut queries = JoinSet::new();
    let writer = write_answers(write_half, queue, &activity, limits.idle_timeout);
    tokio::pin!(writer);
    let reader = Reader {
        frames: FrameReader::new(read_half),
        answers,
        handler,
        peer,
        activity: activity.clone(),
        idle_timeout: limits.idle_timeout,
        draining,
    };
    tokio::select! {
        // The client sent its last query (or went idle): the answers still due are written.
        () = reader.run(&mut queries) => (&mut writer).await,
        // The client takes no answers, or the connection broke.
        () = &mut writer => {}
    }
}

/// Reads queries off a connection and starts answering each.
struct Reader {
    frames: FrameReader,
    /// The writer's queue; a place in it is reserved before each query is read.
    answers: mpsc::Sender<Vec<u8>>,
    handler: Handler,
    peer: SocketAddr,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    /// The server shuts down: no more queries are read.
    draining: CancellationToken,
}

impl Reader {
    async fn run(mut self, queries: &mut JoinSet<()>) {
        let draining = self.draining.clone();
        loop {
            // Backpressure: with every place taken by answers not yet written, the client is
            // not read until it takes some.
            let next = async {
                let place = self.answers.clone().reserve_owned().await.ok()?;
                Some((place, self.next_query().await?))
            };
            let Some((place, query)) = draining.run_until_cancelled(next).await.flatten() else {
                return;
            };
            self.activity.query_read();
            let (handler, peer, activity) =
                (self.handler.clone(), self.peer, self.activity.clone());
            queries.spawn(async move {
                match message::answer(&handler, query, peer, Protocol::Tcp).await {
                    Some(answer) => {
                        place.send(framed(&answer));
                    }
                    None => activity.query_done(),
                }
            });
            while queries.try_join_next().is_some() {}
        }
    }

    /// The next query; `None` once the client closed the connection, broke the framing, or
    /// stayed idle for the idle timeout with nothing pending.
    async fn next_query(&mut self) -> Option<Vec<u8>> {
        loop {
            match timeout(self.idle_timeout, self.frames.next()).await {
                Ok(Ok(frame)) => return frame,
                Ok(Err(error)) => {
                    debug!(peer = %self.peer, %error, "DNS TCP connection failed");
                    return None;
                }
                // Answers are still due: the client waits on us, it is not idle.
                Err(_) if self.activity.pending.load(Ordering::Acquire) > 0 => {}
                Err(_) => {
                    debug!(peer = %self.peer, "closing an idle DNS TCP connection");
                    return None;
                }
            }
        }
    }
}

/// Writes the answers of `queue` in turn; returns when every sender is gone, the connection
/// broke, or the client took none of an answer for `idle_timeout`.
async fn write_answers(
    mut half: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    activity: &Activity,
    idle_timeout: Duration,
) {
    while let Some(answer) = queue.recv().await {
        match timeout(idle_timeout, half.write_all(&answer)).await {
            Ok(Ok(())) => activity.query_done(),
            Ok(Err(error)) => {
                debug!(%error, "writing a DNS answer over TCP failed");
                return;
            }
            Err(_) => {
                debug!("closing a DNS TCP connection whose client takes no answers");
                // A reset: an orderly close would leave the answers it did not take queued
                // behind a closed window until the kernel gave up on them.
                let _ = SockRef::from(half.as_ref()).set_linger(Some(Duration::ZERO));
                return;
            }
        }
    }
}

/// Has the kernel end `stream` once an answer has waited `timeout` for the client to open its
/// receive window (or to acknowledge it), counted from the first answer not taken, not from
/// when the send buffer is full. Best effort: where the option is missing, the timeout on
/// handing answers to the kernel remains.
fn take_no_answer_for(stream: &TcpStream, timeout: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
        debug!(%error, "setting TCP_USER_TIMEOUT on a DNS TCP connection failed");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, timeout);
}

/// `message` with its two-octet length in front (RFC 1035 section 4.2.2).
fn framed(message: &[u8]) -> Vec<u8> {
    // The encoder stops TCP answers at 65,535 octets.
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// Splits the byte stream of a connection into length-prefixed messages.
struct FrameReader {
    half: OwnedReadHalf,
    /// Bytes read; `buf[start..]` not taken yet. At most one message and a chunk long.
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    fn new(half: OwnedReadHalf) -> Self {
        Self {
            half,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The next message, `None` at a clean end of the stream. Cancel-safe: what was read
    /// stays buffered for the next call.
    async fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let unread = &self.buf[self.start..];
            let needed = match unread {
                [high, low, body @ ..] => {
                    let len = usize::from(u16::from_be_bytes([*high, *low]));
                    if body.len() >= len {
                        let message = body[..len].to_vec();
                        self.start += 2 + len;
                        return Ok(Some(message));
                    }
                    2 + len - unread.len()
                }
                _ => 2 - unread.len(),
            };
            self.buf.drain(..self.start);
            self.start = 0;
            self.buf.reserve(needed.max(READ_CHUNK));
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }
}
