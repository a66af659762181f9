//! `--logfile FILE` and DIB_QUIET: everything written to kiln's stderr — kiln's
//! own lines and every hook's and tool's output — also goes to FILE, each line
//! stamped with UTC wall-clock time as diskimage-builder's log is.
//!
//! A small process forked before any work starts reads one pipe that becomes
//! fd 2 for kiln and all it runs, so output from inside the namespaces reaches
//! the log without each writer knowing. A process, not a thread: kiln must stay
//! single-threaded to enter a new user namespace.
//!
//! On a terminal the same process paints the live status line (status.rs).

use anyhow::{bail, Context, Result};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{dup, dup2, fork, ForkResult, Pid};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What the terminal and the log file get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub file: Option<PathBuf>,
    /// DIB_QUIET: only error lines reach the terminal.
    pub quiet: bool,
    /// --quiet: the result lines ("wrote NAME.qcow2") too.
    pub results: bool,
    /// stderr is a terminal, not quiet, not tracing: the live status line.
    pub live: bool,
    /// Colour on the live terminal (never with NO_COLOR).
    pub colour: bool,
}

impl LogSettings {
    /// diskimage-builder: a log file with DIB_QUIET unset implies DIB_QUIET=1;
    /// DIB_QUIET=0 explicitly keeps the terminal output too.
    pub fn new(file: Option<&Path>, dib_quiet: Option<&str>) -> Result<LogSettings> {
        let quiet = match dib_quiet.map(str::trim) {
            None | Some("") => file.is_some(),
            Some("1") => true,
            Some("0") => false,
            Some(v) => bail!("DIB_QUIET={v:?}: use 1 (only errors on the terminal) or 0 (everything on the terminal)"),
        };
        Ok(LogSettings {
            file: file.map(Path::to_path_buf),
            quiet,
            results: false,
            live: false,
            colour: false,
        })
    }

    /// `--quiet` and what the terminal gets: with -x, tracing stays plain lines.
    pub fn terminal(mut self, quiet_flag: bool, trace: bool) -> LogSettings {
        use std::io::IsTerminal;
        if quiet_flag {
            self.quiet = true;
            self.results = true;
        }
        self.live = !self.quiet && !trace && std::io::stderr().is_terminal();
        self.colour = self.live && super::status::colour_allowed();
        self
    }
}

/// The running tee; [`Tee::finish`] waits until it has written everything.
pub struct Tee {
    child: Pid,
    /// The terminal's stderr, put back on fd 2 at the end.
    terminal: OwnedFd,
}

/// What --quiet shows besides errors: the outputs written.
fn is_result(line: &[u8]) -> bool {
    line.starts_with(b"wrote ")
}

/// kiln's own error lines: what a quiet build still shows.
fn is_error(line: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 4] = [
        b"kiln: error:",
        b"disk-image-create: error:",
        b"ramdisk-image-create: error:",
        b"kiln: interrupted",
    ];
    PREFIXES.iter().any(|p| line.starts_with(p))
}

impl Tee {
    /// None when there is nothing to divert (no log file, not quiet).
    pub fn start(s: &LogSettings) -> Result<Option<Tee>> {
        if s.file.is_none() && !s.quiet && !s.live {
            return Ok(None);
        }
        let file = match &s.file {
            Some(p) => {
                if s.quiet {
                    eprintln!("Output logs going to: {}", p.display());
                }
                Some(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(p)
                        .with_context(|| {
                            format!("--logfile {}: cannot open it for appending", p.display())
                        })?,
                )
            }
            None => None,
        };
        let (rd, wr) = nix::unistd::pipe().context("pipe for --logfile")?;
        let terminal = dup(2).context("dup stderr")?;
        // SAFETY: called before kiln starts any thread; the child only reads,
        // writes and exits.
        match unsafe { fork() }.context("fork for --logfile")? {
            ForkResult::Child => {
                drop(wr);
                // The tee must outlive kiln's handling of ^C so the last lines
                // (the interruption notice) still reach the log; it ends at EOF.
                for sig in [
                    Signal::SIGINT,
                    Signal::SIGTERM,
                    Signal::SIGHUP,
                    Signal::SIGQUIT,
                ] {
                    // SAFETY: SIG_IGN installs no handler code.
                    let _ = unsafe { signal(sig, SigHandler::SigIgn) };
                }
                let painter = s.live.then(|| super::status::Painter::new(s.colour));
                copy(std::fs::File::from(rd), file, s, painter);
                // SAFETY: leaves without running the parent's atexit work twice.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(rd);
                if s.live {
                    super::status::set_live();
                }
                dup2(wr.as_raw_fd(), 2).context("dup2 onto stderr")?;
                drop(wr);
                let terminal = unsafe { OwnedFd::from_raw_fd(terminal) };
                Ok(Some(Tee { child, terminal }))
            }
        }
    }

