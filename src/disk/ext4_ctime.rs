//! `mke2fs -d` copies each file's change time (ctime) from the tree, and no
//! system call can set a ctime: it is the moment kiln last touched the file.
//! For reproducible outputs kiln clamps the ctimes in the new filesystem's
//! inode tables to SOURCE_DATE_EPOCH afterwards, and re-checksums the inodes
//! it changed (metadata_csum). Only filesystems kiln just made come here.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: u16 = 0xEF53;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;

/// Inode fields (offsets in the on-disk inode).
const I_CTIME: usize = 0x0C;
const I_GENERATION: usize = 0x64;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

struct Geometry {
    block_size: u64,
    groups: u64,
    inodes_per_group: u64,
    inode_size: usize,
    desc_size: usize,
    descriptors_at: u64,
    /// The metadata checksum seed, when inodes carry checksums.
    csum_seed: Option<u32>,
}

fn geometry(sb: &[u8]) -> Result<Geometry> {
    if le16(sb, 0x38) != MAGIC {
        bail!("no ext2/3/4 superblock");
    }
    let incompat = le32(sb, 0x60);
    if incompat & INCOMPAT_META_BG != 0 {
        bail!("meta_bg filesystems are not supported for reproducible output (drop -O meta_bg)");
    }
    let block_size = 1024u64 << le32(sb, 0x18).min(6);
    let wide = incompat & INCOMPAT_64BIT != 0;
    let blocks = u64::from(le32(sb, 0x04))
        | if wide {
            u64::from(le32(sb, 0x150)) << 32
        } else {
            0
        };
    let first_data_block = u64::from(le32(sb, 0x14));
    let per_group = u64::from(le32(sb, 0x20)).max(1);
    let inode_size = usize::from(le16(sb, 0x58));
    if !(128..=4096).contains(&inode_size) {
        bail!("implausible inode size {inode_size}");
    }
    let desc_size = if wide {
        usize::from(le16(sb, 0xFE)).max(32)
    } else {
        32
    };
    let csum_seed = (le32(sb, 0x64) & RO_COMPAT_METADATA_CSUM != 0).then(|| {
        if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(sb, 0x270)
        } else {
            crc32c(!0, &sb[0x68..0x78])
        }
    });
    Ok(Geometry {
        block_size,
        groups: (blocks - first_data_block).div_ceil(per_group),
        inodes_per_group: u64::from(le32(sb, 0x28)),
        inode_size,
        desc_size,
        descriptors_at: (first_data_block + 1) * block_size,
        csum_seed,
    })
}

/// Sets the ctime of every in-use inode later than `epoch` to `epoch`, in the
/// filesystem that starts `offset` bytes into `image`. Returns how many changed.
pub(crate) fn clamp_ctimes(image: &Path, offset: u64, epoch: i64) -> Result<u64> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("cannot open {}", image.display()))?;
    clamp_in(&f, offset, epoch).with_context(|| {
        format!(
            "cannot clamp the change times of the filesystem at byte {offset} of {}",
            image.display()
        )
    })
}

