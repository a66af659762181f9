//! MS-DOS partition table with one bootable Linux partition (diskimage-builder's
//! block-device-mbr layout).

use super::layout::{DiskPlan, TableKind, MBR_TYPE_LINUX};
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

const SECTOR: u64 = 512;

pub(crate) fn write(file: &File, plan: &DiskPlan) -> Result<()> {
    ensure!(plan.table == TableKind::Mbr, "not an MBR plan");
    ensure!(
        plan.partitions.len() <= 4,
        "an MBR holds at most 4 primary partitions"
    );
    let signature = u32::from_str_radix(&plan.disk_id, 16)
        .with_context(|| format!("MBR disk signature {:?} is not 8 hex digits", plan.disk_id))?;
    // Only the partition table area: boot code bytes 0..440 may already hold GRUB's.
    let mut table = [0u8; 72];
    table[0..4].copy_from_slice(&signature.to_le_bytes());
    for (i, p) in plan.partitions.iter().enumerate() {
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
        let e = &mut table[6 + 16 * i..6 + 16 * (i + 1)];
        e[0] = if i == 0 { 0x80 } else { 0 };
        e[1..4].copy_from_slice(&chs(first));
        e[4] = MBR_TYPE_LINUX;
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
fn chs(lba: u64) -> [u8; 3] {
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

/// (start, size) in bytes of each used primary partition.
pub(crate) fn read_partitions(file: &File) -> Result<Vec<(u64, u64)>> {
    let mut m = [0u8; 512];
    file.read_exact_at(&mut m, 0)
        .context("cannot read the MBR")?;
    ensure!(
        m[510] == 0x55 && m[511] == 0xaa,
        "no MBR signature at sector 0"
    );
    Ok((0..4)
        .map(|i| &m[446 + 16 * i..462 + 16 * i])
        .filter(|e| e[4] != 0)
        .map(|e| {
            let first = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64;
            let count = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
            (first * SECTOR, count * SECTOR)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{lay_out, plan_disk, FsType};

    #[test]
    fn chs_of_first_sectors_and_overflow() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(1 << 30), [0xfe, 0xff, 0xff]);
    }

    #[test]
    fn mbr_written_reads_back_with_sfdisk() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let plan = plan_disk(
            crate::disk::Layout::Mbr,
            FsType::Ext4,
            100 << 20,
            "root",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
        .unwrap();
        lay_out(&raw, &plan).unwrap();
        let file = File::open(&raw).unwrap();
        assert_eq!(read_partitions(&file).unwrap(), vec![(1 << 20, 99 << 20)]);

        let Ok(out) = std::process::Command::new("sfdisk")
            .arg("-J")
            .arg(&raw)
            .output()
        else {
            crate::test_tools::missing("sfdisk");
            return;
        };
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &json["partitiontable"];
        assert_eq!(t["label"], "dos");
        assert_eq!(t["id"].as_str().unwrap(), format!("0x{}", plan.disk_id));
        let p = &t["partitions"][0];
        assert_eq!(
            (p["start"].as_u64(), p["size"].as_u64()),
            (Some(2048), Some(99 * 2048))
        );
        assert_eq!(p["type"], "83");
        assert_eq!(p["bootable"], true);
    }
}
