//! WebSocket conformance over raw sockets: the case groups of the Autobahn test suite (which
//! cannot run here) — 1 framing, 2 ping/pong, 3 reserved bits, 4 opcodes, 5 fragmentation,
//! 6 UTF-8, 7 close handling, 9 limits, 12/13 compression — with frames built by hand, so
//! anything can be sent. Each case runs on a fresh connection, both before `connect` (where
//! the message is a `connect`) and after it (where it is `health`), unless it only makes
//! sense in one of them.
//!
//! What keel does, per RFC 6455 and for OpenClaw's clients (which speak JSON in text frames):
//! protocol violations close 1002, invalid UTF-8 (in text or in a close reason) 1007, binary
//! data 1003 (keel accepts only text), a message above the limit 1009 after `connect` and
//! 1008 before it (the pre-auth limit is policy), and a frame that is not a valid request
//! 1008. After a close frame keel sends nothing but EOF.

use crate::common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;

pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The limit the conformance gateway runs with (the smallest allowed: 64 KiB is also the
/// pre-auth limit, so this one is above it).
const MAX_PAYLOAD: usize = 128 << 10;
const PRE_AUTH_MAX: usize = 64 << 10;

/// A client frame as built by hand: anything goes.
#[derive(Clone, Debug)]
pub struct F {
    fin: bool,
    rsv: u8,
    op: u8,
    payload: Vec<u8>,
    masked: bool,
    /// A length to announce instead of the payload's (the payload is not sent).
    announce: Option<u64>,
}

impl F {
    pub fn new(op: u8, payload: impl AsRef<[u8]>) -> F {
        F {
            fin: true,
            rsv: 0,
            op,
            payload: payload.as_ref().to_vec(),
            masked: true,
            announce: None,
        }
    }

    pub fn text(payload: impl AsRef<[u8]>) -> F {
        F::new(TEXT, payload)
    }

    /// Not the last frame of its message.
    pub fn more(mut self) -> F {
        self.fin = false;
        self
    }

    pub fn rsv(mut self, bits: u8) -> F {
        self.rsv = bits;
        self
    }

    pub fn unmasked(mut self) -> F {
        self.masked = false;
        self
    }

    /// A header announcing `len` bytes (with a 64-bit length), and no payload.
    pub fn announcing(mut self, len: u64) -> F {
        self.announce = Some(len);
        self
    }

    /// Opcode, flags, length and the first payload bytes, for failure messages.
    fn describe(&self) -> String {
        let head = &self.payload[..self.payload.len().min(8)];
        format!(
            "op {:#x} fin {} rsv {} len {} {head:02x?}",
            self.op,
            self.fin,
            self.rsv,
            self.announce.unwrap_or(self.payload.len() as u64)
        )
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.op & 0xF)];
        let mask_bit = if self.masked { 0x80 } else { 0 };
        let n = self.payload.len();
        if let Some(len) = self.announce {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        } else if n > 0xFFFF {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        } else if n >= 126 {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(mask_bit | n as u8);
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if self.masked {
            out.extend_from_slice(&key);
        }
        if self.announce.is_none() {
            let k = if self.masked { key } else { [0; 4] };
            out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        out
    }
}

pub fn close(code: u16, reason: &[u8]) -> F {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    F::new(CLOSE, p)
}

/// A message from keel (fragments reassembled).
#[derive(Debug, PartialEq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Code (1005 when the frame had none) and reason.
    Close(u16, Vec<u8>),
    /// The connection ended (EOF or reset).
    End(String),
}

/// A WebSocket client over a plain socket, for sending anything.
pub struct RawWs {
    pub s: TcpStream,
    rbuf: Vec<u8>,
    /// A close frame has been sent: no more frames may follow.
    sent_close: bool,
}

