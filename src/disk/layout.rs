//! Planning a disk: which partitions, where, how big, with which identities.
//!
//! The plan is made once, before any hook that needs the UUIDs runs (fstab and grub.cfg
//! are written inside the image by finalise.d hooks), and every later step writes
//! exactly what the plan says.

use super::fs::FsType;
use super::ids::{DiskIds, Seed};
use super::tool::parse_uuid;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Partitions start on 1 MiB boundaries: right for 4 KiB sectors, SSD erase blocks and
/// every partitioning tool's default, and it leaves MBR images a gap for GRUB's core.
const ALIGN: u64 = MIB;
const BIOS_BOOT_SIZE: u64 = MIB;
const ESP_SIZE: u64 = 64 * MIB;

/// GPT partition type GUIDs (UEFI spec and the Discoverable Partitions Specification).
pub const GPT_TYPE_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
pub const GPT_TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const GPT_TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// MBR type of a Linux filesystem partition.
pub const MBR_TYPE_LINUX: u8 = 0x83;

/// The partition table kind of the raw image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
    Mbr,
    /// A bare filesystem image: no `vm` flavour, like diskimage-builder without vm.
    None,
}

/// The block-device layouts the flavours select (`KILN_BLOCK_DEVICE_LAYOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// GPT, BIOS boot partition and ESP: boots under BIOS and UEFI.
    Gpt,
    /// MBR with one bootable partition: BIOS only.
    Mbr,
    /// GPT with an ESP and no BIOS boot partition: UEFI only.
    Efi,
    /// No partition table: the image is the root filesystem.
    None,
}