fn clamp_in(f: &File, offset: u64, epoch: i64) -> Result<u64> {
    let mut sb = vec![0u8; 1024];
    f.read_exact_at(&mut sb, offset + 1024)?;
    let g = geometry(&sb)?;
    let stamp = u32::try_from(epoch.clamp(0, i64::from(i32::MAX))).unwrap_or(0);
    let mut changed = 0;
    let mut desc = vec![0u8; g.desc_size];
    let mut bitmap = vec![0u8; g.block_size as usize];
    let mut table = vec![0u8; g.inodes_per_group as usize * g.inode_size];
    for group in 0..g.groups {
        f.read_exact_at(
            &mut desc,
            offset + g.descriptors_at + group * g.desc_size as u64,
        )?;
        if le16(&desc, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let hi = |at: usize| {
            if g.desc_size >= 64 {
                u64::from(le32(&desc, at)) << 32
            } else {
                0
            }
        };
        let bitmap_block = u64::from(le32(&desc, 0x04)) | hi(0x24);
        let table_block = u64::from(le32(&desc, 0x08)) | hi(0x28);
        f.read_exact_at(&mut bitmap, offset + bitmap_block * g.block_size)?;
        let table_at = offset + table_block * g.block_size;
        f.read_exact_at(&mut table, table_at)?;
        let mut dirty = false;
        for i in 0..g.inodes_per_group as usize {
            if bitmap[i / 8] & (1 << (i % 8)) == 0 {
                continue;
            }
            let inode = &mut table[i * g.inode_size..(i + 1) * g.inode_size];
            if i64::from(le32(inode, I_CTIME) as i32) <= epoch {
                continue;
            }
            inode[I_CTIME..I_CTIME + 4].copy_from_slice(&stamp.to_le_bytes());
            let extra = if g.inode_size > 128 {
                usize::from(le16(inode, I_EXTRA_ISIZE))
            } else {
                0
            };
            if extra >= I_CTIME_EXTRA + 4 - 128 {
                inode[I_CTIME_EXTRA..I_CTIME_EXTRA + 4].fill(0);
            }
            if let Some(seed) = g.csum_seed {
                let ino = group * g.inodes_per_group + i as u64 + 1;
                checksum(inode, seed, ino as u32, extra);
            }
            dirty = true;
            changed += 1;
        }
        if dirty {
            f.write_all_at(&table, table_at)?;
        }
    }
    Ok(changed)
}

/// ext4's inode checksum: crc32c over the inode number, its generation and
/// the inode with the checksum fields zeroed; low half in i_checksum_lo, high
/// half in i_checksum_hi when the inode has room for it.
fn checksum(inode: &mut [u8], seed: u32, ino: u32, extra: usize) {
    let has_hi = extra >= I_CHECKSUM_HI + 2 - 128;
    inode[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].fill(0);
    if has_hi {
        inode[I_CHECKSUM_HI..I_CHECKSUM_HI + 2].fill(0);
    }
    let mut crc = crc32c(seed, &ino.to_le_bytes());
    crc = crc32c(crc, &inode[I_GENERATION..I_GENERATION + 4]);
    crc = crc32c(crc, inode);
    inode[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].copy_from_slice(&(crc as u16).to_le_bytes());
    if has_hi {
        inode[I_CHECKSUM_HI..I_CHECKSUM_HI + 2]
            .copy_from_slice(&((crc >> 16) as u16).to_le_bytes());
    }
}

const CRC32C_TABLE: [u32; 256] = crate::partition::crc32::reflected_table(0x82F6_3B78);

/// CRC-32C (Castagnoli) without the customary pre- and post-inversion, as the
/// kernel's `crc32c()` that ext4 chains through its checksums.
fn crc32c(crc: u32, data: &[u8]) -> u32 {
    crate::partition::crc32::update(&CRC32C_TABLE, crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn clamped_filesystems_pass_e2fsck_and_show_the_epoch() {
        if !crate::test_tools::have("mke2fs") || !crate::test_tools::have("e2fsck") {
            return;
        }
        let t = tempfile::TempDir::new().unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/sub")).unwrap();
        for i in 0..200 {
            std::fs::write(tree.join(format!("etc/sub/f{i}")), format!("{i}\n")).unwrap();
        }
        let offset = 1u64 << 20;
        let image = t.path().join("disk.raw");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(offset + (32 << 20))
            .unwrap();
        let ok = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-E"])
            .arg(format!("offset={offset}"))
            .arg("-d")
            .arg(&tree)
            .arg(&image)
            .arg("32M")
            .status()
            .unwrap();
        assert!(ok.success());
        let epoch = 1_000_000_000;
        let n = clamp_ctimes(&image, offset, epoch).unwrap();
        assert!(n >= 203, "only {n} inodes clamped");
        assert_eq!(clamp_ctimes(&image, offset, epoch).unwrap(), 0);
        // e2fsck cannot seek to a partition: check a copy of the filesystem alone.
        let alone = t.path().join("fs.raw");
        let bytes = std::fs::read(&image).unwrap();
        std::fs::write(&alone, &bytes[offset as usize..]).unwrap();
        crate::test_tools::assert_e2fsck_clean(&alone);
        let stat = Command::new("debugfs")
            .args(["-R", "stat /etc/sub/f7"])
            .arg(&alone)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&stat.stdout);
        assert!(text.contains(" ctime: 0x3b9aca00:"), "{text}");
    }
}
