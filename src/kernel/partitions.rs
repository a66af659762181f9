//! Where the filesystems are: a GPT, an MBR (with logical partitions), or one
//! filesystem spanning the whole disk.

use super::image::Disk;
use super::probe;
use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// 1-based, as Linux numbers them (MBR logical partitions from 5); 0 for a whole disk.
    pub number: u32,
    pub name: String,
    pub start: u64,
    pub len: u64,
}

impl Partition {
    pub fn describe(&self) -> String {
        match (self.number, self.name.is_empty()) {
            (0, _) => "the whole disk".to_string(),
            (n, true) => format!("partition {n}"),
            (n, false) => format!("partition {n} ({:?})", self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Table {
    Gpt,
    Mbr,
    None,
}

pub fn find(disk: &mut dyn Disk) -> Result<(Table, Vec<Partition>)> {
    if let Some(found) = table_only(disk)? {
        return Ok(found);
    }
    let size = disk.size();
    if probe::identify_at(disk, 0, size)?.is_some() {
        return Ok((
            Table::None,
            vec![Partition {
                number: 0,
                name: String::new(),
                start: 0,
                len: size,
            }],
        ));
    }
    bail!("not a disk image: no qcow2 header, no partition table and no filesystem found");
}

/// The partition table alone, GPT else MBR; None for a blank disk or a bare
/// filesystem (kiln-helper reads what a user may have just partitioned).
pub fn table_only(disk: &mut dyn Disk) -> Result<Option<(Table, Vec<Partition>)>> {
    for sector in [512u64, 4096] {
        if let Some(parts) = gpt(disk, sector)? {
            return Ok(Some((Table::Gpt, parts)));
        }
    }
    // A bare filesystem first: vfat carries the 0x55AA signature an MBR does.
    let size = disk.size();
    if probe::identify_at(disk, 0, size)?.is_some() {
        return Ok(None);
    }
    Ok(mbr(disk)?.map(|parts| (Table::Mbr, parts)))
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    le32(b, off) as u64 | (le32(b, off + 4) as u64) << 32
}

fn read(disk: &mut dyn Disk, off: u64, len: usize) -> Result<Option<Vec<u8>>> {
    if off.checked_add(len as u64).is_none_or(|e| e > disk.size()) {
        return Ok(None);
    }
    let mut b = vec![0u8; len];
    disk.read_at(off, &mut b)?;
    Ok(Some(b))
}

fn gpt(disk: &mut dyn Disk, sector: u64) -> Result<Option<Vec<Partition>>> {
    let Some(h) = read(disk, sector, sector as usize)? else {
        return Ok(None);
    };
    if &h[..8] != b"EFI PART" {
        return Ok(None);
    }
    let header_len = le32(&h, 12) as usize;
    if !(92..=sector as usize).contains(&header_len) {
        bail!("the GPT header is corrupt (header size {header_len})");
    }
    let mut copy = h[..header_len].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != le32(&h, 16) {
        bail!("the GPT header checksum does not match: the partition table is corrupt");
    }
    let entries_lba = le64(&h, 72);
    let count = le32(&h, 80) as u64;
    let entry_len = le32(&h, 84) as u64;
    if entry_len < 128 || !entry_len.is_multiple_of(8) || count * entry_len > 4 << 20 {
        bail!("the GPT header is corrupt ({count} entries of {entry_len} bytes)");
    }
    let array_off = entries_lba.checked_mul(sector);
    let Some(array) = (match array_off {
        Some(off) => read(disk, off, (count * entry_len) as usize)?,
        None => None,
    }) else {
        bail!("the GPT partition entries lie past the end of the image: is it truncated?");
    };
    if crc32(&array) != le32(&h, 88) {
        bail!("the GPT partition entries' checksum does not match: the partition table is corrupt");
    }
    let mut parts = Vec::new();
    for (i, e) in array.chunks_exact(entry_len as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let span = last
            .checked_sub(first)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(sector));
        let start = first.checked_mul(sector);
        let (Some(start), Some(len)) = (start, span) else {
            bail!("GPT entry {} is corrupt (LBA {first}..{last})", i + 1);
        };
        if start.checked_add(len).is_none() {
            bail!("GPT entry {} is corrupt (LBA {first}..{last})", i + 1);
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        parts.push(Partition {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&units),
            start,
            len,
        });
    }
    Ok(Some(parts))
}

fn mbr(disk: &mut dyn Disk) -> Result<Option<Vec<Partition>>> {
    let Some(s) = read(disk, 0, 512)? else {
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
                start: first * 512,
                len: count * 512,
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
fn extended(
    disk: &mut dyn Disk,
    base: u64,
    parts: &mut Vec<Partition>,
    logical: &mut u32,
) -> Result<()> {
    let mut ebr = base;
    for _ in 0..128 {
        let Some(s) = read(disk, ebr * 512, 512)? else {
            bail!("an extended partition's boot record lies past the end of the image: is it truncated?");
        };
        if s[510..512] != [0x55, 0xaa] {
            bail!("an extended partition's boot record (sector {ebr}) is corrupt");
        }
        let (this, next) = (&s[446..462], &s[462..478]);
        if this[4] != 0 {
            let start = (ebr + le32(this, 8) as u64) * 512;
            parts.push(Partition {
                number: *logical,
                name: String::new(),
                start,
                len: le32(this, 12) as u64 * 512,
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

/// CRC-32 (IEEE, reflected), as the GPT uses; a few hundred bytes per image do not
/// justify a crate.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                crc >> 1 ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn describes_partitions_for_people() {
        let p = Partition {
            number: 3,
            name: "root".into(),
            start: 0,
            len: 0,
        };
        assert_eq!(p.describe(), "partition 3 (\"root\")");
        assert_eq!(
            Partition {
                number: 0,
                ..p.clone()
            }
            .describe(),
            "the whole disk"
        );
    }
}
