//! The CLI's side of the control socket: one request, one response, within a time limit and a
//! size bound. Each way the exchange can fail has an error of its own that says what happened
//! and what to do: no daemon, another user's daemon, a daemon that closed the connection
//! without answering (stopped or crashed), one that does not answer in time (busy), and an
//! answer that is not one (another program on the socket, another version).

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::{
    SERVICE_SOCKET, SOCKET_FILE,
    protocol::{Request, Response},
};

/// The longest answer read, in bytes: a status with every peer, or thousands of names, is far
/// below it; more is not a p2pdns answer.
pub const MAX_RESPONSE: u64 = 16 * 1024 * 1024;
/// How long the CLI waits for an answer, unless told otherwise ([`answer_time`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to look when the daemon fails: the service's status and log, or the terminal that
/// runs it.
const WHERE_TO_LOOK: &str = "check `systemctl status p2pdns` and its log (`journalctl -u \
                             p2pdns`), or the output of `p2pdns run` if it runs in a terminal";

/// Errors of the CLI side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no p2pdns daemon is running with the data directory {dir} (no control socket at {socket}); \
         start one with `p2pdns run`, or pass the --data-dir/--config it uses"
    )]
    NotRunning {
        /// The data directory the CLI used.
        dir: PathBuf,
        /// The socket path tried last.
        socket: PathBuf,
    },
    /// The socket belongs to another user.
    #[error("permission denied on {socket}: the daemon runs as another user; try again with sudo")]
    Permission {
        /// The socket path.
        socket: PathBuf,
    },
    /// The daemon's queue of connections is full: it runs, but accepts no more for now.
    #[error(
        "the daemon on {socket} is not taking connections (its queue is full): it is running but \
         busy; try again shortly, and if it lasts, {WHERE_TO_LOOK}"
    )]
    Busy {
        /// The socket path.
        socket: PathBuf,
    },
    /// The connection ended before a whole answer came: the daemon stopped or crashed.
    #[error(
        "the daemon closed the connection on {socket} before answering `{command}`: it may have \
         stopped or crashed; {WHERE_TO_LOOK}"
    )]
    Closed {
        /// The socket path.
        socket: PathBuf,
        /// The command asked ([`Request::command`]).
        command: &'static str,
    },
    /// No answer within the time limit, though the daemon took the request.
    #[error(
        "the daemon did not answer `{command}` within {} s: it is running (it took the request \
         on {socket}) but busy or stuck{}; {WHERE_TO_LOOK}; --timeout SECS waits longer",
        .after.as_secs(),
        if *.changes { ", and may still carry the request out" } else { "" }
    )]
    TimedOut {
        /// The socket path.
        socket: PathBuf,
        /// The command asked.
        command: &'static str,
        /// The time limit.
        after: Duration,
        /// The request changes state (a publish...): it may still be done.
        changes: bool,
    },
    /// The answer is longer than [`MAX_RESPONSE`] bytes.
    #[error(
        "the answer to `{command}` on {socket} is over {} MiB, more than a p2pdns daemon sends: is \
         another program listening there?", MAX_RESPONSE >> 20
    )]
    TooLarge {
        /// The socket path.
        socket: PathBuf,
        /// The command asked.
        command: &'static str,
    },
    /// The answer is not a response of this protocol.
    #[error(
        "the answer to `{command}` on {socket} is not a p2pdns response: is another program \
         listening there, or a daemon of another version (this is p2pdns {})?",
        env!("CARGO_PKG_VERSION")
    )]
    Garbage {
        /// The socket path.
        socket: PathBuf,
        /// The command asked.
        command: &'static str,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// Talking over the socket failed otherwise.
    #[error("failed to talk to the daemon over {socket}")]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The failed connect, write or read.
        #[source]
        source: io::Error,
    },
    /// The request could not be encoded, or the response not re-encoded as JSON for printing.
    #[error("failed to encode a control message as JSON")]
    Encode(#[source] serde_json::Error),
    /// The daemon answered with an error; its message, causes included.
    #[error("{0}")]
    Daemon(String),
}

/// How long to wait for the answer to `request` by default: [`DEFAULT_TIMEOUT`], plus the
/// time `connect` may wait for a direct connection (which the daemon caps at 60 s).
pub fn answer_time(request: &Request) -> Duration {
    match request {
        Request::Connect {
            wait_direct_secs, ..
        } => DEFAULT_TIMEOUT + Duration::from_secs((*wait_direct_secs).min(60)),
        _ => DEFAULT_TIMEOUT,
    }
}

/// Sends one request to the daemon using `data_dir` and returns its response, waiting at most
/// [`answer_time`]. With `try_service`, a system service's socket ([`SERVICE_SOCKET`]) is tried
/// when no daemon answers in `data_dir`.
pub async fn call(
    data_dir: &Path,
    try_service: bool,
    request: &Request,
) -> Result<Response, ClientError> {
    call_within(data_dir, try_service, request, answer_time(request)).await
}

