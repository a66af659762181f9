//! GUID partition table: protective MBR, primary header and entries at the start,
//! backup entries and header at the end (UEFI 2.10 §5.3).

use super::layout::{DiskPlan, TableKind};
use super::tool::parse_uuid;
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

const SECTOR: u64 = 512;
const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
/// Sectors holding the entry array: 128 × 128 bytes.
const ENTRY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
const HEADER_SIZE: u32 = 92;

/// Writes the protective MBR and both copies of the GPT for `plan` into `file`, which
/// must already be `plan.size` bytes long.
pub(crate) fn write(file: &File, plan: &DiskPlan) -> Result<()> {
    ensure!(plan.table == TableKind::Gpt, "not a GPT plan");
    ensure!(
        plan.size.is_multiple_of(SECTOR),
        "image size is not a whole number of sectors"
    );
    let sectors = plan.size / SECTOR;
    ensure!(
        sectors > 3 + 2 * ENTRY_SECTORS,
        "an image of {} bytes cannot hold a GPT",
        plan.size
    );
    let last_lba = sectors - 1;
    let backup_entries_lba = last_lba - ENTRY_SECTORS;
    let first_usable = 2 + ENTRY_SECTORS;
    let last_usable = backup_entries_lba - 1;
    ensure!(
        plan.partitions.len() <= ENTRIES as usize,
        "too many partitions"
    );

    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in plan.partitions.iter().enumerate() {
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
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_bytes(&p.type_id)?);
        e[16..32].copy_from_slice(&guid_bytes(&p.uuid)?);
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
    let disk_guid = guid_bytes(&plan.disk_id)?;

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

    let at = |lba: u64| lba * SECTOR;
    let write = |data: &[u8], lba: u64| {
        file.write_all_at(data, at(lba))
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

/// (start, size) in bytes of each used entry of the primary GPT, in entry order.
pub(crate) fn read_partitions(file: &File) -> Result<Vec<(u64, u64)>> {
    let mut h = vec![0u8; SECTOR as usize];
    file.read_exact_at(&mut h, SECTOR)
        .context("cannot read the GPT header")?;
    if &h[0..8] != b"EFI PART" {
        bail!("no GPT header at sector 1");
    }
    let mut check = h[..HEADER_SIZE as usize].to_vec();
    check[16..20].fill(0);
    if crc32(&check) != u32_at(&h, 16) {
        bail!("the GPT header's checksum is wrong");
    }
    let entries_lba = u64_at(&h, 72);
    let count = u32_at(&h, 80) as usize;
    let size = u32_at(&h, 84) as usize;
    ensure!(
        size >= 128 && count <= 4096,
        "unsupported GPT entry array ({count} × {size})"
    );
    let mut entries = vec![0u8; count * size];
    file.read_exact_at(&mut entries, entries_lba * SECTOR)
        .context("cannot read the GPT entries")?;
    ensure!(
        crc32(&entries) == u32_at(&h, 88),
        "the GPT entries' checksum is wrong"
    );
    Ok(entries
        .chunks(size)
        .filter(|e| e[0..16].iter().any(|b| *b != 0))
        .map(|e| {
            (
                u64_at(e, 32) * SECTOR,
                (u64_at(e, 40) + 1 - u64_at(e, 32)) * SECTOR,
            )
        })
        .collect())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// GUIDs are stored with their first three fields little-endian ("mixed endian").
fn guid_bytes(text: &str) -> Result<[u8; 16]> {
    let mut b = parse_uuid(text)?;
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Ok(b)
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 as GPT uses it (IEEE 802.3, reflected, as zlib's crc32).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, b| {
        CRC_TABLE[((c ^ *b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{lay_out, plan_disk, FsType};

    #[test]
    fn crc32_matches_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guid_is_mixed_endian() {
        let b = guid_bytes("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap();
        assert_eq!(b[..8], [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11]);
        assert_eq!(b[8..], [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]);
    }

    fn sfdisk_json(path: &std::path::Path) -> Option<serde_json::Value> {
        let out = std::process::Command::new("sfdisk")
            .arg("-J")
            .arg(path)
            .output()
            .ok()?;
        assert!(
            out.status.success(),
            "sfdisk -J: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).ok()
    }

    #[test]
    fn gpt_written_reads_back_with_sfdisk() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let plan = plan_disk(
            crate::disk::Layout::Gpt,
            FsType::Ext4,
            300 << 20,
            "root",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
        .unwrap();
        lay_out(&raw, &plan).unwrap();
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 300 << 20);

        let file = File::open(&raw).unwrap();
        let ours = read_partitions(&file).unwrap();
        assert_eq!(
            ours,
            plan.partitions
                .iter()
                .map(|p| (p.start, p.size))
                .collect::<Vec<_>>()
        );

        let Some(json) = sfdisk_json(&raw) else {
            crate::test_tools::missing("sfdisk");
            return;
        };
        let t = &json["partitiontable"];
        assert_eq!(t["label"], "gpt");
        assert_eq!(t["id"].as_str().unwrap().to_lowercase(), plan.disk_id);
        assert_eq!(t["firstlba"], 34);
        assert_eq!(t["lastlba"], (300 << 11) - 34);
        let parts = t["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        for (j, p) in parts.iter().zip(&plan.partitions) {
            assert_eq!(j["start"].as_u64().unwrap() * 512, p.start);
            assert_eq!(j["size"].as_u64().unwrap() * 512, p.size);
            assert_eq!(j["type"].as_str().unwrap().to_lowercase(), p.type_id);
            assert_eq!(j["uuid"].as_str().unwrap().to_lowercase(), p.uuid);
            assert_eq!(j["name"], p.name.as_str());
        }
        // sfdisk prints a warning and still succeeds when the backup table is bad:
        // make it verify both copies.
        let out = std::process::Command::new("sfdisk")
            .arg("--verify")
            .arg(&raw)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !text.contains("corrupt"), "{text}");
    }

    #[test]
    fn corrupted_header_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let plan = plan_disk(
            crate::disk::Layout::Efi,
            FsType::Ext4,
            200 << 20,
            "root",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
        .unwrap();
        lay_out(&raw, &plan).unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&raw)
            .unwrap();
        file.write_all_at(&[0xff], 512 + 40).unwrap();
        assert!(read_partitions(&file)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
    }
}
