//! MS-DOS partition table: four primary entries in sector 0, logical partitions in
//! a chain of extended boot records. kiln writes primaries only (diskimage-builder's
//! block-device-mbr layout).

use super::{le32, read_bytes, Disk, Partition, SECTOR};
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The primary and logical partitions; None where sector 0 holds no MBR.
pub(super) fn read<D: Disk + ?Sized>(disk: &mut D) -> Result<Option<Vec<Partition>>> {
    let Some(s) = read_bytes(disk, 0, 512)? else {
        return Ok(None);
    };
    if s[510..512] != [0x55, 0xaa] {
        return Ok(None);
    }
    let entries: Vec<&[u8]> = s[446..510].chunks_exact(16).collect();
    // Boot code that merely ends in 0x55AA has junk here.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(None);
    }
    let mut parts = Vec::new();
    let mut logical = 5;
    for (i, e) in entries.iter().enumerate() {
        let (kind, first, count) = (e[4], le32(e, 8) as u64, le32(e, 12) as u64);
        match kind {
            0 => {}
            0xee => bail!("the MBR is a GPT protective one, but no valid GPT header was found"),
            0x05 | 0x0f | 0x85 => extended(disk, first, &mut parts, &mut logical)?,
            _ => parts.push(Partition {
                number: i as u32 + 1,
                name: String::new(),
                start: first * SECTOR,
                len: count * SECTOR,
            }),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts))
}

/// Logical partitions: a chain of EBRs, each giving one partition (relative to
/// itself) and the next EBR (relative to the extended partition).
fn extended<D: Disk + ?Sized>(
    disk: &mut D,
    base: u64,
    parts: &mut Vec<Partition>,
    logical: &mut u32,
) -> Result<()> {
    let mut ebr = base;
    for _ in 0..128 {
        let Some(s) = read_bytes(disk, ebr * SECTOR, 512)? else {
            bail!("an extended partition's boot record lies past the end of the image: is it truncated?");
        };
        if s[510..512] != [0x55, 0xaa] {
            bail!("an extended partition's boot record (sector {ebr}) is corrupt");
        }
        let (this, next) = (&s[446..462], &s[462..478]);
        if this[4] != 0 {
            let start = (ebr + le32(this, 8) as u64) * SECTOR;
            parts.push(Partition {
                number: *logical,
                name: String::new(),
                start,
                len: le32(this, 12) as u64 * SECTOR,
            });
            *logical += 1;
        }
        if next[4] == 0 {
            return Ok(());
        }
        ebr = base + le32(next, 8) as u64;
    }
    bail!("the chain of logical partitions does not end: the partition table is corrupt");
}

/// One primary partition to write.
pub struct MbrEntry {
    /// 1 to 4: the entry's slot.
    pub number: u32,
    /// Bytes, sector aligned.
    pub start: u64,
    pub size: u64,
    /// The type byte, e.g. 0x83 for Linux.
    pub kind: u8,
    pub bootable: bool,
}

/// Writes the disk signature and the four primary entries; the boot code before
/// them (bytes 0..440) is left alone: it may already hold GRUB's.
pub fn write(file: &File, signature: u32, partitions: &[MbrEntry]) -> Result<()> {
    ensure!(
        partitions.len() <= 4,
        "an MBR holds at most 4 primary partitions"
    );
    let mut table = [0u8; 72];
    table[0..4].copy_from_slice(&signature.to_le_bytes());
    let mut used = [false; 4];
    for p in partitions {
        ensure!(
            (1..=4).contains(&p.number) && !used[p.number as usize - 1],
            "MBR partition number {} is out of 1..=4 or used twice",
            p.number
        );
        used[p.number as usize - 1] = true;
        let first = p.start / SECTOR;
        let count = p.size / SECTOR;
        ensure!(
            p.start.is_multiple_of(SECTOR) && p.size.is_multiple_of(SECTOR) && count > 0,
            "partition {} is not sector aligned",
            p.number
        );
        let (Ok(first32), Ok(count32)) = (u32::try_from(first), u32::try_from(count)) else {
            bail!(
                "partition {} ends beyond 2 TiB, which an MBR cannot describe: use GPT",
                p.number
            );
        };
        let i = p.number as usize - 1;
        let e = &mut table[6 + 16 * i..6 + 16 * (i + 1)];
        e[0] = if p.bootable { 0x80 } else { 0 };
        e[1..4].copy_from_slice(&chs(first));
        e[4] = p.kind;
        e[5..8].copy_from_slice(&chs(first + count - 1));
        e[8..12].copy_from_slice(&first32.to_le_bytes());
        e[12..16].copy_from_slice(&count32.to_le_bytes());
    }
    table[70] = 0x55;
    table[71] = 0xaa;
    file.write_all_at(&table, 440)
        .context("cannot write the MBR")
}

/// CHS address in the 255-head, 63-sector geometry every tool assumes; addresses
/// beyond its reach are written as the maximum, as fdisk does.
pub(super) fn chs(lba: u64) -> [u8; 3] {
    let (heads, secs) = (255u64, 63u64);
    let c = lba / (heads * secs);
    if c > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let h = (lba / secs) % heads;
    let s = lba % secs + 1;
    [
        h as u8,
        (s as u8) | (((c >> 2) & 0xc0) as u8),
        (c & 0xff) as u8,
    ]
}
