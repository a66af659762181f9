//! GUID partition table: protective MBR, primary header and entries at the start,
//! backup entries and header at the end (UEFI 2.10 §5.3).

use super::crc32::crc32;
use super::{le32, le64, read_bytes, Disk, Partition, SECTOR};
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
/// Sectors holding the entry array kiln writes: 128 × 128 bytes.
const ENTRY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
const HEADER_SIZE: u32 = 92;

/// The partitions of the primary GPT on `sector`-byte sectors; None where sector 1
/// holds no GPT header. Both checksums must match, and every offset is checked:
/// the table may come from any image.
pub(super) fn read<D: Disk + ?Sized>(disk: &mut D, sector: u64) -> Result<Option<Vec<Partition>>> {
    let Some(h) = read_bytes(disk, sector, sector as usize)? else {
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
        Some(off) => read_bytes(disk, off, (count * entry_len) as usize)?,
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

/// One partition to write; GUIDs in RFC 4122 byte order (as text reads).
pub struct GptEntry<'a> {
    /// 1 to 128: the entry's slot, and the kernel's partition number.
    pub number: u32,
    pub type_guid: [u8; 16],
    pub uuid: [u8; 16],
    /// Bytes, sector aligned.
    pub start: u64,
    pub size: u64,
    pub name: &'a str,
}

/// Writes the protective MBR and both copies of the GPT into `file`, which must
/// already be `size` bytes long.
pub fn write(file: &File, size: u64, disk_guid: [u8; 16], partitions: &[GptEntry]) -> Result<()> {
    ensure!(
        size.is_multiple_of(SECTOR),
        "image size is not a whole number of sectors"
    );
    let sectors = size / SECTOR;
    ensure!(
        sectors > 3 + 2 * ENTRY_SECTORS,
        "an image of {size} bytes cannot hold a GPT"
    );
    let last_lba = sectors - 1;
    let backup_entries_lba = last_lba - ENTRY_SECTORS;
    let first_usable = 2 + ENTRY_SECTORS;
    let last_usable = backup_entries_lba - 1;
    ensure!(partitions.len() <= ENTRIES as usize, "too many partitions");

    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let mut used = [false; ENTRIES as usize];
    for p in partitions {
        ensure!(
            (1..=ENTRIES).contains(&p.number) && !used[p.number as usize - 1],
            "partition number {} is out of 1..={ENTRIES} or used twice",
            p.number
        );
        used[p.number as usize - 1] = true;
        ensure!(
            p.start.is_multiple_of(SECTOR) && p.size.is_multiple_of(SECTOR) && p.size > 0,
            "partition {} is not sector aligned",
            p.number
        );
        let first = p.start / SECTOR;
        let last = first + p.size / SECTOR - 1;
        ensure!(
            first >= first_usable && last <= last_usable,
            "partition {} ({}..{}) lies outside the usable sectors {}..{}",
            p.number,
            first,
            last,
            first_usable,
            last_usable
        );
        let i = p.number as usize - 1;
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&mixed_endian(p.type_guid));
        e[16..32].copy_from_slice(&mixed_endian(p.uuid));
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        ensure!(
            name.len() <= 36,
            "partition name {:?} is longer than 36 characters",
            p.name
        );
        for (j, c) in name.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);
    let disk_guid = mixed_endian(disk_guid);

    let header = |my: u64, alternate: u64, entries_lba: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };

    let write = |data: &[u8], lba: u64| {
        file.write_all_at(data, lba * SECTOR)
            .with_context(|| format!("cannot write the GPT at sector {lba}"))
    };
    write(&protective_mbr(sectors), 0)?;
    write(&header(1, last_lba, 2), 1)?;
    write(&entries, 2)?;
    write(&entries, backup_entries_lba)?;
    write(&header(last_lba, 1, backup_entries_lba), last_lba)?;
    Ok(())
}

/// One partition entry covering the whole disk with type 0xEE, so MBR-only tools see
/// the disk as in use.
fn protective_mbr(sectors: u64) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xee;
    e[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let count = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&count.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// GUIDs are stored with their first three fields little-endian ("mixed endian").
pub(super) fn mixed_endian(mut b: [u8; 16]) -> [u8; 16] {
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}
