//! Logging to `logFile` (appended, one write per line so concurrent plugin processes
//! do not interleave) and, for warnings and errors, to stderr. Never to stdout:
//! stdout carries the CNI result.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

struct Logger {
    file: Option<Mutex<File>>,
    level: log::LevelFilter,
    tag: String,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        // Other crates (wasmtime, cranelift, tonic) log their internals at debug:
        // one cold policy compile would write thousands of lines. Theirs from warn.
        let level = if m.target().starts_with("ohno") {
            self.level
        } else {
            self.level.min(log::LevelFilter::Warn)
        };
        m.level() <= level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "{} {:<5} [{}] {}\n",
            timestamp(),
            r.level(),
            self.tag,
            r.args()
        );
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
        if r.level() <= log::Level::Warn {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Install the logger. `tag` identifies the invocation (`ADD c1/eth0 pid 42`).
/// A log file that cannot be opened is reported on stderr and otherwise ignored.
pub fn init(file: &Path, level: log::LevelFilter, tag: String) {
    let file = if level == log::LevelFilter::Off {
        None
    } else {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new().create(true).append(true).open(file) {
            Ok(f) => Some(Mutex::new(f)),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "ohno: cannot open log file {}: {e}",
                    file.display()
                );
                None
            }
        }
    };
    let logger = Logger { file, level, tag };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// UTC time as RFC 3339 with milliseconds, without a date crate.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_is_rfc3339() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20"));
        assert!(t.ends_with('Z'));
    }
}
