//! The plugin's side of the agent API: one request, one response, with a deadline.
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use crate::api::{Request, Response};

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Nobody listens on the socket (the agent is down or not started yet).
    #[error("the agent is not reachable at {socket}: {detail}")]
    Unreachable { socket: String, detail: String },
    /// The agent took the request but did not answer in time.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered something that is not a response of this API version.
    #[error("the agent's answer is unreadable: {0}")]
    Protocol(String),
}

/// Most a response may be; anything larger is not an answer of this API.
const MAX_RESPONSE: u64 = 1 << 20;

/// Sends `request` to the agent at `socket` and waits up to `timeout` for the answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, CallError> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(socket).map_err(|e| CallError::Unreachable {
        socket: socket.display().to_string(),
        detail: e.to_string(),
    })?;
    let left = |deadline: Instant| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(CallError::Timeout(timeout))
    };
    let io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            CallError::Timeout(timeout)
        } else {
            CallError::Protocol(e.to_string())
        }
    };
    let mut body = serde_json::to_vec(request).map_err(|e| CallError::Protocol(e.to_string()))?;
    body.push(b'\n');
    stream
        .set_write_timeout(Some(left(deadline)?))
        .map_err(io)?;
    stream.write_all(&body).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        stream.set_read_timeout(Some(left(deadline)?)).map_err(io)?;
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() as u64 > MAX_RESPONSE {
            return Err(CallError::Protocol(format!(
                "more than {MAX_RESPONSE} bytes"
            )));
        }
    }
    if answer.is_empty() {
        return Err(CallError::Protocol(
            "the connection closed without an answer (did the agent stop?)".into(),
        ));
    }
    serde_json::from_slice(&answer).map_err(|e| CallError::Protocol(e.to_string()))
}
