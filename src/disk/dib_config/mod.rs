//! diskimage-builder's `DIB_BLOCK_DEVICE_CONFIG`: the YAML configuration of DIB's
//! block-device library, mapped onto the layouts kiln builds without root.
//!
//! DIB's configuration is a list of plugin entries (`local_loop`, `partitioning`,
//! `lvm`, `mkfs`, `mount`, `fstab`), each either written out as a graph (every entry
//! names its `base`) or nested as a tree (a `mkfs` inside a partition, a `mount` inside
//! the `mkfs`, ...); both are read here the way DIB's `config_tree_to_graph` reads
//! them. The older dict form (a mapping from plugin to options, or from plugin to
//! named instances: `local_loop: {image0: }`, `partitioning: {image0: {label: ..}}`)
//! and the `[plugin, options]` pairs of DIB's first block-device spec are read too.
//!
//! kiln builds one disk with one root filesystem and, per layout, the partitions the
//! bootloader needs; whatever else a configuration asks for (LVM, a separate `/var`,
//! swap, a fixed disk size, a fixed filesystem UUID, a second image, ...) is refused
//! with an error that says what is unsupported and what kiln supports, rather than
//! built differently from what was asked.
//!
//! The reading goes in steps: [`graph`] turns the YAML into DIB's graph of entries,
//! [`analyse`] checks the graph, the disk and the root filesystem, with
//! [`filesystems`] linking each mkfs to its mount and fstab entry and [`partitioned`]
//! mapping a partition table onto kiln's layouts; [`values`] reads option values.

mod analyse;
mod filesystems;
mod graph;
mod partitioned;
mod values;

#[cfg(test)]
mod tests;

use anyhow::{anyhow, Result};
use std::fmt;

/// What kiln can build; appended to refusals of a layout.
const SUPPORTED: &str =
    "supported: gpt (bios boot + ESP + root), efi (ESP + root), mbr (root), or a bare filesystem";

/// The label diskimage-builder gives the root filesystem when none is configured.
const DIB_DEFAULT_ROOT_LABEL: &str = "cloudimg-rootfs";

/// The layout a `DIB_BLOCK_DEVICE_CONFIG` describes, in kiln's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DibLayout {
    /// `"gpt"`, `"efi"`, `"mbr"` or `"none"`, as `Layout::parse` reads them.
    pub layout: &'static str,
    /// The root filesystem's `mkfs` `type`, when the configuration names one
    /// (DIB then ignores `FS_TYPE` for it).
    pub fs_type: Option<String>,
    /// The root filesystem's label, when the configuration sets one other than DIB's
    /// default `cloudimg-rootfs` (DIB labels a filesystem by its node name when it has
    /// no `label`, except `mkfs_root`, which takes `--root-label`).
    pub root_label: Option<String>,
}

/// Parses DIB_BLOCK_DEVICE_CONFIG text; `origin` names it in errors
/// ("DIB_BLOCK_DEVICE_CONFIG").
pub fn parse(text: &str, origin: &str) -> Result<DibLayout> {
    analyse::analyse(text).map_err(|e| anyhow!("{origin}{e}"))
}

// ---- errors ------------------------------------------------------------------

/// A refusal, with the line of the YAML it is about when there is one. Displays as
/// the part of the message after the origin.
#[derive(Debug)]
struct Refusal {
    line: Option<usize>,
    msg: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, ", line {line}: {}", self.msg),
            None => write!(f, ": {}", self.msg),
        }
    }
}

fn refuse<T>(line: usize, msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        line: (line > 0).then_some(line),
        msg: msg.into(),
    })
}

type R<T> = Result<T, Refusal>;