impl RawWs {
    /// Sends the upgrade request with `extra` header lines; returns the socket and the head of
    /// the answer.
    #[track_caller]
    pub fn upgrade(addr: &str, extra: &str) -> (RawWs, String) {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(BOUND)).unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut ws = RawWs {
            s,
            rbuf: Vec::new(),
            sent_close: false,
        };
        let head = loop {
            if let Some(end) = ws.rbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.rbuf[..end + 4]).into_owned();
                ws.rbuf.drain(..end + 4);
                break head;
            }
            assert!(ws.fill(), "no answer to the upgrade");
        };
        (ws, head)
    }

    /// Upgraded, with the challenge read.
    #[track_caller]
    pub fn open(addr: &str) -> RawWs {
        let (mut ws, head) = RawWs::upgrade(addr, "");
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        match ws.read() {
            Msg::Text(t) => assert!(t.contains("connect.challenge"), "{t}"),
            other => panic!("expected the challenge, got {other:?}"),
        }
        ws
    }

    /// Past the `connect` handshake.
    #[track_caller]
    pub fn authed(g: &Gateway) -> RawWs {
        let mut ws = RawWs::open(&g.addr());
        ws.send(&[F::text(message(&g.token, false, b""))]);
        let res = ws.res();
        assert_eq!(res["ok"], true, "{res}");
        ws
    }

    /// Reads more bytes; false at EOF, on a reset or when the read timeout passed.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 << 10];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Writes the frames in one go.
    pub fn send(&mut self, frames: &[F]) {
        self.sent_close |= frames.iter().any(|f| f.op == CLOSE);
        let bytes: Vec<u8> = frames.iter().flat_map(F::bytes).collect();
        // The server may have closed already: what it answered is what the test checks.
        let _ = self.s.write_all(&bytes);
    }

    /// One frame: (fin, rsv, opcode, payload), or None when the connection ended.
    fn frame(&mut self) -> Result<(bool, u8, u8, Vec<u8>), String> {
        loop {
            let b = &self.rbuf;
            if b.len() >= 2 {
                assert_eq!(b[1] & 0x80, 0, "a server frame must not be masked");
                let (len, at) = match b[1] & 0x7F {
                    126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                    127 if b.len() >= 10 => (
                        u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if at > 0 && b.len() >= at + len {
                    let f = (b[0] & 0x80 != 0, (b[0] >> 4) & 7, b[0] & 0xF);
                    let payload = b[at..at + len].to_vec();
                    self.rbuf.drain(..at + len);
                    return Ok((f.0, f.1, f.2, payload));
                }
            }
            if !self.fill() {
                let mut probe = [0u8; 1];
                let why = match self.s.read(&mut probe) {
                    Ok(0) => "eof".to_string(),
                    Ok(_) => "more data?".to_string(),
                    Err(e) => format!("{:?}", e.kind()),
                };
                return Err(why);
            }
        }
    }

    /// The next message, control frames included.
    pub fn read(&mut self) -> Msg {
        let mut text: Option<(u8, Vec<u8>)> = None;
        loop {
            let (fin, rsv, op, payload) = match self.frame() {
                Ok(f) => f,
                Err(why) => return Msg::End(why),
            };
            assert_eq!(rsv, 0, "keel negotiates no extension");
            match op {
                PING => return Msg::Ping(payload),
                PONG => return Msg::Pong(payload),
                CLOSE => {
                    let code = match payload.len() {
                        0 => 1005,
                        _ => u16::from_be_bytes([payload[0], payload[1]]),
                    };
                    return Msg::Close(code, payload.get(2..).unwrap_or_default().to_vec());
                }
                TEXT | BINARY if text.is_none() => text = Some((op, payload)),
                CONT if text.is_some() => text.as_mut().unwrap().1.extend_from_slice(&payload),
                other => panic!("unexpected opcode {other:#x} from keel"),
            }
            if fin {
                let (op, data) = text.take().unwrap();
                return match op {
                    TEXT => Msg::Text(String::from_utf8(data).expect("keel sends UTF-8")),
                    _ => Msg::Binary(data),
                };
            }
        }
    }

    /// The next message that is not an event (ticks may come at any time).
    pub fn next(&mut self) -> Msg {
        loop {
            match self.read() {
                Msg::Text(t) if t.starts_with(r#"{"type":"event""#) => {}
                m => return m,
            }
        }
    }

    /// The next `res` (skipping events); fails on anything else.
    #[track_caller]
    pub fn res(&mut self) -> Value {
        match self.next() {
            Msg::Text(t) => serde_json::from_str(&t).expect("JSON"),
            other => panic!("expected a res, got {other:?}"),
        }
    }

    /// Expects a close frame with `code` next, answers it (unless the client closed first:
    /// then keel must end the connection on its own), and expects the connection to end with
    /// nothing after the close frame.
    #[track_caller]
    pub fn expect_close(&mut self, code: u16) {
        match self.next() {
            Msg::Close(c, reason) => {
                assert_eq!(
                    c,
                    code,
                    "close reason {:?}",
                    String::from_utf8_lossy(&reason)
                );
                assert!(std::str::from_utf8(&reason).is_ok(), "reason is UTF-8");
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
        if !self.sent_close {
            self.send(&[close(code, b"")]);
        }
        match self.read() {
            Msg::End(why) => assert_eq!(why, "eof", "keel ends the connection cleanly"),
            other => panic!("expected the end after close {code}, got {other:?}"),
        }
    }
}

/// A request that is exactly `size` bytes long (padded), or the smallest one: `connect` before
/// the handshake, `health` after it.
pub fn message(token: &str, authed: bool, pad: &[u8]) -> Vec<u8> {
    let head = if authed {
        r#"{"type":"req","id":"c","method":"health","params":{"pad":""#.to_string()
    } else {
        format!(
            r#"{{"type":"req","id":"c","method":"connect","params":{{"minProtocol":3,"maxProtocol":4,"auth":{{"token":"{token}"}},"pad":""#
        )
    };
    let mut m = head.into_bytes();
    m.extend_from_slice(pad);
    m.extend_from_slice(br#""}}"#);
    m
}

struct Ctx<'a> {
    token: &'a str,
    authed: bool,
}

impl Ctx<'_> {
    /// A valid request of exactly `size` bytes.
    fn sized(&self, size: usize) -> Vec<u8> {
        let base = message(self.token, self.authed, b"").len();
        assert!(size >= base, "a request needs at least {base} bytes");
        message(self.token, self.authed, &vec![b'x'; size - base])
    }

    fn msg(&self) -> Vec<u8> {
        message(self.token, self.authed, b"")
    }

    fn with_pad(&self, pad: &[u8]) -> Vec<u8> {
        message(self.token, self.authed, pad)
    }

    /// The frame-size limit in this phase.
    fn limit(&self) -> usize {
        if self.authed {
            MAX_PAYLOAD
        } else {
            PRE_AUTH_MAX
        }
    }
}

/// What keel should do next.
#[derive(Debug, Clone)]
enum Exp {
    /// The request (id "c") is answered with `ok: true`.
    Answer,
    Pong(Vec<u8>),
    Close(u16),
    /// Too large: 1009 after `connect`, 1008 (policy) before it.
    TooBig,
}
use Exp::*;

#[derive(Clone, Copy, PartialEq)]
enum When {
    Both,
    Authed,
}

/// What a case sends, given the phase.
type Frames = dyn Fn(&Ctx) -> Vec<F>;

struct Case {
    name: &'static str,
    when: When,
    send: Box<Frames>,
    expect: Vec<Exp>,
}

fn case(name: &'static str, send: impl Fn(&Ctx) -> Vec<F> + 'static, expect: Vec<Exp>) -> Case {
    Case {
        name,
        when: When::Both,
        send: Box::new(send),
        expect,
    }
}

fn authed_only(mut c: Case) -> Case {
    c.when = When::Authed;
    c
}

/// Runs every case on a fresh connection, before and after `connect`. A case that does not
/// end in a close must leave the connection usable (a ping is still answered).
fn run(g: &Gateway, cases: &[Case]) {
    for authed in [false, true] {
        let ctx = Ctx {
            token: &g.token,
            authed,
        };
        for c in cases.iter().filter(|c| authed || c.when == When::Both) {
            let phase = if authed {
                "after connect"
            } else {
                "before connect"
            };
            let what = format!("case {:?} {phase}", c.name);
            let mut ws = if authed {
                RawWs::authed(g)
            } else {
                RawWs::open(&g.addr())
            };
            let frames = (c.send)(&ctx);
            let sent: Vec<String> = frames.iter().map(F::describe).collect();
            ws.send(&frames);
            let check = std::panic::AssertUnwindSafe(|| {
                for e in &c.expect {
                    match e {
                        Answer => {
                            let res = ws.res();
                            assert_eq!(
                                (&res["id"], &res["ok"]),
                                (&json!("c"), &json!(true)),
                                "{res}"
                            );
                        }
                        Pong(p) => assert_eq!(ws.next(), Msg::Pong(p.clone())),
                        Close(code) => ws.expect_close(*code),
                        TooBig => ws.expect_close(if authed { 1009 } else { 1008 }),
                    }
                }
                if !matches!(c.expect.last(), Some(Close(_) | TooBig)) {
                    ws.send(&[F::new(PING, b"alive")]);
                    assert_eq!(ws.next(), Msg::Pong(b"alive".to_vec()), "still open");
                }
            });
            if let Err(e) = std::panic::catch_unwind(check) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{what} (sent {}): {msg}", sent.join(", "));
            }
        }
    }
    assert_eq!(g.get("/healthz").status, 200);
    assert_eq!(g.metric("keel_reactor_handler_panics_total"), Some(0.0));
}

fn gateway() -> Gateway {
    Gateway::start(
        Opts::default().config(json!({"gateway": {"limits": {"maxPayloadBytes": MAX_PAYLOAD}}})),
    )
}

/// Splits a message into frames of at most `n` bytes.
fn fragments(data: &[u8], n: usize) -> Vec<F> {
    let chunks: Vec<&[u8]> = data.chunks(n).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = F::new(if i == 0 { TEXT } else { CONT }, c);
            if i == last { f } else { f.more() }
        })
        .collect()
}

