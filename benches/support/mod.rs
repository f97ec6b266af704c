//! Shared by the benchmarks (`benches/health.rs`, `benches/usage.rs`): a minimal keep-alive
//! HTTP/1.1 client with a deadline on every exchange, and percentile helpers.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One keep-alive connection, reopened after any error or a `Connection: close`.
pub struct Http {
    pub addr: SocketAddr,
    pub stream: Option<TcpStream>,
    pub buf: Vec<u8>,
}

pub const HEAD_MAX: usize = 64 << 10;
pub const BODY_MAX: usize = 64 << 20;

pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Status, Content-Length and whether the server will close, from a response head.
pub fn parse_response_head(head: &[u8]) -> Result<(u16, usize, bool), String> {
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
    let length = length.ok_or("response has no Content-Length")?;
    if length > BODY_MAX {
        return Err(format!("response body of {length} bytes is too large"));
    }
    Ok((status, length, close))
}

#[derive(Debug)]
pub enum HttpError {
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

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            stream: None,
            buf: Vec::with_capacity(64 << 10),
        }
    }

    /// One request, bounded by `timeout` in all (connect included).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Reply, HttpError> {
        let deadline = Instant::now() + timeout;
        match self.exchange(method, path, token, body, deadline) {
            Ok((reply, close)) => {
                if close {
                    self.stream = None;
                }
                Ok(reply)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    pub fn exchange(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(Reply, bool), HttpError> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, remaining(deadline)?)
                .map_err(|e| io_error("connect", &e))?;
            s.set_nodelay(true)
                .map_err(|e| io_error("set_nodelay", &e))?;
            self.buf.clear();
            self.stream = Some(s);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(HttpError::Io("no connection".into()));
        };
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if method == "POST" || !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        let mut wire = req.into_bytes();
        wire.extend_from_slice(body);
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(|e| io_error("set_write_timeout", &e))?;
        stream.write_all(&wire).map_err(|e| io_error("write", &e))?;

        let mut chunk = vec![0u8; 64 << 10];
        let mut read_more = |stream: &mut TcpStream, buf: &mut Vec<u8>| -> Result<(), HttpError> {
            stream
                .set_read_timeout(Some(remaining(deadline)?))
                .map_err(|e| io_error("set_read_timeout", &e))?;
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => return Err(HttpError::Io("connection closed by the server".into())),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        return Ok(());
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_error("read", &e)),
                }
            }
        };
        let head_end = loop {
            if let Some(i) = find_head_end(&self.buf) {
                break i;
            }
            if self.buf.len() > HEAD_MAX {
                return Err(HttpError::Io("response head larger than 64 KiB".into()));
            }
            read_more(stream, &mut self.buf)?;
        };
        let (status, length, close) =
            parse_response_head(&self.buf[..head_end]).map_err(HttpError::Io)?;
        let total = head_end + 4 + length;
        self.buf.reserve(total.saturating_sub(self.buf.len()));
        while self.buf.len() < total {
            read_more(stream, &mut self.buf)?;
        }
        let body = self.buf[head_end + 4..total].to_vec();
        self.buf.drain(..total);
        Ok((Reply { status, body }, close))
    }
}

pub fn body_snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
