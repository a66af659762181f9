//! Boot tests: start an image with `disk-image-boot` (the command users get) and
//! watch its serial console, which that command puts on its stdout.
//!
//! ```ignore
//! let log = qemu::boot(&image, Firmware::Uefi, "qcow2", "login:", Duration::from_secs(300))?;
//! ```
//!
//! TCG by default: /dev/kvm exists on the CI machines but guests hang under it.
//! `KILN_TEST_KVM=1` switches to KVM (`--accel kvm`) where it works. OVMF is
//! found by disk-image-boot (Debian paths, or `KILN_OVMF_CODE` / `KILN_OVMF_VARS`).
//! The image is never written unless [`BootOptions::snapshot`] is turned off.

#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF (edk2).
    Uefi,
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub firmware: Firmware,
    /// QEMU's drive format: `qcow2`, `raw`, `vpc`, `vmdk`.
    pub format: String,
    pub memory_mib: u32,
    /// Discard the guest's writes (default): tests can boot the same image again.
    pub snapshot: bool,
    /// Appended to QEMU's command line.
    pub extra_args: Vec<String>,
}

impl BootOptions {
    pub fn new(firmware: Firmware, format: &str) -> BootOptions {
        BootOptions {
            firmware,
            format: format.into(),
            memory_mib: 1024,
            snapshot: true,
            extra_args: vec![],
        }
    }
}

#[derive(Default)]
struct Output {
    bytes: Vec<u8>,
    closed: bool,
}

type Shared = Arc<(Mutex<Output>, Condvar)>;

/// A running guest. Dropping it kills QEMU.
pub struct Boot {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Shared,
    stderr: Shared,
    cursor: usize,
    started: Instant,
    command: String,
    // disk-image-boot's console log; the console is read from its stdout.
    _log_dir: tempfile::TempDir,
}

/// Boots `image` and waits until `expect` appears on the serial console; returns the
/// console log. QEMU is killed either way.
pub fn boot(
    image: &Path,
    firmware: Firmware,
    format: &str,
    expect: &str,
    timeout: Duration,
) -> Result<String> {
    let mut guest = Boot::start(image, &BootOptions::new(firmware, format))?;
    guest.wait_for(expect, timeout)?;
    Ok(guest.console())
}

/// disk-image-boot with what every boot here shares.
fn base_command(opts: &BootOptions, log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_disk-image-boot"));
    cmd.args(["--accel", accel(), "--memory", &opts.memory_mib.to_string()])
        .arg("--console-log")
        .arg(log);
    for a in &opts.extra_args {
        cmd.arg(format!("--qemu-arg={a}"));
    }
    cmd
}

impl Boot {
    pub fn start(image: &Path, opts: &BootOptions) -> Result<Boot> {
        if !image.is_file() {
            bail!("{} is not a file", image.display());
        }
        let dir = tempfile::Builder::new().prefix("kiln-boot-").tempdir()?;
        let mut cmd = base_command(opts, &dir.path().join("console.log"));
        cmd.arg("--format").arg(&opts.format);
        if !opts.snapshot {
            cmd.arg("--writable");
        }
        if opts.firmware == Firmware::Uefi {
            cmd.arg("--uefi");
        }
        cmd.arg(image);
        Boot::spawn(cmd, dir)
    }

    /// Starts disk-image-boot in its own process group, the console on its
    /// stdio, read in the background.
    fn spawn(mut cmd: Command, log_dir: tempfile::TempDir) -> Result<Boot> {
        let command = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("cannot start disk-image-boot")?;
        let console = Shared::default();
        let stderr = Shared::default();
        pump(child.stdout.take(), console.clone());
        pump(child.stderr.take(), stderr.clone());
        Ok(Boot {
            stdin: child.stdin.take(),
            child,
            console,
            stderr,
            cursor: 0,
            started: Instant::now(),
            command,
            _log_dir: log_dir,
        })
    }