/// Group 1 (framing) and 9 (limits): text messages of every length encoding and at the
/// limits; binary data is refused.
#[test]
fn framing_and_limits() {
    let g = gateway();
    let cases = vec![
        authed_only(case(
            "text 125",
            |c| vec![F::text(c.sized(125))],
            vec![Answer],
        )),
        authed_only(case(
            "text 126",
            |c| vec![F::text(c.sized(126))],
            vec![Answer],
        )),
        authed_only(case(
            "text 127",
            |c| vec![F::text(c.sized(127))],
            vec![Answer],
        )),
        case(
            "text 65535",
            |c| vec![F::text(c.sized(65535))],
            vec![Answer],
        ),
        case(
            "text at the limit",
            |c| vec![F::text(c.sized(c.limit()))],
            vec![Answer],
        ),
        case(
            "text one byte above the limit",
            |c| vec![F::text(c.sized(c.limit() + 1))],
            vec![TooBig],
        ),
        case(
            "fragmented text at the limit",
            |c| fragments(&c.sized(c.limit()), 1000),
            vec![Answer],
        ),
        case(
            "fragmented text above the limit",
            |c| fragments(&c.sized(c.limit() + 1), 1000),
            vec![TooBig],
        ),
        case(
            "a 64-bit length of 2^40 is refused before its payload",
            |_| vec![F::text(b"").announcing(1 << 40)],
            vec![TooBig],
        ),
        case(
            "a 64-bit length with the top bit set",
            |_| vec![F::text(b"").announcing(u64::MAX)],
            vec![TooBig],
        ),
        authed_only(case(
            "text 65536, and a 64-bit length",
            |c| vec![F::text(c.sized(65536)), F::text(c.sized(MAX_PAYLOAD - 1))],
            vec![Answer, Answer],
        )),
        authed_only(case(
            "several messages in one segment",
            |c| vec![F::text(c.msg()), F::text(c.sized(200)), F::text(c.msg())],
            vec![Answer, Answer, Answer],
        )),
        case(
            "binary is refused",
            |_| vec![F::new(BINARY, b"{}")],
            vec![Close(1003)],
        ),
        case(
            "empty binary",
            |_| vec![F::new(BINARY, b"")],
            vec![Close(1003)],
        ),
        case(
            "fragmented binary",
            |_| vec![F::new(BINARY, b"{").more(), F::new(CONT, b"}")],
            vec![Close(1003)],
        ),
        case(
            "empty text is not a request",
            |_| vec![F::text(b"")],
            vec![Close(1008)],
        ),
        case(
            "an unmasked client frame",
            |c| vec![F::text(c.msg()).unmasked()],
            vec![Close(1002)],
        ),
    ];
    run(&g, &cases);
}

