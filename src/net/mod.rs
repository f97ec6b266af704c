//! Outbound HTTP/1.1 for calls to model providers, on blocking std sockets from worker threads:
//! one request per connection, with a deadline, a stall limit and a cancel token enforced on
//! every read and write.
//!
//! Invariants:
//! - Nothing here blocks for more than about [`IO_SLICE`] past the deadline, the stall limit
//!   ("no bytes at all for this long") or a cancel. Reads and writes use a short socket
//!   timeout and re-check all three between slices, so no watchdog thread is needed; a cancel
//!   also shuts the socket down from the cancelling thread, so a blocked read returns at once.
//! - Name resolution and connecting run on a short-lived helper thread: a hung resolver or an
//!   unanswered SYN cannot hold the caller past those limits either. A helper that finishes
//!   after its caller gave up drops its socket.
//! - The cancel hook holds only a `Weak` of the socket (hooks are never removed from a token):
//!   dropping the [`Response`] closes the socket, and a hook firing later finds nothing.
//! - Every request carries `Connection: close`; there is no pooling, so nothing leaks from one
//!   call into the next. Whenever a call fails on a limit, the socket is shut at once.
//! - What the server sends is bounded: the head to 64 KiB, a chunk-size line to 4 KiB, bodies
//!   to what the caller asks for.

pub mod sse;

use crate::cancel::CancelToken;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long one blocking read or write may wait before the limits are checked again: the
/// worst-case lateness of a deadline or stall (a cancel is immediate).
pub const IO_SLICE: Duration = Duration::from_millis(100);
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const MAX_CHUNK_LINE: usize = 4096;
const READ_BUF: usize = 16 * 1024;

/// Why a call failed. Each variant is a distinct failover decision for the caller, so a limit
/// that fired is never reported as a generic I/O error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    InvalidUrl(String),
    Connect(String),
    ConnectTimeout,
    Deadline,
    Stalled,
    Cancelled,
    /// The server closed or reset the connection before the response was complete.
    Reset,
    Tls(String),
    Protocol(String),
    TooLarge,
    Io(String),
    /// The caller's `before_write` refused: nothing of the request was written.
    NotSent(String),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::InvalidUrl(m) => write!(f, "invalid url: {m}"),
            NetError::Connect(m) => write!(f, "cannot connect to {m}"),
            NetError::ConnectTimeout => write!(f, "connecting timed out"),
            NetError::Deadline => write!(
                f,
                "the call's deadline passed before the response was complete"
            ),
            NetError::Stalled => {
                write!(f, "the server sent nothing for longer than the stall limit")
            }
            NetError::Cancelled => write!(f, "cancelled"),
            NetError::Reset => write!(
                f,
                "the server closed the connection before the response was complete"
            ),
            NetError::Tls(m) => write!(f, "tls with {m}"),
            NetError::Protocol(m) => write!(f, "http protocol error: {m}"),
            NetError::TooLarge => write!(f, "the response body is larger than allowed"),
            NetError::Io(m) => write!(f, "i/o error with {m}"),
            NetError::NotSent(m) => write!(f, "not sent: {m}"),
        }
    }
}

impl std::error::Error for NetError {}

pub use crate::url::{Scheme, Url, UrlError};

impl From<UrlError> for NetError {
    fn from(e: UrlError) -> NetError {
        NetError::InvalidUrl(e.0)
    }
}

/// One outgoing request. `Host`, `Content-Length` and `Connection: close` are added by
/// [`send`]; any of those in `headers` is ignored.
#[derive(Clone)]
pub struct Request {
    pub method: &'static str,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &'static str, url: Url) -> Request {
        Request {
            method,
            url,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = body;
        self
    }
}

/// Credentials must not end up in logs through `{:?}`.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let secret = [
                    "authorization",
                    "x-api-key",
                    "api-key",
                    "proxy-authorization",
                ]
                .iter()
                .any(|s| k.eq_ignore_ascii_case(s));
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url.to_string())
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The limits one call runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For resolving and connecting (also capped by the deadline).
    pub connect_timeout: Duration,
    /// When the whole call, body included, must be over.
    pub deadline: Instant,
    /// The longest time without a single byte moving in either direction.
    pub stall: Duration,
}