    /// Closes kiln's end of the pipe and waits for the log to be complete.
    pub fn finish(self) {
        let _ = std::io::stderr().flush();
        let _ = dup2(self.terminal.as_raw_fd(), 2);
        let _ = waitpid(self.child, None);
    }
}

/// The terminal gets output as it arrives (whole lines only when quiet, to pick
/// out errors, or live, to keep them off the status line); the log file gets
/// whole lines, each stamped, without status.rs's markers.
fn copy(
    mut input: std::fs::File,
    mut file: Option<std::fs::File>,
    s: &LogSettings,
    mut painter: Option<super::status::Painter>,
) {
    use std::io::Read;
    let quiet = s.quiet;
    let mut terminal = std::io::stderr();
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::new();
    // An error's indented continuation lines (hints, causes) belong with it.
    let mut in_error = false;
    let mut emit = |line: &[u8],
                    file: &mut Option<std::fs::File>,
                    painter: &mut Option<super::status::Painter>| {
        let plain = match line.first() {
            Some(&super::status::STEP) | Some(&super::status::OUTPUT) => &line[1..],
            _ => line,
        };
        if let Some(f) = file {
            let mut out = stamp().into_bytes();
            out.extend_from_slice(plain);
            let _ = f.write_all(&out);
        }
        in_error = is_error(plain) || (in_error && plain.starts_with(b" "));
        if quiet && (in_error || (s.results && is_result(plain))) {
            let _ = terminal.write_all(plain);
        }
        if let Some(p) = painter {
            p.line(&mut terminal, line);
        }
    };
    let timeout = if painter.is_some() {
        super::status::FRAME.as_millis() as libc::c_int
    } else {
        -1
    };
    loop {
        if !readable(&input, timeout) {
            if let Some(p) = &mut painter {
                p.tick(&mut std::io::stderr());
            }
            continue;
        }
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if !quiet && painter.is_none() {
            let _ = std::io::stderr().write_all(&buf[..n]);
        }
        for chunk in buf[..n].split_inclusive(|&b| b == b'\n') {
            line.extend_from_slice(chunk);
            if line.ends_with(b"\n") {
                emit(&line, &mut file, &mut painter);
                line.clear();
            }
        }
    }
    if !line.is_empty() {
        line.push(b'\n');
        emit(&line, &mut file, &mut painter);
    }
    if let Some(p) = &mut painter {
        p.finish(&mut std::io::stderr());
    }
}

/// Waits up to `timeout_ms` (-1: for ever) for input; an error counts as
/// readable so the read reports it.
fn readable(input: &std::fs::File, timeout_ms: libc::c_int) -> bool {
    let mut fds = [libc::pollfd {
        fd: input.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout_ms) };
    r != 0
}

/// `YYYY-MM-DD HH:MM:SS.mmm | `, UTC, as diskimage-builder's log lines start.
fn stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_stamp(now.as_secs(), now.subsec_millis())
}

fn format_stamp(secs: u64, millis: u32) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03} | ",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_follows_diskimage_builder() {
        let f = Some(Path::new("/l"));
        assert!(LogSettings::new(f, None).unwrap().quiet);
        assert!(!LogSettings::new(f, Some("0")).unwrap().quiet);
        assert!(!LogSettings::new(None, None).unwrap().quiet);
        assert!(LogSettings::new(None, Some("1")).unwrap().quiet);
        let e = LogSettings::new(None, Some("yes")).unwrap_err().to_string();
        assert!(e.contains("DIB_QUIET") && e.contains("yes"), "{e}");
    }

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(format_stamp(0, 0), "1970-01-01 00:00:00.000 | ");
        // 2024-02-29 13:05:09 UTC, a leap day.
        assert_eq!(
            format_stamp(1_709_211_909, 42),
            "2024-02-29 13:05:09.042 | "
        );
        assert!(is_error(b"kiln: error: x\n") && !is_error(b"warning: x\n"));
    }
}
