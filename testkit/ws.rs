//! A blocking WebSocket client of keel's protocol: the upgrade and keel's
//! `connect.challenge`, requests, and reading frames until a `res` or a deadline. How long one
//! read may wait is the socket's read timeout, which the caller sets (a test: its whole bound;
//! a bench: a short slice, so that it sees its deadline); a non-blocking socket works too.

use serde_json::{Value, json};
use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::Instant;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes, WebSocket};

pub struct Ws {
    pub sock: WebSocket<TcpStream>,
    /// keel's `connect.challenge` event, the first frame after the upgrade.
    pub challenge: Value,
    next_id: u64,
}

/// What one read found.
#[derive(Debug)]
pub enum Msg {
    Text(Utf8Bytes),
    /// A close frame, with its code and reason if it had them.
    Close(Option<CloseFrame>),
}

impl Ws {
    /// Upgrades `stream` at `ws://<addr>/`, with `headers` added to the request and `config`
    /// for tungstenite (None: its defaults), and reads the challenge, which must come before
    /// `deadline`.
    pub fn upgrade(
        stream: TcpStream,
        addr: &str,
        headers: &[(&str, &str)],
        config: Option<WebSocketConfig>,
        deadline: Instant,
    ) -> Result<Ws, String> {
        let mut req = format!("ws://{addr}/")
            .into_client_request()
            .map_err(|e| format!("bad URL: {e}"))?;
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header {k:?}: {e}"))?;
            let value = v.parse().map_err(|e| format!("header {k}: {e}"))?;
            req.headers_mut().insert(name, value);
        }
        let (sock, _) = tungstenite::client::client_with_config(req, stream, config)
            .map_err(|e| format!("WebSocket upgrade: {e}"))?;
        let mut ws = Ws {
            sock,
            challenge: Value::Null,
            next_id: 1,
        };
        let text = loop {
            match ws.read_msg().map_err(|e| format!("WebSocket read: {e}"))? {
                Some(Msg::Text(t)) => break t,
                Some(other) => return Err(format!("expected the challenge, got {other:?}")),
                None if Instant::now() >= deadline => {
                    return Err("no connect.challenge in time".into());
                }
                None => {}
            }
        };
        ws.challenge = serde_json::from_str(text.as_str())
            .map_err(|e| format!("the challenge is not JSON ({e}): {text}"))?;
        Ok(ws)
    }

    /// Sends a request; returns its id, `<n>:<method>` with n counting from 1.
    pub fn send(&mut self, method: &str, params: &Value) -> Result<String, String> {
        let id = format!("{}:{method}", self.next_id);
        self.next_id += 1;
        let frame = json!({"type": "req", "id": id, "method": method, "params": params});
        self.sock
            .send(Message::text(frame.to_string()))
            .map_err(|e| format!("WebSocket send: {e}"))?;
        Ok(id)
    }

    /// Sends `connect` with `params` (protocol range, client, auth, …) and returns keel's
    /// `res`, whether it is `ok` or not.
    pub fn hello(&mut self, params: &Value, deadline: Instant) -> Result<Value, String> {
        let id = self.send("connect", params)?;
        self.wait_res(&id, deadline, |_, _| {})
    }

    /// One read: a text frame or a close frame, skipping the others; None when the socket's
    /// read timeout passed first (or a non-blocking socket has nothing whole yet).
    pub fn read_msg(&mut self) -> Result<Option<Msg>, tungstenite::Error> {
        loop {
            match self.sock.read() {
                Ok(Message::Text(t)) => return Ok(Some(Msg::Text(t))),
                Ok(Message::Close(f)) => return Ok(Some(Msg::Close(f))),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next text frame with the time it was read, or None after one read without one (or
    /// when `deadline` has passed). A close or an error is an error.
    pub fn read(&mut self, deadline: Instant) -> Result<Option<(Instant, String)>, String> {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        match self.read_msg() {
            Ok(Some(Msg::Text(t))) => Ok(Some((Instant::now(), t.as_str().to_owned()))),
            Ok(Some(Msg::Close(f))) => Err(format!(
                "keel closed the WebSocket ({:?})",
                f.map(|f| (u16::from(f.code), f.reason.to_string()))
            )),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("WebSocket read: {e}")),
        }
    }

    /// Reads until the `res` for `id`, before `deadline`; every other frame goes to `other`
    /// with the time it was read.
    pub fn wait_res(
        &mut self,
        id: &str,
        deadline: Instant,
        mut other: impl FnMut(Instant, &str),
    ) -> Result<Value, String> {
        loop {
            match self.read(deadline)? {
                Some((at, text)) => {
                    let v: Value = serde_json::from_str(&text)
                        .map_err(|e| format!("a frame is not JSON ({e}): {text}"))?;
                    if v["type"] == "res" && v["id"] == id {
                        return Ok(v);
                    }
                    other(at, &text);
                }
                None if Instant::now() >= deadline => {
                    return Err(format!("no answer to request {id} in time"));
                }
                None => {}
            }
        }
    }
}