impl Limits {
    /// Limits with the deadline `total` from now.
    pub fn from_now(total: Duration, connect_timeout: Duration, stall: Duration) -> Limits {
        Limits {
            connect_timeout,
            deadline: Instant::now() + total,
            stall,
        }
    }
}

/// A response whose head has been read; the body is read on demand, so a stream can be
/// consumed as it arrives. Dropping it closes the connection.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: Body,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// The first header named `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The next piece of the body as it arrives, `None` at its end. Every wait enforces the
    /// deadline, the stall limit and the cancel token.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        self.body.next_chunk()
    }

    /// The whole body; [`NetError::TooLarge`] (and the connection closed) past `max` bytes.
    pub fn read_to_end(&mut self, max: usize) -> Result<Vec<u8>, NetError> {
        if let Framing::Length(n) = self.body.framing
            && n > max as u64
        {
            return Err(self.body.wire.fail(NetError::TooLarge));
        }
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk()? {
            if out.len() + chunk.len() > max {
                return Err(self.body.wire.fail(NetError::TooLarge));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// At most the first `max` bytes of the body, for when a prefix is all that is wanted (an
    /// error body to classify): the rest is never read.
    pub fn read_up_to(&mut self, max: usize) -> Result<Vec<u8>, NetError> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(chunk) = self.next_chunk()? else {
                break;
            };
            let room = max - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Ok(out)
    }
}

/// Sends `req` and reads the response head. The body is left for the [`Response`] to read.
pub fn send(req: &Request, limits: &Limits, cancel: &CancelToken) -> Result<Response, NetError> {
    send_with(req, limits, cancel, &mut || Ok(()))
}

/// As [`send`], calling `before_write` once the connection (and its TLS handshake) is up and
/// just before the first byte of the request is written: up to then nothing of the request
/// can have reached the server. An error from it ends the send unsent, as
/// [`NetError::NotSent`].
pub fn send_with(
    req: &Request,
    limits: &Limits,
    cancel: &CancelToken,
    before_write: &mut dyn FnMut() -> io::Result<()>,
) -> Result<Response, NetError> {
    let head = request_head(req)?;
    let peer = format!("{}:{}", req.url.host(), req.url.port());
    let tcp = connect(&req.url, &peer, limits, cancel)?;
    let io_err = |e: io::Error| NetError::Io(format!("{peer}: {e}"));
    tcp.set_nodelay(true).map_err(io_err)?;
    tcp.set_read_timeout(Some(IO_SLICE)).map_err(io_err)?;
    tcp.set_write_timeout(Some(IO_SLICE)).map_err(io_err)?;
    let tcp = Arc::new(tcp);
    let hook = Arc::downgrade(&tcp);
    cancel.on_cancel(move || {
        if let Some(s) = hook.upgrade() {
            let _ = s.shutdown(Shutdown::Both);
        }
    });
    let conn = match req.url.scheme() {
        Scheme::Http => Conn::Plain(Sock(tcp.clone())),
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(req.url.host().to_string())
                .map_err(|e| NetError::Tls(format!("{peer}: invalid server name: {e}")))?;
            let tls = rustls::ClientConnection::new(tls_config(), name)
                .map_err(|e| NetError::Tls(format!("{peer}: {e}")))?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(tls, Sock(tcp.clone()))))
        }
    };
    let mut wire = Wire {
        conn,
        tcp,
        limits: *limits,
        cancel: cancel.clone(),
        last_progress: Instant::now(),
        peer,
    };
    wire.handshake()?;
    if let Err(e) = before_write() {
        return Err(wire.fail(NetError::NotSent(e.to_string())));
    }
    wire.write_all(&head)?;
    wire.write_all(&req.body)?;
    wire.flush()?;
    let (status, headers, rest) = read_head(&mut wire)?;
    let framing = framing(req.method, status, &headers).map_err(|e| wire.fail(e))?;
    Ok(Response {
        status,
        headers,
        body: Body {
            wire,
            buf: rest,
            framing,
        },
    })
}

