//! keel's log (its stderr), kept either in memory from a pipe — a test waits on each line as it
//! comes — or in a file that keel writes itself — a bench's `server.log`, which the scripts
//! read after the bench; and what is looked for in it.

use super::wait;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ChildStderr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where keel's log is.
pub enum Log {
    /// The lines read so far from keel's stderr, and whether it has closed (keel exited).
    Pipe(Arc<(Mutex<Lines>, Condvar)>),
    /// The file keel's stderr goes to, read again every `poll` while a line is waited for.
    File { path: PathBuf, poll: Duration },
}

#[derive(Default)]
pub struct Lines {
    lines: Vec<String>,
    closed: bool,
}

impl Log {
    /// Reads `stderr` on a thread of its own, a line at a time. With `KEEL_TEST_ECHO` set,
    /// each line is echoed to this process's stderr as well.
    pub fn pipe(stderr: ChildStderr) -> Log {
        let log = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("KEEL_TEST_ECHO").is_some() {
                    eprintln!("keel| {line}");
                }
                sink.0.lock().unwrap().lines.push(line);
                sink.1.notify_all();
            }
            sink.0.lock().unwrap().closed = true;
            sink.1.notify_all();
        });
        Log::Pipe(log)
    }

    /// All of it so far (a file's last line may still be being written).
    pub fn text(&self) -> String {
        match self {
            Log::Pipe(log) => log.0.lock().unwrap().lines.join("\n"),
            Log::File { path, .. } => std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        }
    }

    /// Whether keel's stderr has closed: it exited (a pipe; a file never tells).
    pub fn closed(&self) -> bool {
        match self {
            Log::Pipe(log) => log.0.lock().unwrap().closed,
            Log::File { .. } => false,
        }
    }

    /// The first whole line that contains any of `needles`, waited for until `deadline`. None
    /// when the deadline passes first, or keel's stderr closed (a pipe), or `ended` says keel
    /// has exited (a file; it is asked each time the file has been read).
    pub fn wait_any(
        &self,
        needles: &[&str],
        deadline: Instant,
        mut ended: impl FnMut() -> bool,
    ) -> Option<String> {
        match self {
            Log::Pipe(log) => {
                let (m, cv) = &**log;
                let mut buf = m.lock().unwrap();
                loop {
                    if let Some(l) = find_line(buf.lines.iter().map(String::as_str), needles) {
                        return Some(l.to_string());
                    }
                    let now = Instant::now();
                    if buf.closed || now >= deadline {
                        return None;
                    }
                    buf = cv.wait_timeout(buf, deadline - now).unwrap().0;
                }
            }
            Log::File { poll, .. } => wait::poll(deadline, *poll, || {
                let text = self.text();
                // Only whole lines: the last one may still be being written.
                let whole = text.rfind('\n').map_or("", |i| &text[..i]);
                if let Some(l) = find_line(whole.lines(), needles) {
                    return Some(Some(l.to_string()));
                }
                ended().then_some(None)
            })
            .flatten(),
        }
    }
}

/// The first of `lines` that contains any of `needles`.
pub fn find_line<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    needles: &[&str],
) -> Option<&'a str> {
    lines
        .into_iter()
        .find(|l| needles.iter().any(|n| l.contains(n)))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The port of keel's `listening on ADDR:PORT (…)` line.
pub fn listening_port(line: &str) -> Option<u16> {
    let (_, rest) = line.split_once(LISTENING)?;
    let (addr, _) = rest.split_once(char::is_whitespace)?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// What keel logs once it listens, followed by its address.
pub const LISTENING: &str = "listening on ";
