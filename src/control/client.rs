//! The CLI's side of the control socket: one request, one response.

use std::{
    io,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::{
    SERVICE_SOCKET, SOCKET_FILE,
    protocol::{Request, Response},
};

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
    /// Talking over the socket failed.
    #[error("failed to talk to the daemon over {socket}")]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The failed connect, write or read.
        #[source]
        source: io::Error,
    },
    /// The request could not be encoded, or the response not decoded (another version?).
    #[error("the daemon sent a response this client does not understand")]
    Protocol(#[source] serde_json::Error),
    /// The daemon answered with an error; its message, causes included.
    #[error("{0}")]
    Daemon(String),
}

/// Sends one request to the daemon using `data_dir` and returns its response. With
/// `try_service`, a system service's socket ([`SERVICE_SOCKET`]) is tried when no daemon
/// answers in `data_dir`.
pub async fn call(
    data_dir: &Path,
    try_service: bool,
    request: &Request,
) -> Result<Response, ClientError> {
    match call_socket(data_dir, &data_dir.join(SOCKET_FILE), request).await {
        Err(ClientError::NotRunning { .. })
            if try_service && Path::new(SERVICE_SOCKET).exists() =>
        {
            call_socket(data_dir, Path::new(SERVICE_SOCKET), request).await
        }
        result => result,
    }
}

async fn call_socket(
    data_dir: &Path,
    socket: &Path,
    request: &Request,
) -> Result<Response, ClientError> {
    let socket = socket.to_owned();
    let io_error = |source: io::Error| ClientError::Io {
        socket: socket.clone(),
        source,
    };
    let stream = UnixStream::connect(&socket)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                dir: data_dir.to_owned(),
                socket: socket.clone(),
            },
            io::ErrorKind::PermissionDenied => ClientError::Permission {
                socket: socket.clone(),
            },
            _ => io_error(e),
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(ClientError::Protocol)?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io_error)?;
    let mut reader = BufReader::new(read);
    let mut reply = String::new();
    reader.read_line(&mut reply).await.map_err(io_error)?;
    match serde_json::from_str::<Response>(&reply) {
        Ok(Response::Error { message }) => Err(ClientError::Daemon(message)),
        Ok(response) => Ok(response),
        Err(e) => Err(ClientError::Protocol(e)),
    }
}