/// Serializes the request line and headers, refusing anything that could split a header.
fn request_head(req: &Request) -> Result<Vec<u8>, NetError> {
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !is_token(req.method) {
        return Err(NetError::Protocol(format!(
            "invalid request method {:?}",
            req.method
        )));
    }
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method,
        req.url.path_and_query(),
        req.url.authority()
    );
    for (name, value) in &req.headers {
        if !is_token(name) {
            return Err(NetError::Protocol(format!("invalid header name {name:?}")));
        }
        // The value is not echoed: it may be a credential.
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(NetError::Protocol(format!(
                "header {name} contains a line break"
            )));
        }
        let ours = ["host", "content-length", "connection", "transfer-encoding"];
        if ours.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !req.body.is_empty() || !matches!(req.method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    Ok(head.into_bytes())
}

/// Resolves and connects on a helper thread, waiting for it in short slices so a cancel or the
/// deadline ends the wait even while `getaddrinfo` or `connect` is stuck.
fn connect(
    url: &Url,
    peer: &str,
    limits: &Limits,
    cancel: &CancelToken,
) -> Result<TcpStream, NetError> {
    let start = Instant::now();
    if cancel.is_cancelled() {
        return Err(NetError::Cancelled);
    }
    if start >= limits.deadline {
        return Err(NetError::Deadline);
    }
    let deadline_binds = limits.deadline <= start + limits.connect_timeout;
    let end = if deadline_binds {
        limits.deadline
    } else {
        start + limits.connect_timeout
    };
    let timed_out = || {
        if deadline_binds {
            NetError::Deadline
        } else {
            NetError::ConnectTimeout
        }
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let (host, port, label) = (url.host().to_string(), url.port(), peer.to_string());
    std::thread::Builder::new()
        .name("keel-connect".into())
        .spawn(move || {
            // The receiver may be gone (cancelled): the socket is then dropped here.
            let _ = tx.send(resolve_and_connect(&host, port, &label, end));
        })
        .map_err(|e| NetError::Io(format!("{peer}: cannot start a connect thread: {e}")))?;
    loop {
        if cancel.is_cancelled() {
            return Err(NetError::Cancelled);
        }
        let now = Instant::now();
        // A little grace past `end`: the helper's own connect timeout fires at `end` too, and
        // its precise error is better than ours.
        if now >= end + Duration::from_millis(50) {
            return Err(timed_out());
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Err(NetError::ConnectTimeout)) => return Err(timed_out()),
            Ok(r) => return r,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(NetError::Io(format!(
                    "{peer}: the connect thread ended without an answer"
                )));
            }
        }
    }
}

fn resolve_and_connect(
    host: &str,
    port: u16,
    peer: &str,
    end: Instant,
) -> Result<TcpStream, NetError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| NetError::Connect(format!("{peer}: cannot resolve the host: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(NetError::Connect(format!(
            "{peer}: the host resolves to no address"
        )));
    }
    let mut last = NetError::ConnectTimeout;
    for (i, addr) in addrs.iter().enumerate() {
        let now = Instant::now();
        if now >= end {
            return Err(NetError::ConnectTimeout);
        }
        // Share what is left among the remaining addresses, so one black-holed address does
        // not use up the whole budget.
        let left = (addrs.len() - i) as u32;
        let slice = ((end - now) / left).max(Duration::from_millis(1));
        match TcpStream::connect_timeout(addr, slice) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                last = NetError::ConnectTimeout;
            }
            Err(e) => last = NetError::Connect(format!("{peer} ({addr}): {e}")),
        }
    }
    Err(last)
}

