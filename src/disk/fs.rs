//! Step 2 of assembly: filesystems built from the finished tree, written straight into
//! their partitions' byte ranges. No mount, no loop device: each mkfs populates the
//! filesystem from a directory, and runs inside kiln's user namespace so owners and
//! modes come out as the tree has them.

use super::esp;
use super::layout::{DiskPlan, Partition, MIB};
use super::sparse;
use super::table;
use super::tool::{run, tool, HostTool, ScratchDir};
use crate::tree::owners::Recorded;
use crate::tree::{ImageTree, Kind};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Root filesystem types: those whose mkfs can populate from a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Ext3,
    Ext2,
    Btrfs,
    /// Only for images without a partition table: FAT keeps no owners, modes or
    /// symlinks, so it cannot hold a Linux root.
    Vfat,
}

const SUPPORTED: &str = "ext4, ext3, ext2, btrfs, vfat";

impl FsType {
    /// Parses `FS_TYPE` / `--fs-type`.
    pub fn parse(s: &str) -> Result<FsType> {
        Ok(match s.trim() {
            "ext4" => FsType::Ext4,
            "ext3" => FsType::Ext3,
            "ext2" => FsType::Ext2,
            "btrfs" => FsType::Btrfs,
            "vfat" | "fat" | "fat32" => FsType::Vfat,
            "xfs" => bail!(
                "FS_TYPE xfs is not supported: mkfs.xfs can only populate a filesystem from a \
                 protofile, which loses extended attributes (file capabilities), hard links and \
                 timestamps; supported: {SUPPORTED}"
            ),
            other => bail!("unknown FS_TYPE {other:?}: supported: {SUPPORTED}"),
        })
    }

    /// The name mount, fstab and mkfs use.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Ext3 => "ext3",
            FsType::Ext2 => "ext2",
            FsType::Btrfs => "btrfs",
            FsType::Vfat => "vfat",
        }
    }

    /// The GRUB module that reads it.
    pub fn grub_module(self) -> &'static str {
        match self {
            FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => "ext2",
            FsType::Btrfs => "btrfs",
            FsType::Vfat => "fat",
        }
    }

    /// The smallest root filesystem worth making.
    pub fn min_size(self) -> u64 {
        match self {
            // mkfs.btrfs refuses devices below ~109 MiB with its default profiles.
            FsType::Btrfs => 128 * MIB,
            _ => 32 * MIB,
        }
    }

    pub fn check_label(self, label: &str) -> Result<()> {
        let max = match self {
            FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => 16,
            FsType::Btrfs => 255,
            FsType::Vfat => 11,
        };
        if label.len() > max {
            bail!(
                "root label {label:?} is longer than {max} bytes, the limit of {}",
                self.as_str()
            );
        }
        if self == FsType::Vfat && !label.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            bail!("vfat label {label:?} must be printable ASCII");
        }
        Ok(())
    }

    /// Host tools that building this root filesystem runs.
    pub fn tools(self) -> Vec<HostTool> {
        match self {
            // debugfs sets the owners a build without subordinate ids recorded.
            FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => {
                vec![tool("mke2fs", "e2fsprogs"), tool("debugfs", "e2fsprogs")]
            }
            FsType::Btrfs => vec![tool("mkfs.btrfs", "btrfs-progs")],
            FsType::Vfat => vec![tool("mkfs.vfat", "dosfstools"), tool("mcopy", "mtools")],
        }
    }
}