/// Autobahn 1.1.8 and 2.6: frames that arrive a byte at a time are reassembled.
#[test]
fn frames_trickled_a_byte_at_a_time_are_reassembled() {
    let g = gateway();
    let mut ws = RawWs::authed(&g);
    ws.s.set_nodelay(true).unwrap();
    let ctx = Ctx {
        token: &g.token,
        authed: true,
    };
    let bytes: Vec<u8> = [F::new(PING, b"chopped"), F::text(ctx.sized(300))]
        .iter()
        .flat_map(F::bytes)
        .collect();
    for b in bytes {
        ws.s.write_all(&[b]).unwrap();
    }
    assert_eq!(ws.next(), Msg::Pong(b"chopped".to_vec()));
    assert_eq!(ws.res()["ok"], true);
}

/// Groups 2 (ping/pong), 3 (reserved bits) and 4 (opcodes).
#[test]
fn control_frames_reserved_bits_and_opcodes() {
    let g = gateway();
    let bytes: Vec<u8> = (0..=255u8).rev().take(125).collect();
    let mut cases = vec![
        case(
            "empty ping",
            |_| vec![F::new(PING, b"")],
            vec![Pong(vec![])],
        ),
        case(
            "ping with text",
            |_| vec![F::new(PING, b"Hello, world!")],
            vec![Pong(b"Hello, world!".to_vec())],
        ),
        case(
            "ping with 125 binary bytes",
            |_| {
                vec![F::new(
                    PING,
                    (0..=255u8).rev().take(125).collect::<Vec<_>>(),
                )]
            },
            vec![Pong(bytes)],
        ),
        case(
            "ping of 126 bytes",
            |_| vec![F::new(PING, [b'p'; 126])],
            vec![Close(1002)],
        ),
        case(
            "unsolicited pongs are ignored",
            |c| vec![F::new(PONG, b""), F::new(PONG, b"x"), F::text(c.msg())],
            vec![Answer],
        ),
        case(
            "ten pings, ten pongs in order",
            |_| (b'0'..=b'9').map(|i| F::new(PING, [i])).collect(),
            (b'0'..=b'9').map(|i| Pong(vec![i])).collect(),
        ),
        case(
            "ping before and after a request",
            |c| vec![F::new(PING, b"a"), F::text(c.msg()), F::new(PING, b"b")],
            vec![Pong(b"a".to_vec()), Answer, Pong(b"b".to_vec())],
        ),
        case(
            "a frame after the failing one is not answered",
            |c| vec![F::text(c.msg()), F::text(c.msg()).rsv(2), F::new(PING, b"")],
            vec![Answer, Close(1002)],
        ),
        case(
            "reserved data opcode after a request",
            |c| vec![F::text(c.msg()), F::new(3, b""), F::new(PING, b"")],
            vec![Answer, Close(1002)],
        ),
        case(
            "close with RSV",
            |_| vec![close(1000, b"").rsv(4)],
            vec![Close(1002)],
        ),
        case(
            "ping with RSV",
            |_| vec![F::new(PING, b"").rsv(1)],
            vec![Close(1002)],
        ),
        case(
            "binary with RSV",
            |_| vec![F::new(BINARY, b"").rsv(7)],
            vec![Close(1002)],
        ),
    ];
    // Every reserved bit pattern on a text frame, and every reserved opcode.
    cases.extend((1..8).map(|bits| {
        let send = move |c: &Ctx| vec![F::text(c.msg()).rsv(bits)];
        case("text with RSV bits", send, vec![Close(1002)])
    }));
    cases.extend([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF].map(|op| {
        let send = move |_: &Ctx| vec![F::new(op, [b'x'; 3])];
        case("reserved opcode", send, vec![Close(1002)])
    }));
    run(&g, &cases);
}