/// One client configuration for the process: building the root store is not free.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            // The ring provider supports the default versions; this cannot fail.
            .expect("ring supports the default tls versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// The socket, shared by the connection and (as a `Weak`) the cancel hook.
struct Sock(Arc<TcpStream>);

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

enum Conn {
    Plain(Sock),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Sock>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// A connection plus the limits it runs under. Every read and write goes through here.
struct Wire {
    conn: Conn,
    tcp: Arc<TcpStream>,
    limits: Limits,
    cancel: CancelToken,
    /// The last time a byte moved either way: the stall limit counts from here.
    last_progress: Instant,
    /// `host:port`, for error messages.
    peer: String,
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.shut();
    }
}

impl Wire {
    fn shut(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    /// Closes the connection and hands back `e`: after any failure the socket is useless.
    fn fail(&self, e: NetError) -> NetError {
        self.shut();
        e
    }

    fn check(&self) -> Result<(), NetError> {
        if self.cancel.is_cancelled() {
            return Err(self.fail(NetError::Cancelled));
        }
        let now = Instant::now();
        if now >= self.limits.deadline {
            return Err(self.fail(NetError::Deadline));
        }
        if now.saturating_duration_since(self.last_progress) >= self.limits.stall {
            return Err(self.fail(NetError::Stalled));
        }
        Ok(())
    }

    fn is_slice_timeout(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        )
    }

    fn map_io(&self, e: io::Error) -> NetError {
        // A cancel shuts the socket, which surfaces as EOF or an error: report the cause.
        if self.cancel.is_cancelled() {
            return self.fail(NetError::Cancelled);
        }
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let err = match (tls, e.kind()) {
            (Some(t), _) => NetError::Tls(format!("{}: {t}", self.peer)),
            (
                None,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof,
            ) => NetError::Reset,
            _ => NetError::Io(format!("{}: {e}", self.peer)),
        };
        self.fail(err)
    }

    /// Appends what arrives next to `buf`; `Ok(0)` at end of stream.
    fn read_into(&mut self, buf: &mut Vec<u8>) -> Result<usize, NetError> {
        let mut tmp = [0u8; READ_BUF];
        loop {
            self.check()?;
            match self.conn.read(&mut tmp) {
                Ok(0) => {
                    if self.cancel.is_cancelled() {
                        return Err(self.fail(NetError::Cancelled));
                    }
                    return Ok(0);
                }
                Ok(n) => {
                    self.last_progress = Instant::now();
                    buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if Self::is_slice_timeout(&e) => {}
                Err(e) => return Err(self.map_io(e)),
            }
        }
    }

    /// Completes a TLS handshake (a no-op on plain TCP), so that what is written next is the
    /// request itself.
    fn handshake(&mut self) -> Result<(), NetError> {
        loop {
            self.check()?;
            let Conn::Tls(tls) = &mut self.conn else {
                return Ok(());
            };
            if !tls.conn.is_handshaking() {
                return Ok(());
            }
            let tls = &mut **tls;
            match tls.conn.complete_io(&mut tls.sock) {
                Ok((read, written)) => {
                    if read + written > 0 {
                        self.last_progress = Instant::now();
                    }
                }
                Err(e) if Self::is_slice_timeout(&e) => {}
                Err(e) => return Err(self.map_io(e)),
            }
        }
    }

    /// Like `write_all`, but a timed-out slice is retried with its offset kept (std's
    /// `write_all` would lose track of what was written).
    fn write_all(&mut self, mut data: &[u8]) -> Result<(), NetError> {
        while !data.is_empty() {
            self.check()?;
            match self.conn.write(data) {
                Ok(0) => return Err(self.fail(NetError::Reset)),
                Ok(n) => {
                    self.last_progress = Instant::now();
                    data = &data[n..];
                }
                Err(e) if Self::is_slice_timeout(&e) => {}
                Err(e) => return Err(self.map_io(e)),
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), NetError> {
        loop {
            self.check()?;
            match self.conn.flush() {
                Ok(()) => return Ok(()),
                Err(e) if Self::is_slice_timeout(&e) => {}
                Err(e) => return Err(self.map_io(e)),
            }
        }
    }
}

type Head = (u16, Vec<(String, String)>, Vec<u8>);

/// Reads up to the end of the final response head (skipping `1xx` interim responses); returns
/// the status, the headers and the body bytes that came with the head.
fn read_head(wire: &mut Wire) -> Result<Head, NetError> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        if !buf.is_empty() {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let headers = resp
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).trim().to_string();
                            (h.name.to_string(), value)
                        })
                        .collect();
                    buf.drain(..len);
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    return Ok((status, headers, buf));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(wire.fail(NetError::Protocol(format!(
                        "{}: malformed response head: {e}",
                        wire.peer
                    ))));
                }
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(wire.fail(NetError::Protocol(format!(
                "{}: response head larger than {} KiB",
                wire.peer,
                MAX_HEAD / 1024
            ))));
        }
        if wire.read_into(&mut buf)? == 0 {
            return Err(wire.fail(NetError::Reset));
        }
    }
}

