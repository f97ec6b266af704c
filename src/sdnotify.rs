//! systemd's notify protocol without libsystemd: datagrams to `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`). Everything is a no-op when the variable is unset,
//! and a failed send is logged once, never fatal.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Notifier {
    target: Option<String>,
    sock: Option<UnixDatagram>,
    warned: AtomicBool,
    /// `WATCHDOG_USEC`, when systemd asked for keep-alives (and `WATCHDOG_PID` is ours or unset).
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Notifier::new(
            var("NOTIFY_SOCKET"),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
        )
    }

    pub fn new(
        socket: Option<String>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        let pid_ok =
            watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && pid_ok)
            .map(Duration::from_micros);
        let sock = socket.as_ref().and_then(|_| UnixDatagram::unbound().ok());
        Notifier {
            target: socket,
            sock,
            warned: AtomicBool::new(false),
            watchdog,
        }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one state string such as `READY=1` or `STATUS=draining`.
    pub fn notify(&self, state: &str) {
        let (Some(target), Some(sock)) = (&self.target, &self.sock) else {
            return;
        };
        if let Err(e) = send_to(sock, target, state.as_bytes())
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            log::warn!("sd_notify to {target} failed: {e} (further failures are not logged)");
        }
    }
}

fn send_to(sock: &UnixDatagram, target: &str, msg: &[u8]) -> std::io::Result<usize> {
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(msg, &addr)
    } else {
        sock.send_to(msg, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_without_socket() {
        let n = Notifier::new(None, Some("1000000"), None);
        assert!(!n.enabled());
        n.notify("READY=1");
        assert_eq!(n.watchdog, Some(Duration::from_secs(1)));
    }

    #[test]
    fn watchdog_pid_must_be_ours() {
        let n = Notifier::new(None, Some("1000000"), Some("1"));
        assert_eq!(n.watchdog, None);
        let me = std::process::id().to_string();
        assert!(
            Notifier::new(None, Some("1000000"), Some(&me))
                .watchdog
                .is_some()
        );
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.to_string_lossy().into_owned()), None, None);
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("keel-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(Some(format!("@{name}")), None, None).notify("STOPPING=1");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }
}
