//! Assembling disks without root (docs/architecture.md §5): no loop device, no mount, no helper.
//!
//! The pipeline calls, in this order:
//!
//! 1. [`plan_disk`] at plan time (sizes from [`size_for_tree`] / [`check_image_size`]
//!    once the tree exists); the build's hook environment (build::hook_env) names the
//!    filesystems' UUIDs, chosen before they exist, so fstab and grub.cfg can use them;
//! 2. [`lay_out`]: the sparse raw file with its partition table (crate::partition
//!    writes it), before block-device.d; [`adopt_table`] after block-device.d, which
//!    follows the partitions a hook moved;
//! 3. [`build_filesystems`]: the ESP from `tree/boot/efi`, the root from the rest,
//!    each written at its partition's offset;
//! 4. [`install_bootloader`]: GRUB for BIOS and/or UEFI from the image's own modules;
//! 5. [`convert`] per disk format, [`tree_archive`] per archive format,
//!    [`write_checksums`] with `--checksum`.
//!
//! Everything runs inside kiln's user namespace as mapped root, and runs host tools
//! only: mke2fs / mkfs.btrfs / mkfs.vfat, mtools, grub-mkimage, qemu-img, tar,
//! mksquashfs. [`host_tools`] lists those a build needs, for the plan's check.

mod convert;
pub mod dib_config;
mod esp;
mod ext4_ctime;
mod fs;
mod grub;
mod ids;
mod layout;
mod sparse;
mod stamps;
mod table;
mod tar_owners;
mod tool;

/// The EFI system partition's filesystem label (DIB_BOOT_LABEL can only repeat it).
pub const ESP_LABEL: &str = "ESP";

pub use convert::{
    convert, create_output, tree_archive, write_checksum, write_checksums, Checksum, Format,
};
pub use fs::{build_filesystems, FsType};
pub use grub::install_bootloader;
pub use ids::{DiskIds, Seed, SeedOrigin};
pub use layout::{
    check_image_size, content_size, format_human, format_size, parse_image_size, plan_disk,
    size_for_content, size_for_tree, DiskPlan, Layout, PartRole, Partition, TableKind, GIB, MIB,
};
pub use table::{adopt_table, lay_out, Moved};
pub use tool::HostTool;

use tool::tool as host_tool;

/// The host tools a build with this layout, root filesystem and output formats runs,
/// each with its Debian package, so the plan can report every missing one at once.
pub fn host_tools(layout: Layout, fs_type: FsType, formats: &[Format]) -> Vec<HostTool> {
    let mut tools = fs_type.tools();
    if layout.table() != TableKind::None {
        tools.push(host_tool("grub-mkimage", "grub-common"));
    }
    if layout.has_esp() {
        tools.push(host_tool("mkfs.vfat", "dosfstools"));
        tools.push(host_tool("mcopy", "mtools"));
    }
    for f in formats {
        tools.extend(f.tools());
    }
    let mut seen = Vec::new();
    tools.retain(|t| {
        let new = !seen.contains(&t.name);
        seen.push(t.name);
        new
    });
    tools
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tools_follow_layout_and_formats() {
        let names = |l, f, fmts: &[Format]| {
            host_tools(l, f, fmts)
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Layout::Gpt, FsType::Ext4, &[Format::Qcow2, Format::Vmdk]),
            vec![
                "mke2fs",
                "debugfs",
                "grub-mkimage",
                "mkfs.vfat",
                "mcopy",
                "qemu-img"
            ]
        );
        assert_eq!(
            names(Layout::None, FsType::Ext4, &[Format::Raw]),
            vec!["mke2fs", "debugfs"]
        );
        assert_eq!(
            names(Layout::Mbr, FsType::Btrfs, &[Format::Tgz]),
            vec!["mkfs.btrfs", "grub-mkimage", "tar", "gzip"]
        );
    }
}

#[cfg(test)]
mod owner_tests;
