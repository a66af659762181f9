//! Where the filesystems are: the partitions of a GPT or an MBR (with logical
//! partitions), or one filesystem spanning the whole disk.

use super::image::Disk;
use super::probe;
use crate::partition::{Kind, Partition};
use anyhow::{bail, Result};

/// The table's kind (None for a bare filesystem) and the partitions to look in.
pub fn find(disk: &mut dyn Disk) -> Result<(Option<Kind>, Vec<Partition>)> {
    if let Some(table) = crate::partition::read(disk)? {
        return Ok((Some(table.kind), table.partitions));
    }
    let size = disk.size();
    if probe::identify_at(disk, 0, size)?.is_some() {
        return Ok((
            None,
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
