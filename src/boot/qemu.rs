//! The qemu-system-x86_64 command line, the image's format, the scratch directory.

use super::{args::BootArgs, firmware, Target};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const QEMU: &str = "qemu-system-x86_64";

pub fn check_installed() -> Result<()> {
    which::which(QEMU).map(|_| ()).with_context(|| {
        format!("{QEMU} not found in PATH: install the Debian package qemu-system-x86")
    })
}

/// Formats QEMU boots from; anything else qemu-img reports is refused rather
/// than guessed at.
const FORMATS: [&str; 6] = ["qcow2", "raw", "vpc", "vmdk", "vhdx", "vdi"];

/// The format qemu-img sees (it reads the header's magic; anything without one is raw).
pub fn detect_format(image: &Path) -> Result<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "--"])
        .arg(image)
        .output()
        .context("cannot run qemu-img to tell the image's format: install the Debian package qemu-utils, or give --format")?;
    if !out.status.success() {
        bail!(
            "{}: qemu-img cannot read it: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: qemu-img info gave no JSON", image.display()))?;
    let format = info["format"].as_str().unwrap_or_default();
    if !FORMATS.contains(&format) {
        bail!(
            "{}: unknown image format {format:?} (disk-image-boot boots {}); give --format to override",
            image.display(),
            FORMATS.join(", ")
        );
    }
    Ok(format.to_string())
}

/// A private temporary directory (OVMF variables, the probe's kernel), removed on drop.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    pub fn new() -> Result<WorkDir> {
        let base = std::env::temp_dir().join("disk-image-boot.XXXXXX");
        let path = nix::unistd::mkdtemp(&base)
            .with_context(|| format!("cannot create a directory like {}", base.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// QEMU with the serial port as its only console: no default devices, no
/// display; a guest that reboots (panic=N, triple fault) ends the run.
pub fn base(accel: &str, memory: u32, cpus: u32) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", accel, "-m", &memory.to_string()])
        .args(["-smp", &cpus.to_string()])
        .args(["-nodefaults", "-display", "none", "-no-reboot"]);
    cmd
}

pub fn command(a: &BootArgs, target: &Target, accel: &str, work: &WorkDir) -> Result<Command> {
    let mut cmd = base(accel, a.memory, a.cpus);
    match target {
        Target::Disk { image, format } => {
            let drive = if a.writable {
                format!("file={},if=virtio,format={format}", drive_path(image)?)
            } else {
                let o = overlay(image, format, work)?;
                format!("file={},if=virtio,format=qcow2", drive_path(&o)?)
            };
            cmd.arg("-drive").arg(drive);
            if a.uefi {
                let (code, template) = firmware::ovmf()?;
                let vars = work.path.join("OVMF_VARS.fd");
                std::fs::copy(&template, &vars).with_context(|| {
                    format!("cannot copy {} to {}", template.display(), vars.display())
                })?;
                cmd.args(["-machine", "q35"])
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        drive_path(&code)?
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        drive_path(&vars)?
                    ));
            } else {
                cmd.args(["-machine", "pc"]);
            }
        }
        Target::Kernel {
            kernel,
            initrd,
            append,
        } => {
            cmd.args(["-machine", "pc"]).arg("-kernel").arg(kernel);
            if let Some(i) = initrd {
                cmd.arg("-initrd").arg(i);
            }
            cmd.arg("-append").arg(append);
        }
    }
    cmd.args(&a.qemu_args);
    Ok(cmd)
}

/// The guest writes to a qcow2 overlay in the work directory, which is removed
/// with it; QEMU's own snapshot=on file lives in $TMPDIR until QEMU closes it,
/// so a QEMU killed outright would leave it behind.
fn overlay(image: &Path, format: &str, work: &WorkDir) -> Result<PathBuf> {
    let abs = std::fs::canonicalize(image)
        .with_context(|| format!("{}: cannot resolve its path", image.display()))?;
    let overlay = work.path.join("overlay.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&abs)
        .arg(&overlay)
        .output()
        .context(
            "cannot run qemu-img for the throw-away overlay: install the Debian package qemu-utils",
        )?;
    if !out.status.success() {
        bail!(
            "{}: cannot put an overlay on it: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(overlay)
}

/// QEMU's -drive splits on commas; a path with one must double it.
fn drive_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{}: QEMU needs a UTF-8 path", p.display()))?;
    Ok(s.replace(',', ",,"))
}
