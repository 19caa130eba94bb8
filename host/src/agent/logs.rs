//! The agent's logger: every line to stderr at the agent's level (journald,
//! `kubectl logs`), and, on a thread serving a policy call, the lines of that
//! call collected to travel back to the plugin, which writes them to its own
//! log at its own level.

use std::cell::RefCell;
use std::io::Write as _;

/// Lines collected on one thread, with their levels.
pub type Captured = Vec<(log::Level, String)>;

thread_local! {
    /// The level and lines being collected on this thread.
    static CAPTURED: RefCell<Option<(log::LevelFilter, Captured)>> = const { RefCell::new(None) };
}

/// Collect this thread's lines at `level` and above from now on.
pub fn capture(level: log::LevelFilter) {
    CAPTURED.with(|c| *c.borrow_mut() = Some((level, Vec::new())));
}

/// The lines collected on this thread since the last call.
pub fn captured() -> Captured {
    CAPTURED.with(|c| {
        c.borrow_mut()
            .as_mut()
            .map(|(_, lines)| std::mem::take(lines))
            .unwrap_or_default()
    })
}

struct AgentLogger {
    level: log::LevelFilter,
    tag: String,
}

impl AgentLogger {
    fn to_stderr(&self, m: &log::Metadata<'_>) -> bool {
        let level = if m.target().starts_with("ohno") {
            self.level
        } else {
            // Other crates (wasmtime, tonic) log their internals at debug.
            self.level.min(log::LevelFilter::Warn)
        };
        m.level() <= level
    }

    fn to_capture(m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("ohno")
            && CAPTURED.with(|c| {
                c.borrow()
                    .as_ref()
                    .is_some_and(|(level, _)| m.level() <= *level)
            })
    }
}

impl log::Log for AgentLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        self.to_stderr(m) || AgentLogger::to_capture(m)
    }

    fn log(&self, r: &log::Record<'_>) {
        let message = r.args().to_string();
        if AgentLogger::to_capture(r.metadata()) {
            CAPTURED.with(|c| {
                if let Some((_, lines)) = c.borrow_mut().as_mut() {
                    lines.push((r.level(), message.clone()));
                }
            });
        }
        if self.to_stderr(r.metadata()) {
            let line = format!(
                "{} {:<5} [{}] {}\n",
                crate::logging::timestamp(),
                r.level(),
                self.tag,
                crate::logging::escape_control(&message)
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Install the agent's logger: stderr at `level`, tagged `tag`.
pub fn init(level: log::LevelFilter, tag: &str) {
    let logger = AgentLogger {
        level,
        tag: tag.to_string(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        // Capture may ask for any level: the filter is in the logger.
        log::set_max_level(log::LevelFilter::Trace);
    }
}
