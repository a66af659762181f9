//! Running QEMU with its serial console on our stdio and in a log; watching
//! for --expect, the timeout and signals; stopping QEMU on every way out.

use super::{exit, signals::Watch};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn stdin_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// Creates (truncates) the console log; where its directory is not writable
/// (an image on read-only media), the same name in $TMPDIR.
pub fn open_log(wanted: &Path) -> Result<(File, PathBuf)> {
    match File::create(wanted) {
        Ok(f) => Ok((f, wanted.to_path_buf())),
        Err(e) => {
            let name = wanted
                .file_name()
                .unwrap_or("disk-image-boot.console.log".as_ref());
            let fallback = std::env::temp_dir().join(name);
            let f = File::create(&fallback).with_context(|| {
                format!(
                    "console log: cannot create {} ({e}) nor {}; give --console-log FILE",
                    wanted.display(),
                    fallback.display()
                )
            })?;
            eprintln!(
                "disk-image-boot: cannot create {} ({e}): the console log is {}",
                wanted.display(),
                fallback.display()
            );
            Ok((f, fallback))
        }
    }
}

pub struct Run<'a> {
    pub cmd: Command,
    pub interactive: bool,
    pub expect: Option<regex::bytes::Regex>,
    pub timeout: Option<Duration>,
    pub log: File,
    pub signals: &'a Watch,
}

pub enum End {
    Matched,
    QemuExited(ExitStatus),
    Timeout,
    Signal(i32),
}

pub struct Outcome {
    end: End,
    elapsed: Duration,
    console: Vec<u8>,
    qemu_stderr: Vec<u8>,
}

/// Only the end of a long console is searched: enough for any prompt, and a
/// guest printing for hours costs no more per chunk than one that just booted.
const SEARCH_WINDOW: usize = 1 << 20;

pub fn run(r: Run) -> Result<Outcome> {
    let Run {
        mut cmd,
        interactive,
        expect,
        timeout,
        mut log,
        signals,
    } = r;
    if interactive {
        // QEMU puts the terminal in raw mode itself; Ctrl-A X quits. It stays in
        // our process group: only the terminal's foreground group may read it.
        cmd.args(["-serial", "mon:stdio"]).stdin(Stdio::inherit());
    } else {
        cmd.args(["-serial", "stdio", "-monitor", "none"])
            .stdin(Stdio::piped());
        // Its own group, so stopping it reaches anything it started.
        cmd.process_group(0);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe. Even if disk-image-boot is killed
    // outright (SIGKILL), QEMU does not outlive it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", super::qemu::QEMU))?;
    let group = !interactive;

    if let Some(mut to_qemu) = child.stdin.take() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0
                    || to_qemu
                        .write_all(&buf[..n])
                        .and_then(|_| to_qemu.flush())
                        .is_err()
                {
                    break;
                }
            }
        });
    }
    let err_rx = collect(child.stderr.take().context("qemu's stderr")?);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut from_qemu = child.stdout.take().context("qemu's stdout")?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = std::io::stdout();
        loop {
            let n = match from_qemu.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let _ = out.write_all(&buf[..n]).and_then(|_| out.flush());
            let _ = log.write_all(&buf[..n]);
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });

    let deadline = timeout.map(|t| started + t);
    let mut console = Vec::new();
    let end = loop {
        if let Some(sig) = signals.caught() {
            break End::Signal(sig);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break End::Timeout;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => {
                console.extend_from_slice(&chunk);
                if let Some(re) = &expect {
                    if re.is_match(&console[console.len().saturating_sub(SEARCH_WINDOW)..]) {
                        break End::Matched;
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break End::QemuExited(child.wait().context("waiting for qemu")?);
            }
        }
    };
    let elapsed = started.elapsed();
    stop(&mut child, group);
    let qemu_stderr = err_rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    Ok(Outcome {
        end,
        elapsed,
        console,
        qemu_stderr,
    })
}

/// Reads a pipe to its end in the background; the bytes arrive on the channel.
pub fn collect<R: Read + Send + 'static>(mut from: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = from.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    rx
}

/// SIGTERM first (QEMU then restores the terminal and closes its files),
/// SIGKILL to the whole group if it is still there after 3 s.
pub fn stop(child: &mut Child, group: bool) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(child.id() as i32);
    let send = |s: Signal| {
        let _ = if group { killpg(pid, s) } else { kill(pid, s) };
    };
    if matches!(child.try_wait(), Ok(None)) {
        send(Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(3);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Whatever QEMU left in its group goes too, even after QEMU itself exited.
    send(Signal::SIGKILL);
    let _ = child.wait();
}

impl Outcome {
    /// Says how it ended on stderr; returns the exit code.
    pub fn report(&self, expect: Option<&str>, what: &str, log: &Path) -> i32 {
        let secs = self.elapsed.as_secs_f64();
        let (code, msg) = match (&self.end, expect) {
            (End::Matched, Some(re)) => {
                eprintln!("disk-image-boot: /{re}/ matched after {secs:.1}s ({what})");
                return exit::OK;
            }
            (End::QemuExited(s), None) if s.success() => return exit::OK,
            (End::QemuExited(s), Some(re)) => (
                exit::QEMU_EXITED,
                format!("QEMU exited ({s}) after {secs:.1}s, before /{re}/ matched"),
            ),
            (End::QemuExited(s), None) => (
                exit::QEMU_EXITED,
                format!("QEMU failed ({s}) after {secs:.1}s"),
            ),
            (End::Timeout, Some(re)) => (
                exit::TIMEOUT,
                format!("/{re}/ did not match within {secs:.0}s; QEMU stopped"),
            ),
            (End::Timeout, None) => (
                exit::TIMEOUT,
                format!("--timeout: stopped QEMU after {secs:.0}s"),
            ),
            (End::Signal(sig), _) => (
                128 + sig,
                format!("stopped by signal {sig} after {secs:.1}s; QEMU stopped"),
            ),
            (End::Matched, None) => unreachable!("nothing to match"),
        };
        eprintln!("disk-image-boot: {msg} ({what})");
        let qemu = tail(&self.qemu_stderr, 10);
        if !qemu.is_empty() {
            eprintln!("--- qemu:\n{qemu}");
        }
        if !matches!(self.end, End::Signal(_)) {
            eprintln!("--- console (last 40 lines):\n{}", tail(&self.console, 40));
        }
        eprintln!("disk-image-boot: console log: {}", log.display());
        code
    }
}

/// The last lines, without the terminal escapes GRUB and systemd draw with.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = strip_escapes(&String::from_utf8_lossy(bytes).replace('\r', ""));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, up to the final byte (a letter, @ or ~).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() || c == '@' || c == '~' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_drops_escapes_and_carriage_returns() {
        let t = super::tail(b"a\r\n\x1b[2J\x1b[1;1Hb\r\nc\n", 2);
        assert_eq!(t, "b\nc");
    }
}
