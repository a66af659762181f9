//! Host tools: found once at plan time (with the Debian package that provides
//! each), run so that SIGINT/SIGTERM stop them promptly.

use crate::sandbox::{signals, Interrupted};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// tool → Debian package.
pub const PACKAGES: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("debootstrap", "debootstrap"),
    ("newuidmap", "uidmap"),
    ("newgidmap", "uidmap"),
    ("tar", "tar"),
    ("zstd", "zstd"),
    ("qemu-img", "qemu-utils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("grub-mkimage", "grub-common"),
    ("sfdisk", "fdisk"),
    ("mksquashfs", "squashfs-tools"),
    ("mkfs.xfs", "xfsprogs"),
    ("mkfs.btrfs", "btrfs-progs"),
    ("md5sum", "coreutils"),
    ("sha256sum", "coreutils"),
    ("gzip", "gzip"),
    ("bash", "bash"),
];

pub fn package_of(tool: &str) -> &'static str {
    PACKAGES
        .iter()
        .find(|(t, _)| *t == tool)
        .map(|(_, p)| *p)
        .unwrap_or("?")
}

/// Every tool the plan needs, resolved to a path.
#[derive(Debug, Default, Clone)]
pub struct Tools {
    found: BTreeMap<String, PathBuf>,
}

impl Tools {
    /// Finds all `needed` tools; one error lists every missing tool and the apt line.
    pub fn find(needed: &[(&str, &str)]) -> Result<Tools> {
        let mut found = BTreeMap::new();
        let mut missing = Vec::new();
        // sbin is searched too: mkfs tools live there and an ordinary user's PATH often lacks it.
        let path = format!(
            "{}:/usr/local/sbin:/usr/sbin:/sbin",
            std::env::var("PATH").unwrap_or_default()
        );
        let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
        for (t, pkg) in needed {
            match which::which_in(t, Some(&path), &cwd) {
                Ok(p) => {
                    found.insert(t.to_string(), p);
                }
                Err(_) => missing.push((*t, *pkg)),
            }
        }
        if !missing.is_empty() {
            let mut pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
            pkgs.sort();
            pkgs.dedup();
            bail!(
                "host tools missing: {}\n  install them with: apt-get install {}",
                missing
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", "),
                pkgs.join(" ")
            );
        }
        Ok(Tools { found })
    }

    pub fn path(&self, tool: &str) -> Result<&PathBuf> {
        self.found
            .get(tool)
            .with_context(|| format!("internal: {tool} was not checked at plan time"))
    }

    pub fn command(&self, tool: &str) -> Result<Command> {
        Ok(Command::new(self.path(tool)?))
    }
}

/// Runs a command to completion, killing it if kiln is interrupted; a failure
/// carries the command line and its last stderr lines.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    // Drain the pipes on threads so a chatty tool cannot block on a full pipe.
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = loop {
        if signals::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!(Interrupted);
        }
        if let Some(s) = child.try_wait().context("waiting")? {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out.map(|h| h.join());
    let err = err.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("{shown} failed ({status}):\n  {}", tail.join("\n  "));
    }
    Ok(())
}

fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}