    /// Waits for `expect` on the console after the previous match; returns the time
    /// since QEMU started. On timeout or QEMU's exit the error carries the console's
    /// last lines.
    pub fn wait_for(&mut self, expect: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.console;
        let mut out = lock
            .lock()
            .map_err(|_| anyhow::anyhow!("console reader panicked"))?;
        loop {
            if let Some(at) = find(
                &out.bytes[self.cursor.min(out.bytes.len())..],
                expect.as_bytes(),
            ) {
                self.cursor += at + expect.len();
                return Ok(self.started.elapsed());
            }
            if out.closed {
                let log = kiln::boot::console_tail(&out.bytes, 40);
                drop(out);
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                bail!(
                    "disk-image-boot exited ({status}) before {expect:?} appeared\ncommand: {}\ndisk-image-boot: {}\nconsole:\n{log}",
                    self.command,
                    self.stderr_text()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{expect:?} did not appear within {}s\ncommand: {}\ndisk-image-boot: {}\nconsole:\n{}",
                    timeout.as_secs(),
                    self.command,
                    self.stderr_text(),
                    kiln::boot::console_tail(&out.bytes, 40)
                );
            }
            out = cond
                .wait_timeout(out, deadline - now)
                .map_err(|_| anyhow::anyhow!("console reader panicked"))?
                .0;
        }
    }

    /// Types a line on the serial console (e.g. a user name at `login:`).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("qemu's stdin is closed")?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\r")?;
        stdin.flush()?;
        Ok(())
    }

    /// Everything the guest wrote to its serial console so far.
    pub fn console(&self) -> String {
        match self.console.0.lock() {
            Ok(out) => String::from_utf8_lossy(&out.bytes).replace('\r', ""),
            Err(_) => String::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn stderr_text(&self) -> String {
        match self.stderr.0.lock() {
            Ok(out) => kiln::boot::console_tail(&out.bytes, 60),
            Err(_) => String::new(),
        }
    }
}

/// SIGTERM lets disk-image-boot stop QEMU and remove its files; SIGKILL to its
/// whole group if it has not within 10 s (QEMU dies with it: PDEATHSIG).
impl Drop for Boot {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// TCG unless `KILN_TEST_KVM=1` and /dev/kvm can be opened; never disk-image-boot's
/// probe, which would cost each boot its timeout on this machine.
fn accel() -> &'static str {
    let wanted = std::env::var("KILN_TEST_KVM")
        .map(|v| v == "1")
        .unwrap_or(false);
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if wanted && usable {
        "kvm"
    } else {
        "tcg"
    }
}

fn pump<R: Read + Send + 'static>(from: Option<R>, to: Shared) {
    let Some(mut from) = from else {
        if let Ok(mut out) = to.0.lock() {
            out.closed = true;
        }
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = from.read(&mut buf).unwrap_or(0);
            let (lock, cond) = &*to;
            let Ok(mut out) = lock.lock() else { return };
            if n == 0 {
                out.closed = true;
                cond.notify_all();
                return;
            }
            out.bytes.extend_from_slice(&buf[..n]);
            cond.notify_all();
        }
    });
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Direct kernel boot, for ramdisks: no disk image of its own (disks come in
/// `opts.extra_args`), SeaBIOS, `opts.memory_mib`; `opts.firmware`, `format` and
/// `snapshot` do not apply.
impl Boot {
    pub fn start_kernel(
        kernel: &Path,
        initrd: &Path,
        append: &str,
        opts: &BootOptions,
    ) -> Result<Boot> {
        for f in [kernel, initrd] {
            if !f.is_file() {
                bail!("{} is not a file", f.display());
            }
        }
        let dir = tempfile::Builder::new().prefix("kiln-boot-").tempdir()?;
        let mut cmd = base_command(opts, &dir.path().join("console.log"));
        cmd.arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .arg(format!("--append={append}"));
        Boot::spawn(cmd, dir)
    }

    /// Waits for QEMU, and so disk-image-boot, to exit by itself (the guest
    /// powered off; `-no-reboot` turns a reboot into an exit too), so its disk
    /// files are complete.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "disk-image-boot did not exit within {}s\ncommand: {}\nconsole:\n{}",
                    timeout.as_secs(),
                    self.command,
                    self.console()
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
