//! What filesystem starts at an offset, by its magic number. The table reader needs
//! it (a vfat boot sector carries the 0x55AA signature an MBR does), and
//! disk-image-get-kernel names what a partition holds with it.

use super::Disk;
use anyhow::Result;

/// (offset, magic, name), checked in order.
const MAGICS: &[(u64, &[u8], &str)] = &[
    (1024 + 0x38, &[0x53, 0xef], "ext"),
    (0, b"XFSB", "xfs"),
    (0x10040, b"_BHRfS_M", "btrfs"),
    (0, b"hsqs", "squashfs"),
    (1024, &[0xe2, 0xe1, 0xf5, 0xe0], "erofs"),
    (1024, &[0x10, 0x20, 0xf5, 0xf2], "f2fs"),
    (0, b"LUKS\xba\xbe", "LUKS (encrypted)"),
    (512, b"LABELONE", "LVM physical volume"),
    (4096 - 10, b"SWAPSPACE2", "swap"),
    (0x52, b"FAT32   ", "vfat"),
    (0x36, b"FAT1", "vfat"),
    (0x36, b"FAT   ", "vfat"),
    (0x8001, b"CD001", "iso9660"),
    (3, b"NTFS    ", "ntfs"),
    (0x10000 + 0x34, b"ReIsEr", "reiserfs"),
];

/// The name of the filesystem in the `len` bytes at `start` ("ext" for ext2/3/4);
/// a magic that would lie past the volume or the disk does not match.
pub fn filesystem_at<D: Disk + ?Sized>(
    disk: &mut D,
    start: u64,
    len: u64,
) -> Result<Option<&'static str>> {
    for &(off, magic, name) in MAGICS {
        let Some(end) = off.checked_add(magic.len() as u64) else {
            continue;
        };
        if end > len || start.saturating_add(end) > disk.size() {
            continue;
        }
        let mut found = vec![0u8; magic.len()];
        disk.read_at(start + off, &mut found)?;
        if found == magic {
            return Ok(Some(name));
        }
    }
    Ok(None)
}