/// Step 2: the ESP (if any) from the tree's /boot/efi, then the root filesystem from
/// the rest of the tree, each at its partition's offset in `raw`. /boot/efi ends up as
/// an empty mount point in the root filesystem. mcopy follows symlinks, so the ESP is
/// filled from a copy the tree made of itself (links resolved inside the image).
///
/// `owners` (a build without subordinate ids) gives the root filesystem's files
/// their recorded owners; FAT has none.
pub fn build_filesystems(
    raw: &Path,
    tree: &ImageTree,
    plan: &DiskPlan,
    owners: Option<&Recorded>,
) -> Result<()> {
    table::check(raw, plan)?;
    let root = plan.root()?;
    if let Some(p) = plan.partition(super::layout::PartRole::Esp) {
        // The ESP's files are not in the root filesystem, only its mount point.
        let esp_dir = Path::new(ESP_DIR);
        let owners = owners.map(|o| {
            Recorded::from_files(
                o.iter()
                    .filter(|(p, _)| !p.starts_with(esp_dir) || *p == esp_dir)
                    .map(|(p, f)| (p.to_path_buf(), *f)),
            )
        });
        let scratch = ScratchDir::beside(raw, "esp")?;
        let content = scratch.path().join("efi");
        if tree.is_dir(Path::new(ESP_DIR)) {
            tree.stage(Path::new(ESP_DIR), &content)?;
        }
        esp::make(raw, p, &plan.esp_uuid, &content, plan.epoch).context("cannot build the ESP")?;
        let _hidden = EmptyMountPoint::hide(tree, Path::new(ESP_DIR))?;
        make_root(raw, tree, root, plan, owners.as_ref())
    } else {
        make_root(raw, tree, root, plan, owners)
    }
    .with_context(|| format!("cannot build the {} root filesystem", plan.fs_type.as_str()))
}

/// The ESP's mount point inside the image.
const ESP_DIR: &str = "boot/efi";

fn make_root(
    raw: &Path,
    tree: &ImageTree,
    part: &Partition,
    plan: &DiskPlan,
    owners: Option<&Recorded>,
) -> Result<()> {
    if let Some(epoch) = plan.epoch {
        // mke2fs records access times, and kiln's own reads since the tree was
        // clamped (staging the ESP's files) moved some.
        tree.clamp_times(epoch)?;
    }
    // mke2fs -d and mkfs.btrfs --rootdir walk the tree without following symlinks.
    match plan.fs_type {
        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => mke2fs(raw, tree.path(), part, plan, owners),
        FsType::Btrfs => btrfs(raw, tree.path(), part, plan),
        FsType::Vfat => {
            esp::format(
                raw,
                part,
                &plan.root_uuid,
                &plan.root_label,
                &plan.mkfs_options,
                plan.epoch,
            )?;
            // FAT has no symlinks and mcopy follows them: copy with links resolved in the image.
            let scratch = ScratchDir::beside(raw, "vfat")?;
            let content = scratch.path().join("root");
            tree.stage(Path::new("/"), &content)?;
            esp::copy_tree(raw, part, &content, plan.epoch)
        }
    }
}

fn mke2fs(
    raw: &Path,
    tree: &Path,
    part: &Partition,
    plan: &DiskPlan,
    owners: Option<&Recorded>,
) -> Result<()> {
    // mke2fs keeps only the last -E, so the user's extended options join our offset.
    let (user_extended, rest) = split_option(&plan.mkfs_options, "-E");
    let mut extended = format!("offset={}", part.start);
    if !user_extended.iter().any(|e| e.contains("hash_seed=")) {
        extended.push_str(",hash_seed=");
        extended.push_str(&plan.hash_seed);
    }
    for e in user_extended {
        extended.push(',');
        extended.push_str(&e);
    }
    let mut cmd = Command::new("mke2fs");
    if let Some(epoch) = plan.epoch {
        // The superblock's creation, mount and check times, and the times of the
        // inodes mke2fs makes itself (root, lost+found, the journal).
        cmd.env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    }
    cmd.args(["-t", plan.fs_type.as_str(), "-F", "-q"])
        .arg("-L")
        .arg(&plan.root_label)
        .arg("-U")
        .arg(&plan.root_uuid)
        .arg("-E")
        .arg(extended);
    if plan.fs_type == FsType::Ext4 {
        // The image's own e2fsck (initramfs, boot-time fsck) and GRUB must understand
        // every feature. Newer hosts' defaults add features older guests reject:
        // orphan_file (e2fsprogs 1.47; bullseye's e2fsck refuses it) and
        // metadata_csum_seed (GRUB before 2.12 cannot read it). -O accumulates, so a
        // user's --mkfs-options can switch them back on.
        let mut off = String::from("^metadata_csum_seed");
        if mke2fs_knows_orphan_file() {
            off.push_str(",^orphan_file");
        }
        cmd.arg("-O").arg(off);
    }
    cmd.args(&rest)
        .arg("-d")
        .arg(tree)
        .arg(raw)
        .arg(format!("{}k", part.size / 1024));
    run(&mut cmd)?;
    if let Some(owners) = owners.filter(|o| !o.is_empty()) {
        set_ext_owners(raw, part.start, owners, plan.epoch)?;
    }
    if let Some(epoch) = plan.epoch {
        super::ext4_ctime::clamp_ctimes(raw, part.start, epoch)?;
    }
    Ok(())
}

