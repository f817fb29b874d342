//! Logging: `log` records go to standard error (env_logger's format and `RUST_LOG` filters)
//! until the process goes to the background, where its standard error is `/dev/null`; from
//! then on they go to the system log (the `/dev/log` socket, or the one `LAYERFS_SYSLOG`
//! names), as `layerfs[PID]` with the daemon facility. Without a system log they are dropped,
//! as they were on `/dev/null`.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The system log's socket, once records go there.
static SYSLOG: OnceLock<Syslog> = OnceLock::new();

struct Logger {
    inner: env_logger::Logger,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, r: &log::Record) {
        if !self.inner.matches(r) {
            return;
        }
        match SYSLOG.get() {
            Some(s) => s.send(r.level(), &r.args().to_string()),
            None => self.inner.log(r),
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Installs the logger: warnings and errors, everything with `debug`, or what `RUST_LOG` says.
pub fn init(debug: bool) {
    let mut b = env_logger::Builder::new();
    b.filter_level(if debug { log::LevelFilter::Debug } else { log::LevelFilter::Warn });
    if let Ok(s) = std::env::var("RUST_LOG") {
        b.parse_filters(&s);
    }
    b.format_target(false);
    let inner = b.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// Sends the records that follow to the system log (a process going to the background).
pub fn to_syslog() {
    let path = std::env::var_os("LAYERFS_SYSLOG").map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = SYSLOG.set(Syslog { sock, path, tag: format!("layerfs[{pid}]") });
    }
}

/// Whether standard error is `/dev/null` (a process started in the background).
pub fn stderr_is_null() -> bool {
    let (Ok(e), Ok(n)) = (std::fs::metadata("/proc/self/fd/2"), std::fs::metadata("/dev/null")) else {
        return false;
    };
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    e.file_type().is_char_device() && e.rdev() == n.rdev()
}

struct Syslog {
    sock: UnixDatagram,
    path: PathBuf,
    tag: String,
}

impl Syslog {
    /// One datagram a record; a socket that is missing or full loses it.
    fn send(&self, level: log::Level, msg: &str) {
        let line = syslog_line(level, &timestamp(), &self.tag, msg);
        let _ = self.sock.send_to(line.as_bytes(), &self.path);
    }
}

/// A record as a syslog line (RFC 3164, as glibc's `syslog` writes it): `<PRI>TIMESTAMP
/// TAG: MESSAGE`, the priority from the daemon facility and the record's level, the message
/// on one line.
pub fn syslog_line(level: log::Level, timestamp: &str, tag: &str, msg: &str) -> String {
    const LOG_DAEMON: u8 = 3 << 3;
    let severity = match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    };
    let msg = msg.replace(['\n', '\r'], " ");
    format!("<{}>{timestamp} {tag}: {msg}", LOG_DAEMON | severity)
}

/// The local time as syslog lines carry it: `Dec  6 05:50:01`.
fn timestamp() -> String {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    // SAFETY: time(NULL) and localtime_r on a local, zeroed struct tm.
    let tm = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    };
    let month = MONTHS.get(tm.tm_mon as usize).copied().unwrap_or("Jan");
    format!("{month} {:2} {:02}:{:02}:{:02}", tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_daemon_facility_and_the_level() {
        let l = |level| syslog_line(level, "Dec  6 05:50:01", "layerfs[7]", "a\nb");
        assert_eq!(l(log::Level::Error), "<27>Dec  6 05:50:01 layerfs[7]: a b");
        assert_eq!(l(log::Level::Warn), "<28>Dec  6 05:50:01 layerfs[7]: a b");
        assert_eq!(l(log::Level::Info), "<30>Dec  6 05:50:01 layerfs[7]: a b");
        assert_eq!(l(log::Level::Debug), "<31>Dec  6 05:50:01 layerfs[7]: a b");
    }

    #[test]
    fn timestamps_have_the_syslog_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t:?}");
        assert_eq!(&t[9..10], ":", "{t:?}");
        assert_eq!(&t[12..13], ":", "{t:?}");
    }
}
