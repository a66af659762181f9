//! With SOURCE_DATE_EPOCH set, the tree is made independent of when and where
//! it was built before any output is written (docs/architecture.md §12): files
//! that only record the build's own run are removed, and every time is clamped.

use crate::tree::{ImageTree, Kind};
use anyhow::Result;
use std::path::Path;

/// Written during the build with the wall clock or the build host's inode
/// numbers, and of no use in the image: the package tools' logs (apt and dpkg
/// start new ones), and ldconfig's cache of library mtimes (ldconfig rebuilds
/// it). mmdebstrap removes the same files for its reproducible mode.
const RUN_RECORDS: [&str; 7] = [
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/cache/ldconfig/aux-cache",
];

pub struct Normalised {
    pub removed: Vec<&'static str>,
    pub clamped: u64,
}

pub fn normalise(tree: &ImageTree, epoch: i64) -> Result<Normalised> {
    let mut removed = Vec::new();
    for rel in RUN_RECORDS {
        // A link or directory there is the image's business, not a log.
        if tree.kind(Path::new(rel)) == Some(Kind::File) && tree.remove_file(Path::new(rel))? {
            removed.push(rel);
        }
    }
    let clamped = tree.clamp_times(epoch)?;
    Ok(Normalised { removed, clamped })
}
