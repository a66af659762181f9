//! Partition tables, GPT and MBR: reading them from images and devices nobody
//! vouches for (every offset checked, both GPT checksums verified), and writing the
//! ones kiln lays out (docs/architecture.md §5).
//!
//! Read by disk-image-get-kernel (`kernel`), by kiln after block-device.d
//! (`disk::adopt_table`) and by kiln-helper, which runs as root: everything here is
//! the helper's attack surface, so this module imports nothing else of kiln and
//! does no more than tables need.

pub(crate) mod crc32;
mod device;
mod gpt;
mod magic;
mod mbr;

pub use device::Device;
pub use gpt::{write as write_gpt, GptEntry};
pub use magic::filesystem_at;
pub use mbr::{write as write_mbr, MbrEntry};

use anyhow::Result;

/// Bytes per logical sector that kiln writes; readers also find a GPT on 4 KiB sectors.
pub const SECTOR: u64 = 512;

/// Bytes a table is read from.
pub trait Disk {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; any byte past the end is an error.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gpt,
    Mbr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers them (MBR logical partitions from 5); 0 stands for
    /// a whole disk that holds a bare filesystem.
    pub number: u32,
    /// The GPT partition name; empty for MBR.
    pub name: String,
    /// Bytes from the start of the disk.
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub kind: Kind,
    /// In table order: GPT entry order, MBR primaries then logicals.
    pub partitions: Vec<Partition>,
}

impl Table {
    pub fn partition(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }
}

/// The partition table, GPT else MBR; None for a blank disk or a bare filesystem.
/// A corrupt table is an error, not None.
pub fn read<D: Disk + ?Sized>(disk: &mut D) -> Result<Option<Table>> {
    for sector in [SECTOR, 4096] {
        if let Some(partitions) = gpt::read(disk, sector)? {
            return Ok(Some(Table {
                kind: Kind::Gpt,
                partitions,
            }));
        }
    }
    // A bare filesystem first: vfat carries the 0x55AA signature an MBR does.
    let size = disk.size();
    if filesystem_at(disk, 0, size)?.is_some() {
        return Ok(None);
    }
    Ok(mbr::read(disk)?.map(|partitions| Table {
        kind: Kind::Mbr,
        partitions,
    }))
}

/// `len` bytes at `off`, or None where the disk ends before them.
fn read_bytes<D: Disk + ?Sized>(disk: &mut D, off: u64, len: usize) -> Result<Option<Vec<u8>>> {
    if off.checked_add(len as u64).is_none_or(|e| e > disk.size()) {
        return Ok(None);
    }
    let mut b = vec![0u8; len];
    disk.read_at(off, &mut b)?;
    Ok(Some(b))
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    le32(b, off) as u64 | (le32(b, off + 4) as u64) << 32
}

#[cfg(test)]
mod tests;
