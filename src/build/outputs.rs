//! outputs: every requested format written in the build's private directory
//! (`staging`) under its final base name, checksummed there, and renamed into
//! place only when all are complete.

use super::config::Config;
use super::plan::Plan;
use super::staging::Staging;
use crate::tree::owners::Recorded;
use crate::tree::ImageTree;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub fn check_destination(c: &Config) -> Result<()> {
    let dir = output_dir(c);
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("output directory {} does not exist", dir.display()))?;
    if !meta.is_dir() {
        bail!("output directory {} is not a directory", dir.display());
    }
    if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
        bail!("output directory {} is not writable by you", dir.display());
    }
    // What the final rename would fail on, found before an hour of building.
    let me = nix::unistd::geteuid().as_raw();
    let sticky = meta.mode() & libc::S_ISVTX != 0 && meta.uid() != me && me != 0;
    for f in final_names(c) {
        let Ok(m) = std::fs::symlink_metadata(&f) else {
            continue;
        };
        if m.is_dir() {
            bail!(
                "{} is a directory: remove it or choose another -o NAME",
                f.display()
            );
        }
        if sticky && m.uid() != me {
            bail!(
                "{} belongs to another user (uid {}) and {} has the sticky bit, so kiln cannot replace it: have it removed or choose another -o NAME",
                f.display(),
                m.uid(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// The private directory for this build's outputs, made on the host side
/// before the build starts so the host side removes it whatever happens inside.
pub fn stage(c: &Config) -> Result<Staging> {
    let name = c
        .output
        .file_name()
        .with_context(|| format!("-o {} names no file", c.output.display()))?;
    Staging::create(output_dir(c), &name.to_string_lossy())
}

fn output_dir(c: &Config) -> &Path {
    c.output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Every name the build writes: the outputs, then their checksums.
fn final_names(c: &Config) -> Vec<PathBuf> {
    let mut names = Vec::new();
    for f in c.output_names() {
        let out = c.output_path(f);
        names.extend(c.checksums.iter().map(|d| with_ext(&out, d.extension())));
        names.push(out);
    }
    names.push(manifest_path(c));
    names
}

/// `NAME.d`: diskimage-builder's directory of files saved beside the image.
pub fn saved_dir_name(c: &Config) -> String {
    let name = c.output.file_name().unwrap_or_default().to_string_lossy();
    format!("{name}.d")
}

pub fn write_all(
    plan: &Plan,
    tree: &ImageTree,
    raw: Option<&Path>,
    owners: Option<&Recorded>,
    saved: &Path,
    staging: &Staging,
    timings: &[(String, std::time::Duration)],
) -> Result<()> {
    let c = &plan.config;
    let saved = saved.join(saved_dir_name(c));
    if saved.is_dir() {
        let to = staging.file_for(&with_ext(&c.output, "d"));
        crate::build::saved::copy_plain_tree(&saved, &to)?;
    }
    let temps: Vec<PathBuf> = c
        .output_names()
        .into_iter()
        .map(|f| staging.file_for(&c.output_path(f)))
        .collect();
    if let super::config::Kind::Ramdisk(compression) = c.kind {
        let opts = crate::ramdisk::RamdiskOptions {
            compression,
            source_date_epoch: c.source_date_epoch.map(|e| e as u64),
            owners: owners.cloned(),
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
        for t in &temps {
            write_checksums(c, t)?;
        }
        write_manifest(plan, tree, &temps, staging, timings)?;
        return rename_all(c, staging);
    }
    for (&format, tmp) in c.formats.iter().zip(&temps) {
        if format.is_disk() {
            let raw = raw.context("internal: disk formats requested without an assembled disk")?;
            let reproducible = c.source_date_epoch.map(|e| (&plan.seed, e));
            crate::disk::convert(
                raw,
                format,
                tmp,
                c.compress,
                &c.qemu_img_options,
                reproducible,
            )?;
        } else {
            crate::disk::tree_archive(tree.path(), format, tmp, owners)?;
        }
        write_checksums(c, tmp)?;
    }
    write_manifest(plan, tree, &temps, staging, timings)?;
    rename_all(c, staging)
}

fn manifest_path(c: &Config) -> PathBuf {
    with_ext(&c.output, "manifest.json")
}

fn write_manifest(
    plan: &Plan,
    tree: &ImageTree,
    outputs: &[PathBuf],
    staging: &Staging,
    timings: &[(String, std::time::Duration)],
) -> Result<()> {
    let m = super::manifest::build(plan, tree, outputs, timings)?;
    super::manifest::write(&m, &staging.file_for(&manifest_path(&plan.config)))
}

fn write_checksums(c: &Config, file: &Path) -> Result<()> {
    for d in &c.checksums {
        crate::disk::write_checksum(file, *d)?;
    }
    Ok(())
}

/// All complete: now replace the old outputs, each in one atomic rename. The
/// staged files already carry the final base names, which the checksums name.
fn rename_all(c: &Config, staging: &Staging) -> Result<()> {
    let into_place = |dest: &Path| {
        let from = staging.file_for(dest);
        std::fs::rename(&from, dest)
            .with_context(|| format!("renaming {} to {}", from.display(), dest.display()))
    };
    for format in c.output_names() {
        let dest = c.output_path(format);
        for d in &c.checksums {
            into_place(&with_ext(&dest, d.extension()))?;
        }
        into_place(&dest)?;
        eprintln!("wrote {}", dest.display());
    }
    into_place(&manifest_path(c))?;
    eprintln!("wrote {}", manifest_path(c).display());
    let saved = with_ext(&c.output, "d");
    let from = staging.file_for(&saved);
    if from.is_dir() {
        // As diskimage-builder's manifests element leaves it: the latest build's.
        match std::fs::symlink_metadata(&saved) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&saved)
                .with_context(|| format!("replacing {}", saved.display()))?,
            Ok(_) => std::fs::remove_file(&saved)
                .with_context(|| format!("replacing {}", saved.display()))?,
            Err(_) => {}
        }
        into_place(&saved)?;
        eprintln!("wrote {}/", saved.display());
    }
    Ok(())
}

fn with_ext(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}
