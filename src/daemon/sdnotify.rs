//! The systemd notification protocol (`sd_notify(3)`), without libsystemd:
//! one datagram per message to the socket named by `$NOTIFY_SOCKET`.
//!
//! batchd sends `READY=1` once the jobs folder is scanned and the API
//! listens, `WATCHDOG=1` at half the interval `$WATCHDOG_USEC` asks for
//! (only while the job table and scheduler answer), `RELOADING=1` /
//! `READY=1` around a SIGHUP reload and `STOPPING=1` on shutdown. Outside
//! systemd (`$NOTIFY_SOCKET` unset) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager, if batchd runs under one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring
    /// `$WATCHDOG_PID`, which names the process the watchdog is for).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let address = match path.strip_prefix('@') {
                // A Linux abstract socket.
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name.as_bytes())
                }
                None => SocketAddr::from_pathname(&path),
            };
            match (address, UnixDatagram::unbound()) {
                (Ok(address), Ok(socket)) => Some((socket, address)),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!("NOTIFY_SOCKET={path} is unusable: {error}");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the configured timeout, as
    /// `sd_watchdog_enabled(3)` advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled()).map(|d| d / 2)
    }

    /// Sends one message (`KEY=value` lines); failures are logged, never
    /// fatal: systemd going away must not take the daemon down.
    pub fn notify(&self, message: &str) {
        if let Some((socket, address)) = &self.socket {
            if let Err(error) = socket.send_to_addr(message.as_bytes(), address) {
                tracing::warn!("sd_notify {message:?} failed: {error}");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn reloading(&self) {
        // Type=notify-reload wants the monotonic time of the reload.
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down");
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={status}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_the_watchdog_runs_at_half_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(10)),
        };
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(5)));
        notifier.ready("3 jobs");
        notifier.watchdog();
        let mut buffer = [0u8; 256];
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"READY=1\nSTATUS=3 jobs");
        let n = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"WATCHDOG=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        let notifier = Notifier {
            socket: None,
            watchdog: Some(Duration::from_secs(10)),
        };
        assert!(!notifier.enabled());
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.ready("x");
    }
}
