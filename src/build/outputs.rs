//! outputs: every requested format written under a temporary name beside its
//! final one, checksummed, and renamed into place only when all are complete.

use super::config::Config;
use super::plan::{Plan, TREE_FORMATS};
use super::workdir::temp_output;
use crate::tree::ImageTree;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub fn check_destination(c: &Config) -> Result<()> {
    let dir = c.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let meta = std::fs::metadata(dir).with_context(|| format!("output directory {} does not exist", dir.display()))?;
    if !meta.is_dir() {
        bail!("output directory {} is not a directory", dir.display());
    }
    if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
        bail!("output directory {} is not writable by you", dir.display());
    }
    Ok(())
}

/// The temporary names, computed on the host side before the build starts so the
/// host side can remove them whatever happens inside.
pub fn temp_names(c: &Config) -> Vec<PathBuf> {
    c.formats.iter().map(|f| temp_output(&c.output_path(f))).collect()
}

pub fn write_all(plan: &Plan, tree: &ImageTree, raw: Option<&Path>, temps: &[PathBuf]) -> Result<()> {
    let c = &plan.config;
    if let super::config::Kind::Ramdisk(compression) = c.kind {
        let opts = crate::ramdisk::RamdiskOptions {
            compression,
            source_date_epoch: c.vars.get("SOURCE_DATE_EPOCH").and_then(|v| v.parse().ok()),
        };
        let a = crate::ramdisk::assemble(tree, &temps[0], &temps[1], &opts)?;
        eprintln!(
            "ramdisk: kernel {} ({} MiB), initramfs {} entries, {} MiB ({} MiB uncompressed)",
            a.kernel_version,
            a.kernel_bytes >> 20,
            a.entries,
            a.initramfs_bytes >> 20,
            a.cpio_bytes >> 20
        );
        if c.checksum {
            for t in temps {
                crate::disk::write_checksums(t)?;
            }
        }
        return rename_all(c, temps);
    }
    for (format, tmp) in c.formats.iter().zip(temps) {
        let fmt = crate::disk::Format::parse(format)?;
        if TREE_FORMATS.contains(&format.as_str()) {
            crate::disk::tree_archive(tree.path(), fmt, tmp)?;
        } else {
            let raw = raw.context("internal: disk formats requested without an assembled disk")?;
            crate::disk::convert(raw, fmt, tmp, c.compress, &c.qemu_img_options)?;
        }
        if c.checksum {
            crate::disk::write_checksums(tmp)?;
        }
    }
    rename_all(c, temps)
}

/// All complete: now replace the old outputs, each in one atomic rename.
fn rename_all(c: &Config, temps: &[PathBuf]) -> Result<()> {
    for (format, tmp) in c.formats.iter().zip(temps) {
        let dest = c.output_path(format);
        if c.checksum {
            for ext in ["sha256", "md5"] {
                let from = with_ext(tmp, ext);
                let to = with_ext(&dest, ext);
                // The checksum file names the temporary file: rewrite it for the final name.
                let text = std::fs::read_to_string(&from)?;
                let fixed = text.replace(&tmp.file_name().unwrap_or_default().to_string_lossy().into_owned(), &dest.file_name().unwrap_or_default().to_string_lossy());
                std::fs::write(&from, fixed)?;
                std::fs::rename(&from, &to).with_context(|| format!("renaming into {}", to.display()))?;
            }
        }
        std::fs::rename(tmp, &dest).with_context(|| format!("renaming into {}", dest.display()))?;
        eprintln!("wrote {}", dest.display());
    }
    Ok(())
}

fn with_ext(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}
