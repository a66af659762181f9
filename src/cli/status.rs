//! The live status line on a terminal: one line, redrawn in place, saying which
//! step runs, for how long, and the last line its hook printed (during the
//! bootstrap: what apt and dpkg are doing). Everything else kiln prints still
//! appears, as lines above it.
//!
//! The painter runs in the `--logfile` tee process (see log.rs), which sees all
//! of kiln's stderr: that process can wake up on a timer without making kiln
//! multi-threaded (kiln must stay single-threaded to enter namespaces). kiln
//! marks its step lines and hook output with a leading control byte so the
//! painter need not guess; the log file gets the lines without it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Leads a step line ("install.d/10-x  (flavour y)").
pub const STEP: u8 = 0x1e;
/// Leads a line of a hook's output.
pub const OUTPUT: u8 = 0x1d;

static LIVE: AtomicBool = AtomicBool::new(false);

/// Whether the painter is running (set before any work; inherited by the
/// namespace's worker process).
pub fn live() -> bool {
    LIVE.load(Ordering::Relaxed)
}

pub(crate) fn set_live() {
    LIVE.store(true, Ordering::Relaxed);
}

/// The no-color.org convention: NO_COLOR set and not empty turns colour off.
pub fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// At most 10 redraws a second; the elapsed time moves once a second.
pub const FRAME: Duration = Duration::from_millis(100);

pub struct Painter {
    colour: bool,
    started: Instant,
    step: Option<(String, Instant)>,
    latest: String,
    /// Whether the status line is on screen (so must be cleared before a line).
    shown: bool,
    dirty: bool,
    drawn_at: Option<Instant>,
    drawn_secs: u64,
    /// Columns, when not the terminal's (tests).
    width: Option<usize>,
}

impl Painter {
    pub fn new(colour: bool) -> Painter {
        Painter {
            colour,
            started: Instant::now(),
            step: None,
            latest: String::new(),
            shown: false,
            dirty: false,
            drawn_at: None,
            drawn_secs: 0,
            width: None,
        }
    }

    /// One whole line of kiln's stderr, newline included.
    pub fn line(&mut self, out: &mut impl Write, line: &[u8]) {
        match line.first() {
            Some(&STEP) => {
                let text = String::from_utf8_lossy(&line[1..]);
                self.step = Some((without_stamp(text.trim_end()).to_string(), Instant::now()));
                self.latest.clear();
                self.dirty = true;
            }
            Some(&OUTPUT) => {
                let text = String::from_utf8_lossy(&line[1..]);
                let text = text.trim_end().trim_start_matches("    | ");
                let shown = printable(text);
                if !shown.is_empty() {
                    self.latest = shown;
                    self.dirty = true;
                }
            }
            _ => {
                self.clear(out);
                self.permanent(out, line);
                self.dirty = true;
            }
        }
        self.tick(out);
    }

    /// Redraws when something changed or a second passed, at most once a frame.
    pub fn tick(&mut self, out: &mut impl Write) {
        if self.step.is_none() {
            return;
        }
        let secs = self.started.elapsed().as_secs();
        let due = self.drawn_at.is_none_or(|t| t.elapsed() >= FRAME);
        if due && (self.dirty || secs != self.drawn_secs || !self.shown) {
            self.draw(out, secs);
        }
    }

    /// Removes the status line for good (kiln is done).
    pub fn finish(&mut self, out: &mut impl Write) {
        self.clear(out);
        let _ = out.flush();
    }

    fn clear(&mut self, out: &mut impl Write) {
        if self.shown {
            let _ = out.write_all(b"\r\x1b[K");
            self.shown = false;
        }
    }

    fn permanent(&self, out: &mut impl Write, line: &[u8]) {
        let colour = if !self.colour {
            None
        } else if is_error(line) {
            Some("\x1b[31m")
        } else if line.starts_with(b"warning:") {
            Some("\x1b[33m")
        } else {
            None
        };
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        match colour {
            Some(c) => {
                let _ = out.write_all(c.as_bytes());
                let _ = out.write_all(body);
                let _ = out.write_all(b"\x1b[0m\n");
            }
            None => {
                let _ = out.write_all(body);
                let _ = out.write_all(b"\n");
            }
        }
    }

    fn draw(&mut self, out: &mut impl Write, secs: u64) {
        let Some((step, since)) = &self.step else {
            return;
        };
        let width = self
            .width
            .unwrap_or_else(terminal_width)
            .saturating_sub(1)
            .max(20);
        let head = format!("[{:>3}:{:02}] ", secs / 60, secs % 60);
        let step_secs = format!(" {}s", since.elapsed().as_secs());
        let mut rest = width.saturating_sub(head.len() + step_secs.len());
        let step_shown = truncate(step, rest);
        rest = rest.saturating_sub(step_shown.chars().count());
        let latest = if self.latest.is_empty() || rest < 8 {
            String::new()
        } else {
            format!("  {}", truncate(&self.latest, rest - 2))
        };
        let (on, dim, off) = if self.colour {
            ("\x1b[1;36m", "\x1b[2m", "\x1b[0m")
        } else {
            ("", "", "")
        };
        let s = format!("\r{head}{on}{step_shown}{off}{step_secs}{dim}{latest}{off}\x1b[K");
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
        self.shown = true;
        self.dirty = false;
        self.drawn_at = Some(Instant::now());
        self.drawn_secs = secs;
    }
}

fn is_error(line: &[u8]) -> bool {
    line.starts_with(b"kiln: ") || line.windows(8).take(40).any(|w| w == b": error:")
}

/// "[   0:12.3] install.d/x  (flavour y)" without the stamp: the status line has its own.
fn without_stamp(s: &str) -> &str {
    match (s.starts_with('['), s.find("] ")) {
        (true, Some(i)) => &s[i + 2..],
        _ => s,
    }
}

/// What a terminal line can show of a tool's output line: the text after its
/// last carriage return, without escape sequences and control characters.
fn printable(s: &str) -> String {
    let s = s.rsplit('\r').find(|p| !p.trim().is_empty()).unwrap_or("");
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() || c == '@' || c == '~' {
                        break;
                    }
                }
            }
        } else if c == '\t' {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim().to_string()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn terminal_width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the struct passed; fd 2 is the terminal here.
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_and_its_output_become_one_redrawn_line() {
        let mut p = Painter::new(false);
        p.width = Some(200);
        let mut out = Vec::new();
        p.line(
            &mut out,
            b"\x1e[   0:01.0] root.d/08-debootstrap  (flavour debian)\n",
        );
        p.drawn_at = None;
        p.line(&mut out, b"\x1d    | Unpacking libc6 (2.36-9) ...\r\n");
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains('\n'), "{s:?}");
        assert!(
            s.contains("root.d/08-debootstrap  (flavour debian)"),
            "{s:?}"
        );
        assert!(s.ends_with("Unpacking libc6 (2.36-9) ...\x1b[K"), "{s:?}");
        assert!(!s.contains("\x1b[3") && !s.contains("\x1b[9"), "{s:?}");
    }

    #[test]
    fn other_lines_stay_above_the_status_line() {
        let mut p = Painter::new(true);
        let mut out = Vec::new();
        p.line(&mut out, b"\x1estep\n");
        p.line(&mut out, b"kiln: error: boom\n");
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("\r\x1b[K\x1b[31mkiln: error: boom\x1b[0m\n"),
            "{s:?}"
        );
    }

    #[test]
    fn tool_output_is_cleaned_for_the_terminal() {
        assert_eq!(printable("Get:1 x\r\x1b[33m 50%\x1b[0m\r"), "50%");
        assert_eq!(printable("a\tb\x07"), "a b");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
