//! Running host tools and owning scratch space.
//!
//! Every tool the disk code runs goes through [`run`], so a failure always names the
//! command, its exit status and the end of what it printed, and a missing tool names
//! the Debian package that provides it.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A host tool the disk code may run, with the Debian package that ships it, so the
/// plan can check for it up front (docs/architecture.md §9: every tool found once, at plan time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTool {
    pub name: &'static str,
    pub package: &'static str,
}

pub const fn tool(name: &'static str, package: &'static str) -> HostTool {
    HostTool { name, package }
}

pub(crate) fn package_of(program: &str) -> &'static str {
    match program {
        "mke2fs" | "debugfs" | "mkfs.ext4" | "mkfs.ext3" | "mkfs.ext2" => "e2fsprogs",
        "mkfs.btrfs" => "btrfs-progs",
        "mkfs.vfat" => "dosfstools",
        "mcopy" | "mmd" => "mtools",
        "grub-mkimage" => "grub-common",
        "qemu-img" => "qemu-utils",
        "mksquashfs" => "squashfs-tools",
        "tar" => "tar",
        "gzip" => "gzip",
        "md5sum" | "sha256sum" => "coreutils",
        _ => "(unknown package)",
    }
}

/// Runs `cmd` to completion with stdout and stderr captured.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let line = command_line(cmd);
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{program} not found: install the Debian package {}",
            package_of(&program)
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot start {line}")),
    };
    if !out.status.success() {
        bail!(
            "{line} failed ({}):\n{}",
            out.status,
            tail(&[&out.stderr[..], &out.stdout[..]].concat(), 20)
        );
    }
    Ok(out)
}

pub(crate) fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&shell_word(a));
    }
    s
}

fn shell_word(a: &OsStr) -> String {
    let s = a.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The last `lines` lines of a tool's output, for error messages.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A scratch directory next to the image (same filesystem, so sparse copies and
/// renames stay cheap), removed when dropped — also when a step fails half-way.
pub(crate) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub(crate) fn beside(file: &Path, purpose: &str) -> Result<ScratchDir> {
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = parent.join(format!(".{name}.{purpose}.{}", std::process::id()));
        // A leftover from a killed run with a recycled pid would make create_dir fail.
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove stale {}", path.display()))?;
        }
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Parses a textual UUID into its 16 bytes in text order.
pub(crate) fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let dashes: Vec<usize> = s.match_indices('-').map(|(i, _)| i).collect();
    if hex.len() != 32 || dashes != [8, 13, 18, 23] || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{s:?} is not a UUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_uuid_accepts_canonical_and_rejects_others() {
        let b = parse_uuid("4f68bce3-e8cd-4db1-96e7-fbcaf984b709").unwrap();
        assert_eq!(b[0], 0x4f);
        assert_eq!(b[15], 0x09);
        assert!(parse_uuid("4f68bce3e8cd4db196e7fbcaf984b709").is_err());
        assert!(parse_uuid("4f68bce3-e8cd-4db1-96e7-fbcaf984b70g").is_err());
    }

    #[test]
    fn missing_tool_names_its_package() {
        let err = run(&mut Command::new("mkfs.btrfs-definitely-missing")).unwrap_err();
        assert!(err.to_string().contains("not found"));
    }
}
