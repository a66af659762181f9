//! FAT filesystems (the EFI system partition, or a vfat root) made in place with
//! `mkfs.vfat --offset` and filled with mtools, which read and write a FAT inside a file
//! at a byte offset: nothing is mounted (these kernels have no vfat anyway).

use super::layout::Partition;
use super::tool::run;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Makes the ESP: FAT32, labelled `ESP`, with `volume_id` (`XXXX-XXXX`), and copies the
/// content of `content` (the tree's /boot/efi) into it when there is any.
pub(crate) fn make(
    raw: &Path,
    part: &Partition,
    volume_id: &str,
    content: &Path,
    epoch: Option<i64>,
) -> Result<()> {
    // FAT32 as the UEFI spec asks of a fixed disk's ESP; at 64 MiB that needs 512-byte
    // clusters to reach FAT32's minimum cluster count.
    format(
        raw,
        part,
        volume_id,
        "ESP",
        &["-F".into(), "32".into(), "-s".into(), "1".into()],
        epoch,
    )?;
    if content.is_dir() {
        copy_tree(raw, part, content, epoch)?;
    }
    Ok(())
}

/// Formats the partition's byte range of `raw` as FAT.
pub(crate) fn format(
    raw: &Path,
    part: &Partition,
    volume_id: &str,
    label: &str,
    extra: &[String],
    epoch: Option<i64>,
) -> Result<()> {
    let id: String = volume_id.chars().filter(|c| *c != '-').collect();
    let mut cmd = Command::new("mkfs.vfat");
    if epoch.is_some() {
        // A fixed creation time in the boot sector and the label's directory entry;
        // its constant volume id gives way to the -i that follows.
        cmd.arg("--invariant");
    }
    run(cmd
        .args(["-S", "512"])
        .args(extra)
        .arg("-n")
        .arg(label)
        .arg("-i")
        .arg(&id)
        // Hidden sectors: the partition's start, as a partitioning tool would record it.
        .arg("-h")
        .arg((part.start / 512).to_string())
        .arg(format!("--offset={}", part.start / 512))
        .arg(raw)
        .arg((part.size / 1024).to_string()))
    .with_context(|| format!("cannot make a FAT filesystem in partition {}", part.number))?;
    Ok(())
}

/// Copies the entries of `dir` into the FAT's root, recursively.
pub(crate) fn copy_tree(
    raw: &Path,
    part: &Partition,
    dir: &Path,
    epoch: Option<i64>,
) -> Result<()> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    sources.sort();
    copy_into(raw, part, &sources, "::/", epoch)
}

/// `mcopy` into the FAT at the partition's offset; existing files are overwritten and
/// existing directories merged.
pub(crate) fn copy_into(
    raw: &Path,
    part: &Partition,
    sources: &[PathBuf],
    dest: &str,
    epoch: Option<i64>,
) -> Result<()> {
    if sources.is_empty() {
        return Ok(());
    }
    let mut image = raw.as_os_str().to_owned();
    image.push(format!("@@{}", part.start));
    let mut cmd = Command::new("mcopy");
    match epoch {
        // Every entry, directories too, dated SOURCE_DATE_EPOCH (mtools reads it
        // as "now"); -m would keep the times of files kiln itself just wrote.
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e.to_string()),
        None => cmd.arg("-m"),
    };
    run(cmd
        // mtools otherwise refuses a FAT whose geometry fields look odd to it.
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(image)
        .args(["-s", "-p", "-Q", "-D", "o"])
        .args(sources)
        .arg(dest))
    .with_context(|| {
        format!(
            "cannot copy files into the FAT of partition {}",
            part.number
        )
    })?;
    Ok(())
}