/// Groups 5 (fragmentation) and 6 (UTF-8).
#[test]
fn fragmentation_and_utf8() {
    let g = gateway();
    let mut cases = vec![
        case(
            "two fragments",
            |c| fragments(&c.msg(), c.msg().len() / 2 + 1),
            vec![Answer],
        ),
        case(
            "one-byte fragments",
            |c| fragments(&c.msg(), 1),
            vec![Answer],
        ),
        case(
            "empty fragments",
            |c| {
                vec![
                    F::text(b"").more(),
                    F::new(CONT, c.msg()).more(),
                    F::new(CONT, b""),
                ]
            },
            vec![Answer],
        ),
        case(
            "a ping between fragments",
            |c| {
                let m = c.msg();
                let (a, b) = m.split_at(10);
                vec![F::text(a).more(), F::new(PING, b"mid"), F::new(CONT, b)]
            },
            vec![Pong(b"mid".to_vec()), Answer],
        ),
        case(
            "a pong between fragments",
            |c| {
                let m = c.msg();
                let (a, b) = m.split_at(10);
                vec![F::text(a).more(), F::new(PONG, b"mid"), F::new(CONT, b)]
            },
            vec![Answer],
        ),
        case(
            "a fragmented ping",
            |_| vec![F::new(PING, b"a").more(), F::new(CONT, b"b")],
            vec![Close(1002)],
        ),
        case(
            "a fragmented pong",
            |_| vec![F::new(PONG, b"a").more(), F::new(CONT, b"b")],
            vec![Close(1002)],
        ),
        case(
            "a fragmented close",
            |_| vec![close(1000, b"").more(), F::new(CONT, b"")],
            vec![Close(1002)],
        ),
        case(
            "a continuation with nothing to continue",
            |c| vec![F::new(CONT, c.msg())],
            vec![Close(1002)],
        ),
        case(
            "continuations with nothing to continue",
            |c| vec![F::new(CONT, c.msg()).more(), F::new(CONT, b"")],
            vec![Close(1002)],
        ),
        case(
            "a new text message inside a fragmented one",
            |c| vec![F::text(b"{").more(), F::text(c.msg())],
            vec![Close(1002)],
        ),
        case(
            "a binary message inside a fragmented text",
            |_| vec![F::text(b"{").more(), F::new(BINARY, b"")],
            vec![Close(1002)],
        ),
        case(
            "valid multi-byte UTF-8",
            |c| vec![F::text(c.with_pad("κόσμε 🦀 \u{10FFFF}".as_bytes()))],
            vec![Answer],
        ),
        case(
            "UTF-8 split inside a code point across fragments",
            |c| fragments(&c.with_pad("κόσμε🦀".as_bytes()), 7),
            vec![Answer],
        ),
        case(
            "invalid UTF-8 in a later fragment",
            |_| {
                vec![
                    F::text(b"{\"a\":\"").more(),
                    F::new(CONT, b"ok").more(),
                    F::new(CONT, b"\xff").more(),
                ]
            },
            vec![Close(1007)],
        ),
        case(
            "invalid UTF-8 fails before the message ends",
            |_| vec![F::text(b"{\"x\":\"\xce\xba\xff").more()],
            vec![Close(1007)],
        ),
        case(
            "a code point cut short by the final fragment",
            |_| vec![F::text(b"\"\xce").more(), F::new(CONT, b"\xba\xce")],
            vec![Close(1007)],
        ),
    ];
    let bad: [&[u8]; 8] = [
        b"\xff",
        b"\xc0\xaf",
        b"\xe0\x80\xaf",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xce",
        b"\x80",
        b"\xfe\xfe\xff\xff",
    ];
    cases.extend(bad.map(|pad| {
        let send = move |c: &Ctx| vec![F::text(c.with_pad(pad))];
        case("invalid UTF-8", send, vec![Close(1007)])
    }));
    run(&g, &cases);
}