impl Layout {
    pub fn parse(s: &str) -> Result<Layout> {
        Ok(match s.trim() {
            "gpt" => Layout::Gpt,
            "mbr" => Layout::Mbr,
            "efi" => Layout::Efi,
            "none" | "" => Layout::None,
            other => bail!("unknown block device layout {other:?}: use one of gpt, mbr, efi, none"),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Gpt => "gpt",
            Layout::Mbr => "mbr",
            Layout::Efi => "efi",
            Layout::None => "none",
        }
    }

    /// Whether the disk has an EFI system partition.
    pub fn has_esp(self) -> bool {
        matches!(self, Layout::Gpt | Layout::Efi)
    }

    pub fn table(self) -> TableKind {
        match self {
            Layout::Gpt | Layout::Efi => TableKind::Gpt,
            Layout::Mbr => TableKind::Mbr,
            Layout::None => TableKind::None,
        }
    }

    /// Bytes of the image that are not the root partition.
    pub fn overhead(self) -> u64 {
        // GPT keeps its backup header and entries in the last MiB, outside any partition.
        match self {
            Layout::Gpt => ALIGN + ESP_SIZE + BIOS_BOOT_SIZE + ALIGN,
            Layout::Efi => ALIGN + ESP_SIZE + ALIGN,
            Layout::Mbr => ALIGN,
            Layout::None => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartRole {
    BiosBoot,
    Esp,
    Root,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the kernel numbers it (`/dev/vda3`).
    pub number: u32,
    pub role: PartRole,
    /// Offset in bytes from the start of the image.
    pub start: u64,
    pub size: u64,
    /// GPT: the type GUID; MBR: the type byte as `0x83`.
    pub type_id: String,
    /// The kernel's PARTUUID: GPT's unique partition GUID, MBR's `SIGNATURE-NN`.
    pub uuid: String,
    /// GPT partition name (diskimage-builder's: ESP, BSP, root).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub layout: Layout,
    pub table: TableKind,
    pub bios_boot: bool,
    pub esp: bool,
    /// Bytes, a whole number of MiB.
    pub size: u64,
    pub fs_type: FsType,
    pub root_label: String,
    /// Filesystem UUID of the root (for vfat: its volume id, `XXXX-XXXX`).
    pub root_uuid: String,
    /// Volume id of the ESP as `XXXX-XXXX`; empty without an ESP.
    pub esp_uuid: String,
    /// GPT disk GUID, or the MBR disk signature as 8 hex digits; empty without a table.
    pub disk_id: String,
    /// Extra options for the root filesystem's mkfs (`--mkfs-options`).
    pub mkfs_options: Vec<String>,
    pub partitions: Vec<Partition>,
    /// ext2/3/4's directory-index hash seed (a UUID): it decides the order of
    /// hashed directory blocks, so it is part of the image's bytes.
    pub hash_seed: String,
    /// SOURCE_DATE_EPOCH: the creation and write times mkfs records.
    pub epoch: Option<i64>,
}

impl DiskPlan {
    pub fn partition(&self, role: PartRole) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.role == role)
    }

    pub fn root(&self) -> Result<&Partition> {
        self.partition(PartRole::Root)
            .context("the disk plan has no root partition")
    }

    /// Whether GRUB must be installed for BIOS (core in the BIOS boot partition or the
    /// MBR gap) and for UEFI (BOOTX64.EFI on the ESP).
    pub fn needs_bios_grub(&self) -> bool {
        self.bios_boot || self.table == TableKind::Mbr
    }

    pub fn needs_efi_grub(&self) -> bool {
        self.esp
    }

    /// Checks what the pipeline may have set by hand (the fields are public): UUID
    /// formats, and partitions that fit the image without overlapping.
    pub fn validate(&self) -> Result<()> {
        match self.fs_type {
            FsType::Vfat => {
                check_volume_id(&self.root_uuid).context("root filesystem volume id")?
            }
            _ => {
                parse_uuid(&self.root_uuid).context("root filesystem UUID")?;
            }
        }
        if self.esp {
            check_volume_id(&self.esp_uuid).context("ESP volume id")?;
        }
        if !self.size.is_multiple_of(MIB) {
            bail!("image size {} is not a whole number of MiB", self.size);
        }
        let mut parts: Vec<&Partition> = self.partitions.iter().collect();
        parts.sort_by_key(|p| p.start);
        let mut end = 0;
        for p in parts {
            if p.start < end || p.start + p.size > self.size {
                bail!(
                    "partition {} ({} bytes at {}) overlaps another or the end of the image",
                    p.number,
                    p.size,
                    p.start
                );
            }
            end = p.start + p.size;
        }
        Ok(())
    }
}

/// Plans the disk: partition offsets and sizes, identities from `seed`. `size` is
/// rounded up to a whole MiB. `epoch` (SOURCE_DATE_EPOCH) is the time the
/// filesystems' own timestamps record.
pub fn plan_disk(
    layout: Layout,
    fs_type: FsType,
    size: u64,
    root_label: &str,
    mkfs_options: Vec<String>,
    seed: &Seed,
    epoch: Option<i64>,
) -> Result<DiskPlan> {
    fs_type.check_label(root_label)?;
    if fs_type == FsType::Vfat && layout != Layout::None {
        bail!(
            "vfat cannot hold a Linux root (no owners, modes or symlinks); \
             use it only for images without the vm flavour"
        );
    }
    if size > 1 << 50 {
        bail!("image size {} is beyond 1 PiB", format_size(size));
    }
    let size = round_up(size, MIB);
    let minimum = layout.overhead() + fs_type.min_size();
    if size < minimum {
        bail!(
            "image size {} is too small for the {} layout with {}: the minimum is {}",
            format_size(size),
            layout.as_str(),
            fs_type.as_str(),
            format_size(minimum)
        );
    }

    let ids = DiskIds::new(seed, fs_type);
    let root_uuid = ids.root;
    let esp = layout.has_esp();
    let esp_uuid = if esp { ids.esp } else { String::new() };
    let disk_id = match layout.table() {
        TableKind::Gpt => seed.uuid("disk"),
        TableKind::Mbr => seed.mbr_signature("disk"),
        TableKind::None => String::new(),
    };

    // Only used by the GPT layouts, whose overhead the minimum check above covers.
    let gpt_root = size.saturating_sub(layout.overhead());
    let mbr_type = format!("{MBR_TYPE_LINUX:#04x}");
    let (first, specs): (u64, Vec<(PartRole, u64, &str, &str)>) = match layout {
        // diskimage-builder's order (ESP, BSP, root) keeps root last, where growpart
        // and cloud-init expect the partition they may enlarge.
        Layout::Gpt => (
            ALIGN,
            vec![
                (PartRole::Esp, ESP_SIZE, GPT_TYPE_ESP, "ESP"),
                (
                    PartRole::BiosBoot,
                    BIOS_BOOT_SIZE,
                    GPT_TYPE_BIOS_BOOT,
                    "BSP",
                ),
                (PartRole::Root, gpt_root, GPT_TYPE_ROOT_X86_64, "root"),
            ],
        ),
        Layout::Efi => (
            ALIGN,
            vec![
                (PartRole::Esp, ESP_SIZE, GPT_TYPE_ESP, "ESP"),
                (PartRole::Root, gpt_root, GPT_TYPE_ROOT_X86_64, "root"),
            ],
        ),
        Layout::Mbr => (
            ALIGN,
            vec![(PartRole::Root, size - ALIGN, &mbr_type, "root")],
        ),
        Layout::None => (0, vec![(PartRole::Root, size, "", "root")]),
    };
    let mut partitions = Vec::new();
    let mut start = first;
    for (i, (role, size, type_id, name)) in specs.into_iter().enumerate() {
        let number = i as u32 + 1;
        let uuid = match layout.table() {
            TableKind::Gpt => seed.uuid(&format!("partition {number}")),
            TableKind::Mbr => format!("{disk_id}-{number:02x}"),
            TableKind::None => String::new(),
        };
        partitions.push(Partition {
            number,
            role,
            start,
            size,
            type_id: type_id.into(),
            uuid,
            name: name.into(),
        });
        start += size;
    }

    Ok(DiskPlan {
        layout,
        table: layout.table(),
        bios_boot: layout == Layout::Gpt,
        esp,
        size,
        fs_type,
        root_label: root_label.to_string(),
        root_uuid,
        esp_uuid,
        disk_id,
        mkfs_options,
        partitions,
        hash_seed: seed.uuid("ext4 hash seed"),
        epoch,
    })
}

fn check_volume_id(id: &str) -> Result<()> {
    let ok = id.len() == 9
        && id.as_bytes()[4] == b'-'
        && id
            .chars()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_hexdigit());
    if !ok {
        bail!("{id:?} is not a FAT volume id (XXXX-XXXX, hexadecimal)");
    }
    Ok(())
}

/// Bytes the tree occupies, like `du`: allocated blocks, hard links counted once.
pub fn content_size(tree: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut dirs = vec![tree.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let meta = std::fs::symlink_metadata(&dir)
            .with_context(|| format!("cannot stat {}", dir.display()))?;
        total += meta.blocks() * 512;
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let meta = entry
                .metadata()
                .with_context(|| format!("cannot stat {}", entry.path().display()))?;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.nlink() < 2 || seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// The image size to use when `--image-size` is not given: content × 1.25 + 256 MiB
/// for the root filesystem, rounded up to a MiB, plus the layout's other partitions.
pub fn size_for_content(content: u64, layout: Layout) -> u64 {
    round_up(content + content / 4 + 256 * MIB, MIB) + layout.overhead()
}

/// The default image size for the tree: [`size_for_content`] of its [`content_size`]
/// with the largest layout's overhead (gpt, 67 MiB), so the size fits whichever layout
/// the plan uses; the few MiB more for mbr or none end up as free space in the root.
pub fn size_for_tree(tree: &Path) -> Result<u64> {
    Ok(size_for_content(content_size(tree)?, Layout::Gpt))
}

/// Fails with a clear message when `size` (a user's `--image-size`) cannot hold
/// `content` bytes: mkfs would otherwise fail half-way with "Could not allocate block".
pub fn check_image_size(size: u64, content: u64, l: Layout) -> Result<()> {
    // Root filesystem metadata: inode tables (~1.6 %), the journal (up to 64 MiB below
    // 16 GiB), directories' and small files' block rounding are already in `content`.
    let needed = content + content / 10 + 96 * MIB + l.overhead();
    if round_up(size, MIB) < needed {
        let suggest = if needed >= GIB {
            format!("{}G", needed.div_ceil(GIB))
        } else {
            format!("{}M", needed.div_ceil(MIB))
        };
        bail!(
            "image size {} is too small for {} of content; use --image-size {suggest} or more",
            format_size(size),
            format_human(content)
        );
    }
    Ok(())
}

/// Parses `--image-size`: a bare number is GiB (diskimage-builder's unit, decimals
/// allowed); K, M, G, T suffixes (optionally with `iB`/`B`) are binary units.
pub fn parse_image_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper.trim_end_matches("IB").trim_end_matches('B');
    let (num, unit) = match body.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&body[..i], c),
        _ => (body, 'G'),
    };
    let mult = match unit {
        'K' => 1u64 << 10,
        'M' => MIB,
        'G' => GIB,
        'T' => 1u64 << 40,
        _ => bail!("invalid image size {s:?}: use a number of GiB or a size such as 512M, 2G"),
    };
    let value: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| {
            format!("invalid image size {s:?}: use a number of GiB or a size such as 512M, 2G")
        })?;
    let bytes = value * mult as f64;
    if bytes > (1u64 << 53) as f64 {
        bail!("image size {s:?} is too large");
    }
    Ok(bytes.ceil() as u64)
}

