//! The shared harness's own logic (`testkit/`), where tests and benches rely on it without
//! a keel: response framing, the listening line, waiting on a log file.

use crate::testkit::http::{Head, parse_head, read_response, read_response_ahead};
use crate::testkit::log::{Log, listening_port};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn a_response_head_gives_status_length_and_close() {
    let head = |h: &str| parse_head(h.as_bytes());
    assert_eq!(
        head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: keep-alive"),
        Ok(Head {
            status: 200,
            length: 12,
            close: false
        })
    );
    assert_eq!(
        head("HTTP/1.1 503 Busy\r\ncontent-length: 0\r\nConnection: close"),
        Ok(Head {
            status: 503,
            length: 0,
            close: true
        })
    );
    assert!(head("HTTP/1.0 200 OK\r\nContent-Length: 0").unwrap().close);
    // Without Content-Length only an answer that has no body can be read.
    assert_eq!(head("HTTP/1.1 100 Continue").map(|h| h.length), Ok(0));
    assert_eq!(
        head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket").map(|h| h.length),
        Ok(0)
    );
    assert!(head("HTTP/1.1 200 OK\r\nConnection: close").is_err());
    assert!(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").is_err());
    assert!(head("HTTP/1.1 200 OK\r\nContent-Length: two").is_err());
    assert!(head("SSH-2.0 200").is_err());
}

/// A connected pair on loopback: (client, server).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (client, server)
}

#[test]
fn read_response_leaves_what_follows_on_the_socket() {
    let (mut c, mut s) = pair();
    s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n")
        .unwrap();
    let interim = read_response(&mut c).unwrap();
    assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
    let r = read_response(&mut c).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(read_response(&mut c).unwrap().status, 204);
}

#[test]
fn read_response_ahead_keeps_the_next_response_for_the_next_call() {
    let (mut c, mut s) = pair();
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nb")
        .unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (a, close) = read_response_ahead(&mut c, &mut buf, deadline).unwrap();
    assert_eq!((a.body.as_slice(), close), (&b"a"[..], false));
    let (b, close) = read_response_ahead(&mut c, &mut buf, deadline).unwrap();
    assert_eq!((b.body.as_slice(), close), (&b"b"[..], true));
    assert!(buf.is_empty());
}

#[test]
fn the_port_comes_from_a_whole_listening_line() {
    let line = "[2026-01-01T00:00:00.000Z INFO ] keel 0.1.0 listening on 127.0.0.1:41234 (2 cpu workers, 4 io workers, nice 10)";
    assert_eq!(listening_port(line), Some(41234));
    // Cut in the middle of the port, as a log file being written can be.
    assert_eq!(
        listening_port("keel 0.1.0 listening on 127.0.0.1:412"),
        None
    );
}

#[test]
fn a_log_file_is_waited_on_for_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.log");
    std::fs::write(&path, "first line\nlistening on 127.0.0.1:4").unwrap();
    let log = Log::File {
        path: path.clone(),
        poll: Duration::from_millis(5),
    };
    let soon = || Instant::now() + Duration::from_millis(100);
    assert_eq!(
        log.wait_any(&["first"], soon(), || false).as_deref(),
        Some("first line")
    );
    // The last line has no newline yet: it is not there.
    assert_eq!(log.wait_any(&["listening"], soon(), || false), None);
    // Nor is it worth waiting for once keel has exited.
    let t0 = Instant::now();
    assert_eq!(
        log.wait_any(&["listening"], t0 + Duration::from_secs(20), || true),
        None
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    std::fs::write(&path, "first line\nlistening on 127.0.0.1:4567 (…)\n").unwrap();
    assert!(log.wait_any(&["listening"], soon(), || false).is_some());
}