/// mke2fs -d copies the tree's owners, which are all root in a build without
/// subordinate ids: debugfs then sets each recorded owner in the new
/// filesystem (at `offset` in `raw`).
fn set_ext_owners(raw: &Path, offset: u64, owners: &Recorded, epoch: Option<i64>) -> Result<()> {
    let scratch = ScratchDir::beside(raw, "owners")?;
    let script = scratch.path().join("debugfs");
    std::fs::write(&script, debugfs_script(owners)?)
        .with_context(|| format!("cannot write {}", script.display()))?;
    let mut image = raw.as_os_str().to_owned();
    image.push(format!("?offset={offset}"));
    let mut cmd = Command::new("debugfs");
    if let Some(epoch) = epoch {
        // The superblock's write time, as mke2fs got it.
        cmd.env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    }
    cmd.arg("-w").arg("-f").arg(&script).arg(image);
    let out = run(&mut cmd)?;
    // debugfs exits 0 when a command of its script fails: its complaints are
    // on stderr, after its version banner.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !errors.is_empty() {
        bail!(
            "setting the recorded owners with {} failed:\n{}",
            super::tool::command_line(&cmd),
            errors.join("\n")
        );
    }
    Ok(())
}

/// `set_inode_field "/PATH" uid N` and `gid N` per recorded file.
fn debugfs_script(owners: &Recorded) -> Result<String> {
    use std::fmt::Write as _;
    let mut text = String::new();
    for (path, f) in owners.iter() {
        let Some(p) = path.to_str() else {
            bail!(
                "the image's /{} has a recorded owner but its name is not UTF-8, which a debugfs script cannot name: rename it",
                path.display()
            );
        };
        if p.contains(['"', '\n']) {
            bail!(
                "the image's {:?} has a recorded owner but its name holds a quote or a newline, which a debugfs script cannot name: rename it",
                format!("/{p}")
            );
        }
        for (field, id) in [("uid", f.owner.uid), ("gid", f.owner.gid)] {
            let _ = writeln!(text, "set_inode_field \"/{p}\" {field} {id}");
        }
    }
    Ok(text)
}

/// orphan_file exists from e2fsprogs 1.47.0; naming an unknown feature is an error.
fn mke2fs_knows_orphan_file() -> bool {
    let Ok(out) = Command::new("mke2fs").arg("-V").output() else {
        return false;
    };
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.split_whitespace().nth(1) else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 47)
}

fn btrfs(raw: &Path, tree: &Path, part: &Partition, plan: &DiskPlan) -> Result<()> {
    // mkfs.btrfs cannot write at an offset: build in a scratch file of the partition's
    // size, then copy its data extents (only those) into place.
    let scratch = ScratchDir::beside(raw, "btrfs")?;
    let image = scratch.path().join("root.btrfs");
    let mut len = mkfs_btrfs(&image, tree, part.size, plan, false)?;
    if len > part.size {
        // With --rootdir, mkfs.btrfs grows a file smaller than its own (generous, about
        // 2.4 × content) estimate and makes the filesystem that big. Shrunk to what it
        // allocated, the filesystem fits; it is smaller than its partition until
        // someone runs `btrfs filesystem resize max /` (cloud-init's resizefs does).
        len = mkfs_btrfs(&image, tree, part.size, plan, true)?;
        if len > part.size {
            bail!(
                "the btrfs filesystem needs {} but the root partition has {}: use a larger --image-size",
                super::layout::format_human(len),
                super::layout::format_human(part.size)
            );
        }
    }
    let src = File::open(&image).with_context(|| format!("cannot open {}", image.display()))?;
    let dst = File::options()
        .write(true)
        .open(raw)
        .with_context(|| format!("cannot open {}", raw.display()))?;
    sparse::copy_range(&src, &dst, part.start, part.size)
}