/// Group 7: close handling. keel echoes a valid close code, answers an invalid one (or a
/// 1-byte payload, or an over-long reason) with 1002 and a reason that is not UTF-8 with
/// 1007; after a close frame it sends nothing and ends the connection itself.
#[test]
fn close_handling() {
    let g = gateway();
    let mut cases = vec![
        case(
            "close without a code",
            |_| vec![F::new(CLOSE, b"")],
            vec![Close(1005)],
        ),
        case(
            "close with a reason",
            |_| vec![close(1000, b"bye")],
            vec![Close(1000)],
        ),
        case(
            "close with 123 bytes of reason",
            |_| vec![close(1000, &[b'r'; 123])],
            vec![Close(1000)],
        ),
        case(
            "close with 124 bytes of reason",
            |_| vec![close(1000, &[b'r'; 124])],
            vec![Close(1002)],
        ),
        case(
            "close with a 1-byte payload",
            |_| vec![F::new(CLOSE, [3])],
            vec![Close(1002)],
        ),
        case(
            "close with a reason that is not UTF-8",
            |_| vec![close(1000, b"\xce\xba\xff")],
            vec![Close(1007)],
        ),
        case(
            "a request after the close is not answered",
            |c| vec![close(1000, b""), F::text(c.msg()), F::new(PING, b"")],
            vec![Close(1000)],
        ),
        case(
            "a request, then close",
            |c| vec![F::text(c.msg()), close(1000, b"")],
            vec![Answer, Close(1000)],
        ),
    ];
    let valid = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4999,
    ];
    cases.extend(valid.map(|code| {
        let send = move |_: &Ctx| vec![close(code, b"")];
        case("a valid close code is echoed", send, vec![Close(code)])
    }));
    let invalid = [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2999, 5000, 65535,
    ];
    cases.extend(invalid.map(|code| {
        let send = move |_: &Ctx| vec![close(code, b"")];
        case("an invalid close code", send, vec![Close(1002)])
    }));
    run(&g, &cases);
}

/// Groups 12/13: keel negotiates no extension, so a client offering permessage-deflate gets a
/// plain 101, and a frame it compresses anyway (RSV1) is a protocol error.
#[test]
fn compression_is_not_negotiated() {
    let g = gateway();
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let (mut ws, head) = RawWs::upgrade(&g.addr(), offer);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    // RFC 6455's sample key and its accept value.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(matches!(ws.read(), Msg::Text(t) if t.contains("connect.challenge")));
    // A deflated empty message, as a client that assumed compression would send it.
    ws.send(&[F::text([0x02, 0x00]).rsv(4)]);
    ws.expect_close(1002);
}
