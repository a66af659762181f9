//! Step 1 of assembly: the sparse raw file and its partition table; and, after
//! block-device.d, the one policy for a table a hook changed ([`adopt_table`]).

use super::layout::{DiskPlan, Partition, TableKind, MBR_TYPE_LINUX};
use super::tool::parse_uuid;
use crate::partition::{self, Device, GptEntry, Kind, MbrEntry, Table};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
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
    write_table(&file, plan)
        .with_context(|| format!("cannot write the partition table of {}", raw.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", raw.display()))
}

fn write_table(file: &File, plan: &DiskPlan) -> Result<()> {
    match plan.table {
        TableKind::Gpt => {
            let entries = plan
                .partitions
                .iter()
                .map(|p| {
                    Ok(GptEntry {
                        number: p.number,
                        type_guid: parse_uuid(&p.type_id)?,
                        uuid: parse_uuid(&p.uuid)?,
                        start: p.start,
                        size: p.size,
                        name: &p.name,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            partition::write_gpt(file, plan.size, parse_uuid(&plan.disk_id)?, &entries)
        }
        TableKind::Mbr => {
            let signature = u32::from_str_radix(&plan.disk_id, 16).with_context(|| {
                format!("MBR disk signature {:?} is not 8 hex digits", plan.disk_id)
            })?;
            let entries: Vec<MbrEntry> = plan
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| MbrEntry {
                    number: p.number,
                    start: p.start,
                    size: p.size,
                    kind: MBR_TYPE_LINUX,
                    bootable: i == 0,
                })
                .collect();
            partition::write_mbr(file, signature, &entries)
        }
        TableKind::None => Ok(()),
    }
}

/// A partition a block-device.d hook moved or resized, where it is now (bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub number: u32,
    pub start: u64,
    pub size: u64,
}

/// After block-device.d, the table on disk is the truth (docs/architecture.md §5):
/// a hook may move, shrink or grow kiln's partitions, and add its own, and kiln
/// fills each of its partitions where the table now puts it, so `plan` is updated.
/// What kiln refuses, because what it writes next depends on it: a table of
/// another kind (GRUB's BIOS core goes to the BIOS boot partition on GPT, to the
/// gap after an MBR), a missing partition number kiln planned (it would have no
/// place for that filesystem), a resized image (the GPT backup and the output
/// sizes follow the plan), and partitions that overlap or pass the end.
pub fn adopt_table(raw: &Path, plan: &mut DiskPlan) -> Result<Vec<Moved>> {
    let Some(table) = current(raw, plan)? else {
        return Ok(Vec::new());
    };
    let mut moved = Vec::new();
    let numbers = numbers(plan);
    for p in &mut plan.partitions {
        let now = kept(&table, p, raw, &numbers)?;
        if (now.start, now.len) != (p.start, p.size) {
            p.start = now.start;
            p.size = now.len;
            moved.push(Moved {
                number: p.number,
                start: now.start,
                size: now.len,
            });
        }
    }
    plan.validate().with_context(|| {
        format!(
            "after block-device.d the partition table of {} cannot hold kiln's filesystems",
            raw.display()
        )
    })?;
    Ok(moved)
}

/// Checks, before filesystems are written at the plan's offsets, that the table
/// still agrees with the plan (as [`adopt_table`] left it): filesystems written at
/// stale offsets would silently overwrite each other.
pub(crate) fn check(raw: &Path, plan: &DiskPlan) -> Result<()> {
    plan.validate()?;
    let Some(table) = current(raw, plan)? else {
        return Ok(());
    };
    let numbers = numbers(plan);
    for p in &plan.partitions {
        let now = kept(&table, p, raw, &numbers)?;
        if (now.start, now.len) != (p.start, p.size) {
            bail!(
                "partition {} of {} is {} bytes at offset {} but kiln planned {} bytes at {}: \
                 the table changed after kiln adopted it at the end of block-device.d",
                p.number,
                raw.display(),
                now.len,
                now.start,
                p.size,
                p.start
            );
        }
    }
    Ok(())
}

/// The table of `raw`, after checking what the policy fixes: the image's size and
/// the kind of table. None where the plan has no table.
fn current(raw: &Path, plan: &DiskPlan) -> Result<Option<Table>> {
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
    let want = match plan.table {
        TableKind::Gpt => Kind::Gpt,
        TableKind::Mbr => Kind::Mbr,
        TableKind::None => return Ok(None),
    };
    let found = partition::read(&mut Device::new(file.as_fd(), len))
        .with_context(|| format!("cannot read the partition table of {}", raw.display()))?;
    let name = |k: Kind| match k {
        Kind::Gpt => "a GPT",
        Kind::Mbr => "an MBR",
    };
    match found {
        Some(t) if t.kind == want => Ok(Some(t)),
        Some(t) => bail!(
            "{} now has {} where kiln laid out {}: a block-device.d hook may move kiln's \
             partitions but must keep the kind of table (kiln installs the bootloader for it)",
            raw.display(),
            name(t.kind),
            name(want)
        ),
        None => bail!(
            "{} has no partition table any more; kiln laid out {}: a block-device.d hook \
             that repartitions must keep kiln's partitions",
            raw.display(),
            name(want)
        ),
    }
}

fn numbers(plan: &DiskPlan) -> String {
    plan.partitions
        .iter()
        .map(|q| q.number.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Partition `number` of the table; its absence is the one change kiln cannot follow.
fn kept<'t>(
    table: &'t Table,
    planned: &Partition,
    raw: &Path,
    numbers: &str,
) -> Result<&'t partition::Partition> {
    table.partition(planned.number).with_context(|| {
        format!(
            "after block-device.d {} has no partition {} ({:?}) for kiln to fill; a hook that \
             repartitions must keep kiln's partitions (numbers {numbers})",
            raw.display(),
            planned.number,
            planned.role
        )
    })
}

#[cfg(test)]
mod tests;