/// Runs mkfs.btrfs on a fresh `size`-byte file; returns the file's size afterwards.
fn mkfs_btrfs(image: &Path, tree: &Path, size: u64, plan: &DiskPlan, shrink: bool) -> Result<u64> {
    let file = File::create(image).with_context(|| format!("cannot create {}", image.display()))?;
    file.set_len(size)
        .with_context(|| format!("cannot size {}", image.display()))?;
    drop(file);
    let mut cmd = Command::new("mkfs.btrfs");
    cmd.args(["-q", "-f"])
        .arg("-L")
        .arg(&plan.root_label)
        .arg("-U")
        .arg(&plan.root_uuid)
        .args(&plan.mkfs_options)
        .arg("--rootdir")
        .arg(tree);
    if shrink {
        cmd.arg("--shrink");
    }
    run(cmd.arg(image))?;
    Ok(std::fs::metadata(image)
        .with_context(|| format!("cannot stat {}", image.display()))?
        .len())
}

/// Splits `-X value` / `-Xvalue` occurrences of one option out of an option list.
fn split_option(options: &[String], flag: &str) -> (Vec<String>, Vec<String>) {
    let (mut values, mut rest) = (Vec::new(), Vec::new());
    let mut it = options.iter();
    while let Some(o) = it.next() {
        if o == flag {
            if let Some(v) = it.next() {
                values.push(v.clone());
            }
        } else if let Some(v) = o.strip_prefix(flag) {
            values.push(v.to_string());
        } else {
            rest.push(o.clone());
        }
    }
    (values, rest)
}

/// While alive, `dir` (the ESP's mount point in the tree) is an empty directory with
/// the original's owner and mode; its content waits in a sibling and is put back on
/// drop, also when mkfs fails. mkfs -d has no exclude option, and the ESP's files
/// belong on the ESP only.
struct EmptyMountPoint<'a> {
    tree: &'a ImageTree,
    dir: &'a Path,
    aside: Option<PathBuf>,
}

impl<'a> EmptyMountPoint<'a> {
    fn hide(tree: &'a ImageTree, dir: &'a Path) -> Result<EmptyMountPoint<'a>> {
        let shown = || format!("the image's /{}", dir.display());
        match tree.kind(dir) {
            None => {
                tree.create_dir_all(dir, 0o755)?;
                return Ok(EmptyMountPoint {
                    tree,
                    dir,
                    aside: None,
                });
            }
            Some(Kind::Dir) => {}
            Some(_) => bail!("{} must be a directory (the ESP's mount point)", shown()),
        }
        if tree.is_empty_dir(dir)? {
            return Ok(EmptyMountPoint {
                tree,
                dir,
                aside: None,
            });
        }
        let aside = dir.with_file_name(".kiln-esp-content");
        tree.rename(dir, &aside)
            .with_context(|| format!("cannot move {} aside", shown()))?;
        let guard = EmptyMountPoint {
            tree,
            dir,
            aside: Some(aside),
        };
        tree.create_dir_all(dir, 0o755)?;
        Ok(guard)
    }
}

