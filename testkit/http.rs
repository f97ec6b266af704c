//! Reading keel's HTTP/1.1 responses: one response (its head and a Content-Length body) from a
//! connection, either exactly — nothing after it is consumed, so that the caller can go on
//! reading the socket itself — or reading ahead on a keep-alive connection. Writing the request
//! is the caller's: the tests send bytes of their own, the benches build requests.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The status line and the headers, through the blank line that ends them.
    pub head: String,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum HttpError {
    /// The deadline, or the socket's read timeout, passed first.
    Timeout,
    Io(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Timeout => f.write_str("timed out"),
            HttpError::Io(e) => f.write_str(e),
        }
    }
}

/// An I/O error as an [`HttpError`]: a timeout, or `what` failed.
pub fn io_error(what: &str, e: &std::io::Error) -> HttpError {
    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
        HttpError::Timeout
    } else {
        HttpError::Io(format!("{what}: {e}"))
    }
}

/// What is left of `deadline`, or a timeout. Never zero (a zero socket timeout is an error).
pub fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_micros(100) {
        Err(HttpError::Timeout)
    } else {
        Ok(left)
    }
}

pub const HEAD_MAX: usize = 64 << 10;
pub const BODY_MAX: usize = 64 << 20;
/// What one read takes at most when reading ahead.
const READ_AHEAD: usize = 64 << 10;

pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// What a response head says of the response.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub status: u16,
    /// The body's length.
    pub length: usize,
    /// Whether the server closes the connection after this response.
    pub close: bool,
}

/// Reads a response head (without the blank line that ends it). A body is delimited by
/// Content-Length; an answer without one has no body if it is 1xx, 204 or 304, and cannot be
/// read by this client otherwise, nor can a chunked one.
pub fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let mut length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("invalid Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported by this client".into());
        } else if name.eq_ignore_ascii_case("connection") {
            close = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let length = match length {
        Some(n) => n,
        None if (100..200).contains(&status) || status == 204 || status == 304 => 0,
        None => return Err("response has no Content-Length".into()),
    };
    if length > BODY_MAX {
        return Err(format!("response body of {length} bytes is too large"));
    }
    Ok(Head {
        status,
        length,
        close,
    })
}

/// Reads one response from `s` and nothing more: its head a byte at a time, then exactly its
/// body, so that what follows (a pipelined response, a final answer after `100 Continue`, the
/// bytes after an upgrade) is still on the socket. Each read waits at most the socket's read
/// timeout.
pub fn read_response(s: &mut TcpStream) -> Result<Response, HttpError> {
    read_one(s, &mut Vec::new(), None, false).map(|(r, _)| r)
}

/// Reads one response on a keep-alive connection, all of it before `deadline`: `buf` holds
/// what an earlier call read ahead, and keeps what this one read past the response. Also says
/// whether the server closes the connection after it.
pub fn read_response_ahead(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(Response, bool), HttpError> {
    read_one(s, buf, Some(deadline), true)
}

fn read_one(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Option<Instant>,
    ahead: bool,
) -> Result<(Response, bool), HttpError> {
    // Appends at least one byte to `buf`: up to `want` of them, or more when reading ahead.
    let mut read_more = |buf: &mut Vec<u8>, want: usize| -> Result<(), HttpError> {
        if let Some(deadline) = deadline {
            s.set_read_timeout(Some(remaining(deadline)?))
                .map_err(|e| io_error("set_read_timeout", &e))?;
        }
        let at = buf.len();
        buf.resize(at + if ahead { READ_AHEAD } else { want }, 0);
        let got = loop {
            match s.read(&mut buf[at..]) {
                Ok(0) => break Err(HttpError::Io("connection closed by the server".into())),
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(io_error("read", &e)),
            }
        };
        buf.truncate(at + got.as_ref().map_or(0, |n| *n));
        got.map(drop)
    };
    let head_end = loop {
        if let Some(i) = find_head_end(buf) {
            break i;
        }
        if buf.len() > HEAD_MAX {
            return Err(HttpError::Io("response head larger than 64 KiB".into()));
        }
        read_more(buf, 1)?;
    };
    let head = parse_head(&buf[..head_end]).map_err(HttpError::Io)?;
    let total = head_end + 4 + head.length;
    buf.reserve(total.saturating_sub(buf.len()));
    while buf.len() < total {
        read_more(buf, total - buf.len())?;
    }
    let response = Response {
        status: head.status,
        head: String::from_utf8_lossy(&buf[..head_end + 4]).into_owned(),
        body: buf[head_end + 4..total].to_vec(),
    };
    buf.drain(..total);
    Ok((response, head.close))
}
