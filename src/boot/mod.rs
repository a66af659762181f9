//! `disk-image-boot`: boot a built disk image, or a kernel + initramfs pair,
//! under QEMU with its serial console on the terminal (or pipes), without
//! writing to the image; optionally wait for a line on the console (CI).

mod accel;
mod args;
mod console;
mod firmware;
mod qemu;
mod signals;

pub use args::BootArgs;
/// The console's last lines without terminal escapes (also the tests' harness).
pub use console::tail as console_tail;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit codes, so scripts can tell a guest that never got there from one that died.
pub mod exit {
    /// The expected text appeared (or, without --expect, QEMU exited cleanly).
    pub const OK: i32 = 0;
    /// Bad input or a host problem (missing image, firmware, QEMU).
    pub const ERROR: i32 = 1;
    /// QEMU exited before the expected text appeared, or failed.
    pub const QEMU_EXITED: i32 = 3;
    /// --timeout passed first, as timeout(1) says it.
    pub const TIMEOUT: i32 = 124;
}

/// The clap command, for man pages and shell completions.
pub fn command() -> clap::Command {
    <BootArgs as clap::CommandFactory>::command()
}

/// --expect without --timeout: a TCG boot of a Debian image takes ~1 min here.
const DEFAULT_EXPECT_TIMEOUT: u64 = 300;

/// What to boot, checked.
pub(crate) enum Target {
    Disk {
        image: PathBuf,
        format: String,
    },
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: String,
    },
}

impl Target {
    fn from_args(a: &BootArgs) -> Result<Target> {
        match (&a.image, &a.kernel) {
            (Some(_), Some(_)) => bail!("give either IMAGE or --kernel, not both"),
            (None, None) => bail!("nothing to boot: give a disk IMAGE, or --kernel K --initrd I"),
            (Some(image), None) => {
                check_file(image, "image")?;
                let format = match &a.format {
                    Some(f) => f.clone(),
                    None => qemu::detect_format(image)?,
                };
                Ok(Target::Disk {
                    image: image.clone(),
                    format,
                })
            }
            (None, Some(kernel)) => {
                check_file(kernel, "--kernel")?;
                if let Some(i) = &a.initrd {
                    check_file(i, "--initrd")?;
                }
                Ok(Target::Kernel {
                    kernel: kernel.clone(),
                    initrd: a.initrd.clone(),
                    append: a.append.clone(),
                })
            }
        }
    }

    /// NAME for NAME.console.log: the image (or kernel) path without its extension.
    fn stem(&self) -> PathBuf {
        let p = match self {
            Target::Disk { image, .. } => image,
            Target::Kernel { kernel, .. } => kernel,
        };
        p.with_extension("")
    }
}

fn check_file(p: &Path, what: &str) -> Result<()> {
    let m =
        std::fs::metadata(p).with_context(|| format!("{what} {}: cannot read it", p.display()))?;
    if !m.is_file() {
        bail!("{what} {}: not a regular file", p.display());
    }
    std::fs::File::open(p).with_context(|| format!("{what} {}: cannot open it", p.display()))?;
    Ok(())
}

/// Runs the whole command; returns the exit code.
pub fn run(args: &BootArgs) -> Result<i32> {
    let expect = args
        .expect
        .as_deref()
        .map(|r| {
            regex::bytes::Regex::new(r)
                .with_context(|| format!("--expect {r:?}: not a valid regular expression"))
        })
        .transpose()?;
    qemu::check_installed()?;
    let target = Target::from_args(args)?;
    let work = qemu::WorkDir::new()?;
    let signals = signals::Watch::install()?;
    let accel = accel::choose(args.accel, &target, &work, &signals)?;
    let log_path = match &args.console_log {
        Some(p) => p.clone(),
        None => PathBuf::from(format!("{}.console.log", target.stem().display())),
    };
    let (log, log_path) = console::open_log(&log_path)?;
    let cmd = qemu::command(args, &target, accel.name(), &work)?;
    let interactive = args.expect.is_none() && console::stdin_is_terminal();
    let outcome = console::run(console::Run {
        cmd,
        interactive,
        expect,
        timeout: args
            .timeout
            .or(args.expect.as_ref().map(|_| DEFAULT_EXPECT_TIMEOUT))
            .map(Duration::from_secs),
        log,
        signals: &signals,
    })?;
    let what = match &target {
        Target::Disk { format, .. } => {
            format!("{format}, {}", if args.uefi { "UEFI" } else { "BIOS" })
        }
        Target::Kernel { .. } => "kernel".to_string(),
    };
    let code = outcome.report(
        args.expect.as_deref(),
        &format!("{}, {what}", accel.name()),
        &log_path,
    );
    drop(work);
    Ok(code)
}
