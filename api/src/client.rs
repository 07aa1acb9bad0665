//! The synchronous line-JSON client: connect, send one request, read its reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{ApiError, Call, Reply, Request};

/// Client error: transport or daemon-side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to vswitchd at {path}: {source} (is vswitchd running? set --socket)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad reply from vswitchd: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// Where the daemon listens and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Client {
        Client {
            socket: socket.into(),
            timeout,
        }
    }

    /// Sends `req` and returns its typed reply.
    pub fn call<C: Call>(&self, req: C) -> Result<C::Reply, ClientError> {
        call(&self.socket, req, self.timeout)
    }
}

/// Sends one request on a fresh connection and waits for its typed reply.
pub fn call<C: Call>(socket: &Path, req: C, timeout: Duration) -> Result<C::Reply, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let req: Request = req.into();
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reply = String::new();
    if BufReader::new(&stream).read_line(&mut reply)? == 0 {
        return Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "vswitchd closed the connection without a reply",
        )));
    }
    match serde_json::from_str::<Reply>(&reply)? {
        Reply::Ok(v) => Ok(serde_json::from_value(v)?),
        Reply::Error(e) => Err(ClientError::Api(e)),
    }
}
