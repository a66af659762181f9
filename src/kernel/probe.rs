//! What a partition holds, by its magic numbers (partition::filesystem_at): ext2/3/4
//! we read; the others we name, so that "no kernel found" can say why.

use super::image::Disk;
use anyhow::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fs {
    Ext,
    Other(&'static str),
}

pub fn identify_at(disk: &mut dyn Disk, start: u64, len: u64) -> Result<Option<Fs>> {
    Ok(
        crate::partition::filesystem_at(disk, start, len)?.map(|name| match name {
            "ext" => Fs::Ext,
            other => Fs::Other(other),
        }),
    )
}
