//! Step 1 of assembly: the sparse raw file and its partition table.

use super::layout::{DiskPlan, TableKind};
use super::{gpt, mbr};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::path::Path;

/// Creates (or replaces) `raw` as a sparse file of `plan.size` bytes and writes the
/// partition table. Runs before the block-device.d hooks, which see the file as
/// `$IMAGE_BLOCK_DEVICE`.
pub fn lay_out(raw: &Path, plan: &DiskPlan) -> Result<()> {
    plan.validate()?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(raw)
        .with_context(|| format!("cannot create {}", raw.display()))?;
    file.set_len(plan.size)
        .with_context(|| format!("cannot size {}", raw.display()))?;
    match plan.table {
        TableKind::Gpt => gpt::write(&file, plan),
        TableKind::Mbr => mbr::write(&file, plan),
        TableKind::None => Ok(()),
    }
    .with_context(|| format!("cannot write the partition table of {}", raw.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", raw.display()))
}

/// Checks that the image still has the size and partitions of the plan: block-device.d
/// hooks may edit the file, and filesystems written at stale offsets would silently
/// overwrite each other.
pub(crate) fn verify(raw: &Path, plan: &DiskPlan) -> Result<()> {
    plan.validate()?;
    let file = File::open(raw).with_context(|| format!("cannot open {}", raw.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", raw.display()))?
        .len();
    if len != plan.size {
        bail!(
            "{} is {len} bytes but the disk plan says {}: a block-device.d hook resized it",
            raw.display(),
            plan.size
        );
    }
    let found = match plan.table {
        TableKind::Gpt => gpt::read_partitions(&file),
        TableKind::Mbr => mbr::read_partitions(&file),
        TableKind::None => return Ok(()),
    }
    .with_context(|| format!("cannot read the partition table of {}", raw.display()))?;
    for p in &plan.partitions {
        if !found.contains(&(p.start, p.size)) {
            bail!(
                "partition {} ({}, {} bytes at offset {}) is no longer in the partition table of {}: \
                 a block-device.d hook changed the layout kiln planned",
                p.number,
                p.name,
                p.size,
                p.start,
                raw.display()
            );
        }
    }
    Ok(())
}
