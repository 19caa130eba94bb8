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
        // One record, one line: a control character in the message (a
        // policy's log line or output, an error quoting one) is escaped.
        let message = r.args().to_string();
        let line = format!(
            "{} {:<5} [{}] {}\n",
            timestamp(),
            r.level(),
            self.tag,
            escape_control(&message)
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

/// The most of a tag a line carries: the tag holds `CNI_CONTAINERID` and
/// `CNI_IFNAME` as the runtime gave them, before they are validated.
const TAG_CHARS: usize = 160;

/// Install the logger. `tag` identifies the invocation (`ADD c1/eth0 pid 42`);
/// it is escaped and bounded here, since it is written before validation.
/// A log file that cannot be opened is reported on stderr and otherwise ignored.
pub fn init(file: &Path, level: log::LevelFilter, tag: String) {
    let tag = bounded_tag(&tag);
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

/// `tag` escaped and cut at [`TAG_CHARS`] characters (`…` marks a cut).
fn bounded_tag(tag: &str) -> String {
    let escaped = escape_control(tag);
    let mut out: String = escaped.chars().take(TAG_CHARS).collect();
    if escaped.chars().nth(TAG_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// `s` with every C0 and C1 control character (and DEL) written as an escape
/// (`\n`, `\r`, `\t`, `\x1b`, `\u{9b}`), so that text from outside — a
/// policy's log line, its stdout, a container id — stays on its own line and
/// cannot move the cursor or forge a line of its own.
pub fn escape_control(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// UTC time as RFC 3339 with milliseconds, without a date crate.
pub fn timestamp() -> String {
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
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(escape_control("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(
            escape_control("a\nforged INFO line\r\t\u{1b}[31m\u{7f}\u{9b}2J\u{85}"),
            "a\\nforged INFO line\\r\\t\\x1b[31m\\x7f\\u{9b}2J\\u{85}"
        );
    }

    #[test]
    fn the_tag_is_escaped_and_bounded() {
        let tag = bounded_tag(&format!("ADD {}\n/eth0 pid 1", "c".repeat(1000)));
        assert_eq!(tag.chars().count(), TAG_CHARS + 1, "{tag}");
        assert!(tag.ends_with('…'));
        assert!(!tag.contains('\n'));
        assert_eq!(
            bounded_tag("ADD c1\u{1b}/eth0 pid 1"),
            "ADD c1\\x1b/eth0 pid 1"
        );
    }

    #[test]
    fn timestamp_is_rfc3339() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20"));
        assert!(t.ends_with('Z'));
    }
}
