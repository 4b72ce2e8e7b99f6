//! What the pusher reads. The hook's stderr reaches the pusher's terminal with git's `remote: `
//! prefix; one line per step, names in backticks, `hint:` for fixes, no colour needed.

use std::io::Write;
use std::path::PathBuf;

/// Writes to the pusher, and details to the server-side hook log.
#[derive(Debug)]
pub struct Reporter {
    log: Option<PathBuf>,
}

impl Reporter {
    /// A reporter that appends details to `log` (created on first use).
    pub fn new(log: Option<PathBuf>) -> Self {
        Self { log }
    }

    /// One line for the pusher.
    pub fn say(&self, line: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{line}");
        let _ = stderr.flush();
    }

    /// A refusal the pusher can act on.
    pub fn error(&self, message: &str, hint: Option<&str>) {
        self.say(&format!("error: {message}"));
        if let Some(hint) = hint {
            self.say(&format!("hint: {hint}"));
        }
    }

    /// Our own failure: a short stable line for the pusher, the detail for the operator.
    pub fn failure(&self, message: &str, detail: &dyn std::error::Error) {
        self.say(&format!("error: {message}"));
        self.log(&format!("{message}: {}", chain(detail)));
    }

    /// Appends a line to the hook log.
    pub fn log(&self, line: &str) {
        let Some(path) = &self.log else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{} {line}", k8s_openapi::jiff::Timestamp::now());
        }
    }
}

pub use slipway_api::error_chain as chain;

/// Removes ANSI escape sequences (colours from build output) and other control characters
/// except tab.
pub fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn colours_and_control_characters_are_removed() {
        assert_eq!(
            super::clean("\u{1b}[31mred\u{1b}[0m text\r\u{7}"),
            "red text"
        );
        assert_eq!(super::clean("tab\tkept"), "tab\tkept");
    }
}
