//! KVM or TCG. /dev/kvm opening is not enough: on some hosts (nested
//! virtualisation gone wrong) guests hang under it without a word, so `auto`
//! boots the guest's own kernel under KVM once, briefly, and keeps KVM only if
//! that kernel gets as far as its panic for want of a root filesystem.

use super::{args::Accel, qemu, signals::Watch, Target};
use anyhow::{bail, Result};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Kvm,
    Tcg,
}

impl Chosen {
    pub fn name(self) -> &'static str {
        match self {
            Chosen::Kvm => "kvm",
            Chosen::Tcg => "tcg",
        }
    }
}

/// A working KVM boots a kernel to its panic in well under a second.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub fn choose(a: Accel, target: &Target, work: &qemu::WorkDir, signals: &Watch) -> Result<Chosen> {
    match a {
        Accel::Tcg => Ok(Chosen::Tcg),
        Accel::Kvm => match kvm_opens() {
            Ok(()) => Ok(Chosen::Kvm),
            Err(e) => bail!("--accel kvm: cannot open /dev/kvm for writing ({e}): join the kvm group, or use --accel tcg"),
        },
        Accel::Auto => {
            if kvm_opens().is_err() {
                return Ok(Chosen::Tcg);
            }
            let kernel = match probe_kernel(target, work) {
                Ok(k) => k,
                Err(why) => {
                    eprintln!("disk-image-boot: no KVM probe ({why}): using TCG; --accel kvm skips the probe");
                    return Ok(Chosen::Tcg);
                }
            };
            let started = Instant::now();
            let passed = probe(&kernel, signals)?;
            let secs = started.elapsed().as_secs_f64();
            if passed {
                eprintln!("disk-image-boot: KVM probe passed in {secs:.1}s");
                Ok(Chosen::Kvm)
            } else {
                eprintln!("disk-image-boot: KVM probe: the kernel did not reach its panic within {secs:.1}s under KVM: using TCG");
                Ok(Chosen::Tcg)
            }
        }
    }
}

fn kvm_opens() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
}

/// The kernel the guest will run: given, or read out of the image's /boot.
fn probe_kernel(target: &Target, work: &qemu::WorkDir) -> Result<PathBuf, String> {
    match target {
        Target::Kernel { kernel, .. } => Ok(kernel.clone()),
        Target::Disk { image, format } => {
            if format != "raw" && format != "qcow2" {
                return Err(format!(
                    "a kernel is read only out of raw and qcow2 images, not {format}"
                ));
            }
            let opts = crate::kernel::Options {
                image: image.clone(),
                dir: work.path.clone(),
                prefix: "probe".into(),
                patterns: crate::kernel::Patterns::from_env(),
                verbose: false,
            };
            crate::kernel::get_kernel(&opts)
                .map(|e| e.kernel)
                .map_err(|e| format!("no kernel found in the image: {e:#}"))
        }
    }
}

/// Boots `kernel` without an initramfs; `panic=-1` plus QEMU's -no-reboot turn
/// the panic into QEMU's exit.
fn probe(kernel: &std::path::Path, signals: &Watch) -> Result<bool> {
    let mut cmd = qemu::base("kvm", 256, 1);
    cmd.args(["-machine", "pc", "-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let out = super::console::collect(child.stdout.take().expect("piped"));
    let until = Instant::now() + PROBE_TIMEOUT;
    while matches!(child.try_wait(), Ok(None))
        && Instant::now() < until
        && signals.caught().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    super::console::stop(&mut child, true);
    let text = out.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    Ok(String::from_utf8_lossy(&text).contains("Kernel panic"))
}