impl Drop for EmptyMountPoint<'_> {
    fn drop(&mut self) {
        if let Some(aside) = &self.aside {
            self.tree.remove_empty_dir(self.dir);
            let _ = self.tree.rename(aside, self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_type_parsing_lists_supported_types() {
        assert_eq!(FsType::parse("ext4").unwrap(), FsType::Ext4);
        assert_eq!(FsType::parse("btrfs").unwrap(), FsType::Btrfs);
        let err = FsType::parse("zfs").unwrap_err().to_string();
        assert!(err.contains("ext4, ext3, ext2, btrfs, vfat"), "{err}");
        let err = FsType::parse("xfs").unwrap_err().to_string();
        assert!(err.contains("protofile"), "{err}");
    }

    #[test]
    fn extended_options_are_split_out() {
        let opts: Vec<String> = ["-i", "4096", "-E", "lazy_itable_init=0", "-Eroot_owner=0:0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (e, rest) = split_option(&opts, "-E");
        assert_eq!(e, vec!["lazy_itable_init=0", "root_owner=0:0"]);
        assert_eq!(rest, vec!["-i", "4096"]);
    }

    #[test]
    fn esp_content_is_hidden_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let efi = dir.path().join("boot/efi");
        std::fs::create_dir_all(efi.join("EFI/debian")).unwrap();
        std::fs::write(efi.join("EFI/debian/grubx64.efi"), b"x").unwrap();
        let tree = ImageTree::open(dir.path()).unwrap();
        {
            let _g = EmptyMountPoint::hide(&tree, Path::new(ESP_DIR)).unwrap();
            assert!(std::fs::read_dir(&efi).unwrap().next().is_none());
        }
        assert!(efi.join("EFI/debian/grubx64.efi").exists());
        assert!(!dir.path().join("boot/.kiln-esp-content").exists());
    }

    /// A scratch directory holding `tree/etc/hostname`.
    fn tree_with_hostname() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), b"kiln\n").unwrap();
        (dir, tree)
    }

    use crate::test_tools::have;

    fn read_table(file: &File) -> crate::partition::Table {
        use std::os::fd::AsFd;
        let size = file.metadata().unwrap().len();
        crate::partition::read(&mut crate::partition::Device::new(file.as_fd(), size))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn bare_filesystem_images_without_table() {
        if !have("mke2fs") || !have("dumpe2fs") || !have("mcopy") {
            return;
        }
        let (dir, tree) = tree_with_hostname();

        let raw = dir.path().join("root.ext4");
        let plan = crate::disk::plan_disk(
            crate::disk::Layout::None,
            FsType::Ext4,
            64 * MIB,
            "root",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
        .unwrap();
        crate::disk::lay_out(&raw, &plan).unwrap();
        build_filesystems(&raw, &ImageTree::open(&tree).unwrap(), &plan, None).unwrap();
        crate::disk::install_bootloader(&raw, &ImageTree::open(&tree).unwrap(), &plan).unwrap();
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&raw)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&plan.root_uuid));

        let raw = dir.path().join("root.vfat");
        let plan = crate::disk::plan_disk(
            crate::disk::Layout::None,
            FsType::Vfat,
            64 * MIB,
            "KILN",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
        .unwrap();
        crate::disk::lay_out(&raw, &plan).unwrap();
        build_filesystems(&raw, &ImageTree::open(&tree).unwrap(), &plan, None).unwrap();
        let out = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&raw)
            .arg("::/etc/hostname")
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"kiln\n");
    }

    #[test]
    fn btrfs_root_lands_at_its_partition_offset() {
        if !have("mkfs.btrfs") {
            return;
        }
        let (dir, tree) = tree_with_hostname();
        let raw = dir.path().join("disk.raw");
        let plan = crate::disk::plan_disk(
            crate::disk::Layout::Efi,
            FsType::Btrfs,
            256 * MIB,
            "root",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
        .unwrap();
        crate::disk::lay_out(&raw, &plan).unwrap();
        build_filesystems(&raw, &ImageTree::open(&tree).unwrap(), &plan, None).unwrap();
        let root = plan.root().unwrap();
        let file = File::open(&raw).unwrap();
        let mut magic = [0u8; 8];
        // The primary superblock is at 64 KiB; its magic at offset 0x40.
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, root.start + 0x10000 + 0x40)
            .unwrap();
        assert_eq!(&magic, b"_BHRfS_M");
        assert_eq!(read_table(&file).partitions.len(), 2);
        assert!(
            tree.join("boot/efi").is_dir(),
            "the ESP's mount point must exist in the root"
        );
    }

    #[test]
    fn ext4_root_lands_at_its_partition_offset() {
        if !have("mke2fs") || !have("dumpe2fs") {
            return;
        }
        let (dir, tree) = tree_with_hostname();
        let raw = dir.path().join("disk.raw");
        let plan = crate::disk::plan_disk(
            crate::disk::Layout::Mbr,
            FsType::Ext4,
            64 * MIB,
            "root",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
        .unwrap();
        crate::disk::lay_out(&raw, &plan).unwrap();
        build_filesystems(&raw, &ImageTree::open(&tree).unwrap(), &plan, None).unwrap();
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(format!("{}?offset={}", raw.display(), MIB))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&plan.root_uuid), "{text}");
        assert!(
            !text.contains("metadata_csum_seed") && !text.contains("orphan_file"),
            "{text}"
        );
        // The partition table survived mkfs.
        let file = File::open(&raw).unwrap();
        let t = read_table(&file);
        assert_eq!(
            (t.partitions[0].start, t.partitions[0].len),
            (MIB, 63 * MIB)
        );
    }
}