/// How the end of the body is known (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(ChunkState),
    UntilClose,
    Done,
}

/// Where a chunked body stands: `Size` → `Data` → `DataEnd` → `Size` … until a zero size,
/// then `Trailers` until an empty line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

fn framing(method: &str, status: u16, headers: &[(String, String)]) -> Result<Framing, NetError> {
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Done);
    }
    fn values<'a>(headers: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
    if let Some(last) = values(headers, "transfer-encoding").last() {
        // Any other final coding means the body runs until the connection closes.
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked(ChunkState::Size)
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for v in values(headers, "content-length") {
        let n: u64 = v
            .parse()
            .map_err(|_| NetError::Protocol(format!("invalid content-length {v:?}")))?;
        if length.is_some_and(|l| l != n) {
            return Err(NetError::Protocol(
                "conflicting content-length headers".into(),
            ));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

struct Body {
    wire: Wire,
    /// Bytes read from the socket but not yet consumed.
    buf: Vec<u8>,
    framing: Framing,
}

impl Body {
    /// Reads more into `buf`; end of stream here means the body was cut short.
    fn fill(&mut self) -> Result<(), NetError> {
        if self.wire.read_into(&mut self.buf)? == 0 {
            return Err(self.wire.fail(NetError::Reset));
        }
        Ok(())
    }

    /// Takes up to `max` bytes from the front of `buf`.
    fn take(&mut self, max: u64) -> Vec<u8> {
        let n = self
            .buf
            .len()
            .min(usize::try_from(max).unwrap_or(usize::MAX));
        if n == self.buf.len() {
            std::mem::take(&mut self.buf)
        } else {
            self.buf.drain(..n).collect()
        }
    }

    /// One line (without its line ending) from the front of `buf`, reading as needed.
    fn line(&mut self) -> Result<Vec<u8>, NetError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(self.wire.fail(NetError::Protocol(format!(
                    "{}: chunk line longer than {MAX_CHUNK_LINE} bytes",
                    self.wire.peer
                ))));
            }
            self.fill()?;
        }
    }

    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::UntilClose => {
                    if self.buf.is_empty() {
                        match self.wire.read_into(&mut self.buf) {
                            Ok(0) => {
                                self.framing = Framing::Done;
                                return Ok(None);
                            }
                            Ok(_) => {}
                            // Many TLS servers close without close_notify; with no framing at
                            // all, that is the end of the body.
                            Err(NetError::Reset) => {
                                self.framing = Framing::Done;
                                return Ok(None);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    return Ok(Some(std::mem::take(&mut self.buf)));
                }
                Framing::Length(left) => {
                    if self.buf.is_empty() {
                        self.fill()?;
                    }
                    let data = self.take(left);
                    let left = left - data.len() as u64;
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(Some(data));
                }
                Framing::Chunked(ChunkState::Size) => {
                    let line = self.line()?;
                    let text = String::from_utf8_lossy(&line);
                    let size = text.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        self.wire.fail(NetError::Protocol(format!(
                            "{}: invalid chunk size {size:?}",
                            self.wire.peer
                        )))
                    })?;
                    self.framing = Framing::Chunked(if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    });
                }
                Framing::Chunked(ChunkState::Data(left)) => {
                    if self.buf.is_empty() {
                        self.fill()?;
                    }
                    let data = self.take(left);
                    let left = left - data.len() as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    });
                    return Ok(Some(data));
                }
                Framing::Chunked(ChunkState::DataEnd) => {
                    if !self.line()?.is_empty() {
                        return Err(self.wire.fail(NetError::Protocol(format!(
                            "{}: chunk data longer than its size",
                            self.wire.peer
                        ))));
                    }
                    self.framing = Framing::Chunked(ChunkState::Size);
                }
                Framing::Chunked(ChunkState::Trailers) => {
                    if self.line()?.is_empty() {
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::CancelReason;
    use std::net::TcpListener;
    use std::thread;

    /// Fails the test instead of hanging it.
    /// A panic in `f` fails the test with its own message.
    #[track_caller]
    fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let h = thread::spawn(f);
        let start = Instant::now();
        while !h.is_finished() {
            assert!(
                start.elapsed() < limit,
                "test did not finish within {limit:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Serves one connection with `script` after reading the request (head and body); returns
    /// the URL to call and what the server received.
    fn serve(
        script: impl FnOnce(&mut TcpStream) + Send + 'static,
    ) -> (Url, mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut tmp = [0u8; 4096];
            loop {
                if let Some(end) = find(&req, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&tmp[..n]),
                }
            }
            let _ = tx.send(req);
            script(&mut s);
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/v1/x")).unwrap();
        (url, rx)
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    fn limits(total_ms: u64, stall_ms: u64) -> Limits {
        Limits::from_now(
            Duration::from_millis(total_ms),
            Duration::from_secs(2),
            Duration::from_millis(stall_ms),
        )
    }

    fn post(url: Url) -> Request {
        Request::new("POST", url)
            .header("Content-Type", "application/json")
            .body(b"{\"a\":1}".to_vec())
    }

    /// Waits until the client has closed, so a script's socket outlives the test's reads.
    fn wait_closed(s: &mut TcpStream) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    }

    #[test]
    fn sends_the_request_and_reads_a_content_length_body() {
        let (url, got) = serve(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world")
                .unwrap();
            wait_closed(s);
        });
        let mut resp = bounded(Duration::from_secs(10), move || {
            send(&post(url), &limits(5000, 2000), &CancelToken::new()).unwrap()
        });
        assert_eq!(resp.status, 200);
        assert!(resp.is_success());
        assert_eq!(resp.header("content-type"), Some("text/plain"));
        assert_eq!(resp.read_to_end(1024).unwrap(), b"hello world");
        assert_eq!(resp.next_chunk().unwrap(), None);
        let req = String::from_utf8(got.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
        assert!(req.starts_with("POST /v1/x HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req}");
        assert!(req.contains("\r\nContent-Length: 7\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
    }

    /// `before_write` runs once connected, before any request byte: refusing there leaves
    /// the server with a connection and nothing on it.
    #[test]
    fn before_write_runs_just_before_the_first_byte_and_can_stop_the_request() {
        let (url, got) = serve(|_| {});
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let r = bounded(Duration::from_secs(10), move || {
            let mut refuse = || {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(io::Error::other("disk full"))
            };
            send_with(
                &post(url),
                &limits(5000, 2000),
                &CancelToken::new(),
                &mut refuse,
            )
            .map(|r| r.status)
        });
        assert_eq!(r, Err(NetError::NotSent("disk full".into())));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(got.recv_timeout(Duration::from_secs(5)).unwrap(), b"");
    }

    /// Over TLS it runs after the handshake: a server that breaks off the handshake never
    /// gets a request, and the hook is not called.
    #[test]
    fn before_write_waits_for_the_tls_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = [0u8; 512];
            let _ = s.read(&mut hello);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let url = Url::parse(&format!("https://127.0.0.1:{port}/x")).unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let r = bounded(Duration::from_secs(10), move || {
            let mut mark = || {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            };
            send_with(
                &post(url),
                &limits(5000, 2000),
                &CancelToken::new(),
                &mut mark,
            )
            .map(|r| r.status)
        });
        assert!(
            matches!(r, Err(NetError::Tls(_) | NetError::Reset)),
            "{r:?}"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn reads_a_chunked_body_as_it_arrives() {
        let (url, _got) = serve(|s| {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel")
                .unwrap();
            thread::sleep(Duration::from_millis(50));
            s.write_all(b"lo\r\n6\r\n worl").unwrap();
            thread::sleep(Duration::from_millis(50));
            s.write_all(b"d\r\n0\r\nX-Trailer: yes\r\n\r\n").unwrap();
            wait_closed(s);
        });
        let got = bounded(Duration::from_secs(10), move || {
            let mut resp = send(&post(url), &limits(5000, 2000), &CancelToken::new()).unwrap();
            assert_eq!(resp.status, 200);
            let mut pieces = Vec::new();
            while let Some(c) = resp.next_chunk().unwrap() {
                pieces.push(c);
            }
            pieces
        });
        assert!(got.len() >= 3, "data is handed out as it arrives: {got:?}");
        assert_eq!(got.concat(), b"hello world");
    }

    #[test]
    fn reads_until_close_without_framing() {
        let (url, _got) = serve(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it").unwrap();
            let _ = s.shutdown(Shutdown::Both);
        });
        let body = bounded(Duration::from_secs(10), move || {
            let mut resp = send(&post(url), &limits(5000, 2000), &CancelToken::new()).unwrap();
            resp.read_to_end(100).unwrap()
        });
        assert_eq!(body, b"all of it");
    }

    #[test]
    fn a_body_over_the_limit_is_too_large() {
        let (url, _got) = serve(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                .unwrap();
            s.write_all(&[b'x'; 100]).unwrap();
            wait_closed(s);
        });
        let (err, prefix) = bounded(Duration::from_secs(10), move || {
            let l = limits(5000, 2000);
            let mut resp = send(&post(url.clone()), &l, &CancelToken::new()).unwrap();
            let err = resp.read_to_end(99).unwrap_err();
            drop(resp);
            let (url, _g) = serve(|s| {
                s.write_all(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n")
                    .unwrap();
                s.write_all(&[b'y'; 100]).unwrap();
                s.write_all(b"\r\n0\r\n\r\n").unwrap();
                wait_closed(s);
            });
            let mut resp = send(&post(url), &l, &CancelToken::new()).unwrap();
            (err, resp.read_up_to(10).unwrap())
        });
        assert_eq!(err, NetError::TooLarge);
        assert_eq!(prefix, b"yyyyyyyyyy");
    }

    #[test]
    fn stall_before_the_first_byte() {
        let (url, _got) = serve(wait_closed);
        let (err, took) = bounded(Duration::from_secs(10), move || {
            let t = Instant::now();
            let err = send(&post(url), &limits(5000, 300), &CancelToken::new()).unwrap_err();
            (err, t.elapsed())
        });
        assert_eq!(err, NetError::Stalled);
        assert!(took < Duration::from_millis(800), "took {took:?}");
        assert!(took >= Duration::from_millis(300), "took {took:?}");
    }

    #[test]
    fn stall_mid_body() {
        let (url, _got) = serve(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                .unwrap();
            wait_closed(s);
        });
        let (first, err, took) = bounded(Duration::from_secs(10), move || {
            let mut resp = send(&post(url), &limits(5000, 300), &CancelToken::new()).unwrap();
            let first = resp.next_chunk().unwrap();
            let t = Instant::now();
            let err = resp.next_chunk().unwrap_err();
            (first, err, t.elapsed())
        });
        assert_eq!(first.as_deref(), Some(&b"abc"[..]));
        assert_eq!(err, NetError::Stalled);
        assert!(took < Duration::from_millis(800), "took {took:?}");
    }

    #[test]
    fn deadline_while_bytes_still_trickle() {
        let (url, _got) = serve(|s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
            for _ in 0..100 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let (err, took) = bounded(Duration::from_secs(10), move || {
            let t = Instant::now();
            let mut resp = send(&post(url), &limits(500, 300), &CancelToken::new()).unwrap();
            let err = resp.read_to_end(10_000).unwrap_err();
            (err, t.elapsed())
        });
        assert_eq!(err, NetError::Deadline);
        assert!(took < Duration::from_millis(1000), "took {took:?}");
    }

    #[test]
    fn cancel_from_another_thread_mid_stream() {
        let (url, _got) = serve(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
                .unwrap();
            wait_closed(s);
        });
        let token = CancelToken::new();
        let t2 = token.clone();
        let (err, late) = bounded(Duration::from_secs(10), move || {
            let mut resp = send(&post(url), &limits(5000, 4000), &t2).unwrap();
            assert_eq!(resp.next_chunk().unwrap().as_deref(), Some(&b"abc"[..]));
            let fired = Arc::new(std::sync::Mutex::new(None));
            let f2 = fired.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(200));
                *f2.lock().unwrap() = Some(Instant::now());
                t2.cancel(CancelReason::Client);
            });
            let err = resp.next_chunk().unwrap_err();
            let at = fired.lock().unwrap().expect("cancel fired");
            (err, at.elapsed())
        });
        assert_eq!(err, NetError::Cancelled);
        assert!(
            late < Duration::from_millis(100),
            "returned {late:?} after cancel"
        );
        assert!(token.is_cancelled());
    }

    #[test]
    fn an_already_cancelled_token_sends_nothing() {
        let token = CancelToken::new();
        token.cancel(CancelReason::Drain);
        let url = Url::parse("http://127.0.0.1:9/").unwrap();
        let err = send(&post(url), &limits(1000, 1000), &token).unwrap_err();
        assert_eq!(err, NetError::Cancelled);
    }

    #[test]
    fn a_dropped_connection_is_a_reset() {
        let (url, _got) = serve(|s| {
            let _ = s.shutdown(Shutdown::Both);
        });
        let err = bounded(Duration::from_secs(10), move || {
            send(&post(url), &limits(5000, 2000), &CancelToken::new()).unwrap_err()
        });
        assert_eq!(err, NetError::Reset);
    }

    #[test]
    fn a_body_cut_short_is_a_reset() {
        let (url, _got) = serve(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                .unwrap();
        });
        let err = bounded(Duration::from_secs(10), move || {
            let mut resp = send(&post(url), &limits(5000, 2000), &CancelToken::new()).unwrap();
            resp.read_to_end(100).unwrap_err()
        });
        assert_eq!(err, NetError::Reset);
    }

    #[test]
    fn refused_and_malformed_answers() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let err = bounded(Duration::from_secs(10), move || {
            send(&post(url), &limits(5000, 2000), &CancelToken::new()).unwrap_err()
        });
        assert!(
            matches!(&err, NetError::Connect(m) if m.contains("127.0.0.1")),
            "{err}"
        );

        let (url, _got) = serve(|s| {
            s.write_all(b"SMTP ready\r\n\r\n").unwrap();
            wait_closed(s);
        });
        let err = bounded(Duration::from_secs(10), move || {
            send(&post(url), &limits(5000, 2000), &CancelToken::new()).unwrap_err()
        });
        assert!(matches!(err, NetError::Protocol(_)), "{err}");

        let (url, _got) = serve(|s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
            let _ = s.write_all(&vec![b'x'; MAX_HEAD + 10]);
            wait_closed(s);
        });
        let err = bounded(Duration::from_secs(10), move || {
            send(&post(url), &limits(5000, 2000), &CancelToken::new()).unwrap_err()
        });
        assert!(matches!(err, NetError::Protocol(_)), "{err}");
    }

    #[test]
    fn tls_failures_are_tls_errors_and_a_silent_handshake_stalls() {
        // A plain-HTTP server behind an https URL: the handshake gets garbage back.
        let url = serve_raw(|s| {
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            wait_closed(s);
        });
        let https = Url::parse(&url.to_string().replace("http://", "https://")).unwrap();
        let err = bounded(Duration::from_secs(10), move || {
            send(&post(https), &limits(5000, 2000), &CancelToken::new()).unwrap_err()
        });
        assert!(
            matches!(&err, NetError::Tls(m) if m.contains("127.0.0.1")),
            "{err}"
        );

        let url = serve_raw(wait_closed);
        let https = Url::parse(&url.to_string().replace("http://", "https://")).unwrap();
        let (err, took) = bounded(Duration::from_secs(10), move || {
            let t = Instant::now();
            let err = send(&post(https), &limits(5000, 300), &CancelToken::new()).unwrap_err();
            (err, t.elapsed())
        });
        assert_eq!(err, NetError::Stalled);
        assert!(took < Duration::from_millis(800), "took {took:?}");
    }

    /// Like [`serve`] but hands over the connection before reading anything.
    fn serve_raw(script: impl FnOnce(&mut TcpStream) + Send + 'static) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            script(&mut s);
        });
        Url::parse(&format!("http://127.0.0.1:{port}/v1/x")).unwrap()
    }

    #[test]
    fn header_injection_is_refused_and_secrets_stay_out_of_debug() {
        let url = Url::parse("http://127.0.0.1:9/").unwrap();
        let req = post(url).header("Authorization", "Bearer sk-1\r\nX-Evil: 1");
        let err = request_head(&req).unwrap_err();
        assert!(!err.to_string().contains("sk-1"), "{err}");
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("sk-1") && dbg.contains("<redacted>"), "{dbg}");
    }
}