/// [`call`], waiting at most `timeout` for the answer.
pub async fn call_within(
    data_dir: &Path,
    try_service: bool,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let own = data_dir.join(SOCKET_FILE);
    match call_socket(data_dir, &own, request, timeout).await {
        Err(ClientError::NotRunning { .. })
            if try_service && Path::new(SERVICE_SOCKET).exists() =>
        {
            call_socket(data_dir, Path::new(SERVICE_SOCKET), request, timeout).await
        }
        result => result,
    }
}

async fn call_socket(
    data_dir: &Path,
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| connect_error(e, data_dir, socket))?;
    let command = request.command();
    let exchanged = tokio::time::timeout(timeout, exchange(stream, request)).await;
    let reply = match exchanged {
        Ok(Ok(reply)) => reply,
        Ok(Err(failure)) => return Err(failure.into_error(socket, command)),
        Err(_) => {
            return Err(ClientError::TimedOut {
                socket: socket.to_owned(),
                command,
                after: timeout,
                changes: !request.is_local(),
            });
        }
    };
    match serde_json::from_slice::<Response>(&reply) {
        Ok(Response::Error { message }) => Err(ClientError::Daemon(message)),
        Ok(response) => Ok(response),
        Err(source) => Err(ClientError::Garbage {
            socket: socket.to_owned(),
            command,
            source,
        }),
    }
}

/// The error for a failed connect to `socket`.
fn connect_error(error: io::Error, data_dir: &Path, socket: &Path) -> ClientError {
    let socket = socket.to_owned();
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
            dir: data_dir.to_owned(),
            socket,
        },
        io::ErrorKind::PermissionDenied => ClientError::Permission { socket },
        // A Unix socket whose backlog is full refuses a non-blocking connect with EAGAIN.
        io::ErrorKind::WouldBlock => ClientError::Busy { socket },
        _ => ClientError::Io {
            socket,
            source: error,
        },
    }
}

/// How the exchange itself failed, before the socket and command are known.
enum Failure {
    /// The daemon hung up before a whole answer (EOF, a reset, a broken pipe).
    Closed,
    /// The answer goes on past [`MAX_RESPONSE`].
    TooLarge,
    Encode(serde_json::Error),
    Io(io::Error),
}

impl Failure {
    fn into_error(self, socket: &Path, command: &'static str) -> ClientError {
        let socket = socket.to_owned();
        match self {
            Self::Closed => ClientError::Closed { socket, command },
            Self::TooLarge => ClientError::TooLarge { socket, command },
            Self::Encode(source) => ClientError::Encode(source),
            Self::Io(source) => ClientError::Io { socket, source },
        }
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => Self::Closed,
            _ => Self::Io(error),
        }
    }
}

/// Writes `request` as one line and reads one line back (without its newline), at most
/// [`MAX_RESPONSE`] bytes of it.
async fn exchange(stream: UnixStream, request: &Request) -> Result<Vec<u8>, Failure> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(Failure::Encode)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reader = BufReader::new(read.take(MAX_RESPONSE + 1));
    let mut reply = Vec::new();
    reader.read_until(b'\n', &mut reply).await?;
    if reply.pop() == Some(b'\n') {
        return Ok(reply);
    }
    // No newline: the read stopped at the bound, or the daemon hung up mid-answer.
    if reply.len() as u64 >= MAX_RESPONSE {
        Err(Failure::TooLarge)
    } else {
        Err(Failure::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way a connect fails has its own error (root cannot meet EACCES on a socket, nor
    /// can a test fill a backlog at will: the kinds are given here).
    #[test]
    fn connect_failures_are_told_apart() {
        let dir = Path::new("/d");
        let socket = Path::new("/d/control.sock");
        for (kind, variant) in [
            (io::ErrorKind::NotFound, "NotRunning"),
            (io::ErrorKind::ConnectionRefused, "NotRunning"),
            (io::ErrorKind::PermissionDenied, "Permission"),
            (io::ErrorKind::WouldBlock, "Busy"),
            (io::ErrorKind::InvalidInput, "Io"),
        ] {
            let error = format!("{:?}", connect_error(io::Error::from(kind), dir, socket));
            assert!(
                error.starts_with(&format!("{variant} ")),
                "{kind:?}: {error}"
            );
        }
    }

    #[test]
    fn connect_gets_its_wait_on_top() {
        let names = answer_time(&Request::Names);
        let connect = answer_time(&Request::Connect {
            name: "site".into(),
            wait_direct_secs: 600,
        });
        assert_eq!(names, DEFAULT_TIMEOUT);
        assert_eq!(connect, DEFAULT_TIMEOUT + Duration::from_secs(60));
    }
}