pub(crate) fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// `2G`, `512M`, or bytes: the way a user would write the size on the command line.
pub fn format_size(bytes: u64) -> String {
    if bytes > 0 && bytes.is_multiple_of(GIB) {
        format!("{}G", bytes / GIB)
    } else if bytes > 0 && bytes.is_multiple_of(MIB) {
        format!("{}M", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// `1.4 GiB`, `371.2 MiB`: for amounts of content.
pub fn format_human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(layout: &str, size: u64) -> Result<DiskPlan> {
        plan_disk(
            Layout::parse(layout)?,
            FsType::Ext4,
            size,
            "cloudimg-rootfs",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
    }

    #[test]
    fn gpt_plan_has_esp_bios_boot_and_root_last() {
        let p = plan("gpt", 2 * GIB).unwrap();
        let parts: Vec<_> = p
            .partitions
            .iter()
            .map(|p| (p.number, p.role, p.start / MIB, p.size / MIB))
            .collect();
        assert_eq!(
            parts,
            vec![
                (1, PartRole::Esp, 1, 64),
                (2, PartRole::BiosBoot, 65, 1),
                (3, PartRole::Root, 66, 2048 - 66 - 1)
            ]
        );
        assert!(p.bios_boot && p.esp && p.needs_bios_grub() && p.needs_efi_grub());
        assert_eq!(p.esp_uuid.len(), 9);
        assert_eq!(&p.esp_uuid[4..5], "-");
        assert_ne!(p.root().unwrap().uuid, p.partitions[0].uuid);
    }

    #[test]
    fn validate_rejects_bad_ids_set_by_hand() {
        let mut p = plan("gpt", GIB).unwrap();
        p.validate().unwrap();
        p.esp_uuid = "1234ABCD".into();
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ESP volume id"));
        p.esp_uuid = "12AB-CD3F".into();
        p.root_uuid = "not-a-uuid".into();
        assert!(p.validate().is_err());
        let mut p = plan("mbr", GIB).unwrap();
        p.partitions[0].size += MIB;
        assert!(p.validate().is_err());
    }

    #[test]
    fn efi_and_mbr_and_none_plans() {
        let efi = plan("efi", GIB).unwrap();
        assert_eq!(efi.partitions.len(), 2);
        assert!(!efi.needs_bios_grub() && efi.needs_efi_grub());
        assert_eq!(efi.root().unwrap().start, 65 * MIB);

        let mbr = plan("mbr", GIB).unwrap();
        assert_eq!(mbr.partitions.len(), 1);
        assert_eq!(
            (mbr.partitions[0].start, mbr.partitions[0].size),
            (MIB, GIB - MIB)
        );
        assert!(mbr.needs_bios_grub() && !mbr.needs_efi_grub() && mbr.esp_uuid.is_empty());
        assert_eq!(mbr.partitions[0].uuid, format!("{}-01", mbr.disk_id));

        let none = plan("none", GIB + 1).unwrap();
        assert_eq!(none.size, GIB + MIB);
        assert_eq!(
            (none.partitions[0].start, none.partitions[0].size),
            (0, GIB + MIB)
        );
        assert!(!none.needs_bios_grub() && !none.needs_efi_grub());
    }

    #[test]
    fn plan_rejects_too_small_image_naming_minimum() {
        let err = plan("gpt", 50 * MIB).unwrap_err().to_string();
        assert!(
            err.contains("too small") && err.contains("the minimum is 99M"),
            "{err}"
        );
        assert!(plan("gpt", 99 * MIB).is_ok());
    }

    #[test]
    fn plan_rejects_bad_layout_label_and_vfat_root() {
        assert!(plan("lvm", GIB)
            .unwrap_err()
            .to_string()
            .contains("gpt, mbr, efi, none"));
        assert!(plan_disk(
            Layout::Gpt,
            FsType::Ext4,
            GIB,
            "a-label-longer-than-16",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None
        )
        .is_err());
        assert!(plan_disk(
            Layout::Gpt,
            FsType::Vfat,
            GIB,
            "ROOT",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None
        )
        .is_err());
        assert!(plan_disk(
            Layout::None,
            FsType::Vfat,
            GIB,
            "ROOT",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None
        )
        .is_ok());
    }

    #[test]
    fn size_for_content_adds_quarter_and_256m_and_overhead() {
        assert_eq!(size_for_content(0, Layout::None), 256 * MIB);
        assert_eq!(
            size_for_content(400 * MIB, Layout::Gpt),
            756 * MIB + 67 * MIB
        );
        assert_eq!(size_for_content(1, Layout::Mbr), 257 * MIB + MIB);
    }

    #[test]
    fn too_small_size_for_content_says_what_to_use() {
        let content = 1503238553; // 1.4 GiB
        let err = check_image_size(GIB, content, Layout::Gpt)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "image size 1G is too small for 1.4 GiB of content; use --image-size 2G or more"
        );
        assert!(check_image_size(2 * GIB, content, Layout::Gpt).is_ok());
        assert!(
            check_image_size(size_for_content(content, Layout::Gpt), content, Layout::Gpt).is_ok()
        );
    }

    #[test]
    fn content_size_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; 64 * 1024];
        std::fs::write(dir.path().join("a"), &data).unwrap();
        let one = content_size(dir.path()).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_eq!(content_size(dir.path()).unwrap(), one);
        std::fs::write(dir.path().join("c"), &data).unwrap();
        assert!(content_size(dir.path()).unwrap() >= one + 64 * 1024);
    }

    #[test]
    fn image_size_parsing() {
        assert_eq!(parse_image_size("2").unwrap(), 2 * GIB);
        assert_eq!(parse_image_size("2.5").unwrap(), 5 * GIB / 2);
        assert_eq!(parse_image_size("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_image_size("512MiB").unwrap(), 512 * MIB);
        assert_eq!(parse_image_size("3G").unwrap(), 3 * GIB);
        assert_eq!(parse_image_size("1T").unwrap(), 1 << 40);
        for bad in ["", "x", "-1", "2X", "G", "nan"] {
            assert!(parse_image_size(bad).is_err(), "{bad}");
        }
    }
}
