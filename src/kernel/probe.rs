//! What a partition holds, by its magic numbers: ext2/3/4 we read; the others we
//! name, so that "no kernel found" can say why.

use super::image::{Disk, Volume};
use anyhow::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fs {
    Ext,
    Other(&'static str),
}

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

pub fn identify(vol: &mut Volume) -> Result<Option<Fs>> {
    for &(off, magic, name) in MAGICS {
        if vol.peek(off, magic.len())?.as_deref() == Some(magic) {
            return Ok(Some(if name == "ext" {
                Fs::Ext
            } else {
                Fs::Other(name)
            }));
        }
    }
    Ok(None)
}

pub fn identify_at(disk: &mut dyn Disk, start: u64, len: u64) -> Result<Option<Fs>> {
    identify(&mut Volume::new(disk, start, len))
}
