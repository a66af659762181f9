//! Step 3 of assembly: GRUB from the image's own modules, installed without
//! grub-install or grub-bios-setup (both want a block device and a mounted root).
//!
//! BIOS: `grub-mkimage -O i386-pc` makes core.img; it goes into the BIOS boot partition
//! (GPT) or the gap before the first partition (MBR), and boot.img's code goes into
//! sector 0 with the pointers grub-bios-setup would patch (grub-core's util/setup.c,
//! boot/i386/pc/boot.S and diskboot.S). UEFI: `grub-mkimage -O x86_64-efi` written as
//! the removable-media path EFI/BOOT/BOOTX64.EFI on the ESP. Both embed an early config
//! that finds the root filesystem by UUID and reads /boot/grub/grub.cfg from it (written
//! by the bootloader flavour's finalise.d hook).

use super::esp;
use super::layout::{DiskPlan, PartRole, TableKind};
use super::tool::{run, ScratchDir};
use crate::tree::ImageTree;
use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SECTOR: usize = 512;

// boot.img (boot.S): the boot code may use bytes 0..0x1b8; 0x03..0x5a is where a BPB
// would be (kept from the disk), then the pointers grub-bios-setup patches.
const BPB_START: usize = 0x03;
const BPB_END: usize = 0x5a;
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
const BOOT_CODE_END: usize = 0x1b8;

// diskboot.img, core.img's first sector: block lists grow down from its end, 12 bytes
// each (u64 start sector, u16 sector count, u16 load segment); a zero entry ends them.
const FIRST_BLOCKLIST: usize = SECTOR - 12;
const BLOCKLIST_SIZE: usize = 12;
/// diskboot.S loads the rest of core.img at segment 0x820 (0x8000 + one sector).
const CORE_LOAD_SEGMENT: u16 = 0x820;
/// util/setup.c: core.img must fit below 0x78000 once loaded at 0x9000.
const MAX_CORE_SECTORS: usize = (0x78000 - 0x9000) / SECTOR;

#[derive(Clone, Copy)]
enum Platform {
    Bios,
    Efi,
}

impl Platform {
    fn dir(self) -> &'static str {
        match self {
            Platform::Bios => "i386-pc",
            Platform::Efi => "x86_64-efi",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Platform::Bios => "grub-pc-bin",
            Platform::Efi => "grub-efi-amd64-bin",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Platform::Bios => "BIOS",
            Platform::Efi => "UEFI",
        }
    }

    /// Modules built into the image, enough to reach and run grub.cfg and boot Linux
    /// even when /boot/grub/<platform> holds no modules.
    fn modules(self, fs_module: &'static str) -> Vec<&'static str> {
        let mut m = vec![
            "part_gpt",
            "part_msdos",
            fs_module,
            "search",
            "search_fs_uuid",
            "normal",
            "configfile",
            "linux",
            "serial",
            "terminal",
            "echo",
            "test",
            "gzio",
        ];
        match self {
            Platform::Bios => m.insert(0, "biosdisk"),
            Platform::Efi => m.extend(["efi_gop", "all_video"]),
        }
        m
    }

    /// The image's own GRUB modules for this platform, copied out of the tree into
    /// `scratch` (grub-mkimage would follow a planted symlink to a host file).
    fn modules_dir(self, tree: &ImageTree, scratch: &Path) -> Result<PathBuf> {
        let rel = Path::new("usr/lib/grub").join(self.dir());
        if !tree.is_file(&rel.join("kernel.img")) || !tree.is_file(&rel.join("moddep.lst")) {
            bail!(
                "the image has no GRUB for {}: /{} is missing; install the package {} in the image \
                 (the bootloader flavour does)",
                self.name(),
                rel.join("kernel.img").display(),
                self.package()
            );
        }
        let dir = scratch.join(self.dir());
        tree.stage(&rel, &dir)?;
        Ok(dir)
    }
}

/// Step 3: GRUB for BIOS when the layout has a BIOS boot partition or an MBR, for UEFI
/// when it has an ESP; nothing for a bare filesystem image.
pub fn install_bootloader(raw: &Path, tree: &ImageTree, plan: &DiskPlan) -> Result<()> {
    if plan.table == TableKind::None {
        return Ok(());
    }
    let scratch = ScratchDir::beside(raw, "grub")?;
    // Both checks before any write, so a missing package leaves the image untouched.
    let bios = if plan.needs_bios_grub() {
        Some(Platform::Bios.modules_dir(tree, scratch.path())?)
    } else {
        None
    };
    let efi = if plan.needs_efi_grub() {
        Some(Platform::Efi.modules_dir(tree, scratch.path())?)
    } else {
        None
    };

    let early = scratch.path().join("early.cfg");
    std::fs::write(&early, early_config(&plan.root_uuid))
        .with_context(|| format!("cannot write {}", early.display()))?;

    if let Some(dir) = bios {
        let core = scratch.path().join("core.img");
        mkimage(&dir, Platform::Bios, &early, &core, plan)?;
        install_bios(raw, &dir, &core, plan).context("cannot install GRUB for BIOS")?;
    }
    if let Some(dir) = efi {
        let boot = scratch.path().join("EFI/BOOT");
        std::fs::create_dir_all(&boot)
            .with_context(|| format!("cannot create {}", boot.display()))?;
        mkimage(&dir, Platform::Efi, &early, &boot.join("BOOTX64.EFI"), plan)?;
        let part = plan
            .partition(PartRole::Esp)
            .context("the disk plan has no ESP")?;
        esp::copy_into(raw, part, &[scratch.path().join("EFI")], "::/", plan.epoch)
            .context("cannot install GRUB for UEFI")?;
    }
    Ok(())
}

/// What grub-install would put in load.cfg: find the root filesystem, read
/// $prefix/grub.cfg from it (GRUB's normal mode does, after this runs).
fn early_config(root_uuid: &str) -> String {
    format!("search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n")
}

fn mkimage(
    dir: &Path,
    platform: Platform,
    early: &Path,
    out: &Path,
    plan: &DiskPlan,
) -> Result<()> {
    run(Command::new("grub-mkimage")
        .arg("-d")
        .arg(dir)
        .arg("-O")
        .arg(platform.dir())
        .arg("-o")
        .arg(out)
        .arg("-c")
        .arg(early)
        .args(["-p", "/boot/grub"])
        .args(platform.modules(plan.fs_type.grub_module())))
    .with_context(|| format!("cannot make the GRUB image for {}", platform.name()))?;
    Ok(())
}

fn install_bios(raw: &Path, dir: &Path, core_path: &Path, plan: &DiskPlan) -> Result<()> {
    // Where core.img goes: the BIOS boot partition, or the sectors between the MBR and
    // the first partition.
    let (lba, room) = match plan.table {
        TableKind::Gpt => {
            let p = plan
                .partition(PartRole::BiosBoot)
                .context("the GPT layout has no BIOS boot partition")?;
            (p.start / SECTOR as u64, (p.size / SECTOR as u64) as usize)
        }
        _ => {
            let first = plan
                .partitions
                .iter()
                .map(|p| p.start)
                .min()
                .context("the disk plan has no partitions")?;
            (1, ((first / SECTOR as u64) as usize).saturating_sub(1))
        }
    };
    let mut core =
        std::fs::read(core_path).with_context(|| format!("cannot read {}", core_path.display()))?;
    let sectors = core.len().div_ceil(SECTOR);
    ensure!(sectors >= 2, "core.img is only {} bytes", core.len());
    ensure!(
        sectors <= room.min(MAX_CORE_SECTORS),
        "core.img is {sectors} sectors; at most {} fit",
        room.min(MAX_CORE_SECTORS)
    );
    core.resize(sectors * SECTOR, 0);
    patch_core(&mut core, lba)?;

    let boot_path = dir.join("boot.img");
    let boot = std::fs::read(&boot_path)
        .with_context(|| format!("cannot read {}", boot_path.display()))?;
    let file = File::options()
        .read(true)
        .write(true)
        .open(raw)
        .with_context(|| format!("cannot open {}", raw.display()))?;
    let mut mbr = vec![0u8; SECTOR];
    file.read_exact_at(&mut mbr, 0)
        .context("cannot read sector 0")?;
    patch_mbr(&mut mbr, &boot, lba)?;

    file.write_all_at(&core, lba * SECTOR as u64)
        .context("cannot write core.img")?;
    file.write_all_at(&mbr, 0)
        .context("cannot write the boot sector")?;
    file.sync_all().context("cannot sync the image")
}

/// Points diskboot's first block list at the rest of core.img, which lies right after
/// its first sector at `lba`.
fn patch_core(core: &mut [u8], lba: u64) -> Result<()> {
    let sectors = core.len() / SECTOR;
    let entry = &core[FIRST_BLOCKLIST..SECTOR];
    // diskboot.S's defaults (start 2, segment 0x820): anything else means a diskboot.img
    // laid out differently from the one this code knows.
    ensure!(
        entry[0..8] == 2u64.to_le_bytes() && entry[10..12] == CORE_LOAD_SEGMENT.to_le_bytes(),
        "core.img's first sector does not look like GRUB's diskboot.img (block list {:02x?})",
        entry
    );
    let count = u16::try_from(sectors - 1).context("core.img is too large")?;
    core[FIRST_BLOCKLIST..FIRST_BLOCKLIST + 8].copy_from_slice(&(lba + 1).to_le_bytes());
    core[FIRST_BLOCKLIST + 8..FIRST_BLOCKLIST + 10].copy_from_slice(&count.to_le_bytes());
    core[FIRST_BLOCKLIST - BLOCKLIST_SIZE..FIRST_BLOCKLIST].fill(0);
    Ok(())
}

/// boot.img's code into sector 0, keeping the disk's BPB area, disk signature and
/// partition table, with what util/setup.c patches: the core's sector, "boot drive
/// from BIOS" (0xff), and the drive check jump replaced by NOPs (buggy BIOSes pass
/// 0x00 even when booting from a hard disk).
fn patch_mbr(mbr: &mut [u8], boot: &[u8], core_lba: u64) -> Result<()> {
    ensure!(
        boot.len() == SECTOR,
        "boot.img is {} bytes, not {SECTOR}",
        boot.len()
    );
    ensure!(
        boot[KERNEL_SECTOR..KERNEL_SECTOR + 8] == 1u64.to_le_bytes() && boot[DRIVE_CHECK] == 0xeb,
        "boot.img does not look like GRUB's boot.S (kernel sector {:02x?}, drive check {:02x})",
        &boot[KERNEL_SECTOR..KERNEL_SECTOR + 8],
        boot[DRIVE_CHECK]
    );
    mbr[..BPB_START].copy_from_slice(&boot[..BPB_START]);
    mbr[BPB_END..BOOT_CODE_END].copy_from_slice(&boot[BPB_END..BOOT_CODE_END]);
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    mbr[BOOT_DRIVE] = 0xff;
    mbr[DRIVE_CHECK] = 0x90;
    mbr[DRIVE_CHECK + 1] = 0x90;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_boot_img() -> Vec<u8> {
        let mut b = vec![0xccu8; SECTOR];
        b[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&1u64.to_le_bytes());
        b[BOOT_DRIVE] = 0xff;
        b[DRIVE_CHECK] = 0xeb;
        b[DRIVE_CHECK + 1] = 0x05;
        b
    }

    #[test]
    fn mbr_patch_keeps_partition_table_and_bpb() {
        let mut mbr = vec![0u8; SECTOR];
        mbr[0x10] = 0x42; // in the BPB area
        mbr[0x1be..0x1fe].fill(0x77);
        mbr[0x1b8] = 0x99; // disk signature
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        patch_mbr(&mut mbr, &fake_boot_img(), 2048 + 64 * 2048).unwrap();
        assert_eq!(&mbr[..3], &[0xcc; 3]);
        assert_eq!(mbr[0x10], 0x42);
        assert_eq!(mbr[0x5c..0x64], (2048u64 + 64 * 2048).to_le_bytes());
        assert_eq!((mbr[0x64], mbr[0x66], mbr[0x67]), (0xff, 0x90, 0x90));
        assert_eq!(mbr[0x1b8], 0x99);
        assert!(mbr[0x1be..0x1fe].iter().all(|b| *b == 0x77));
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
    }

    #[test]
    fn mbr_patch_refuses_unknown_boot_img() {
        let mut boot = fake_boot_img();
        boot[DRIVE_CHECK] = 0x90;
        assert!(patch_mbr(&mut vec![0u8; SECTOR], &boot, 1).is_err());
    }

    #[test]
    fn core_blocklist_points_after_first_sector() {
        let mut core = vec![0u8; 5 * SECTOR];
        core[FIRST_BLOCKLIST..FIRST_BLOCKLIST + 8].copy_from_slice(&2u64.to_le_bytes());
        core[FIRST_BLOCKLIST + 8..FIRST_BLOCKLIST + 10].copy_from_slice(&4u16.to_le_bytes());
        core[SECTOR - 2..SECTOR].copy_from_slice(&0x820u16.to_le_bytes());
        patch_core(&mut core, 133120).unwrap();
        assert_eq!(core[0x1f4..0x1fc], 133121u64.to_le_bytes());
        assert_eq!(core[0x1fc..0x1fe], 4u16.to_le_bytes());
        assert_eq!(core[0x1fe..0x200], 0x820u16.to_le_bytes());
        assert!(core[0x1e8..0x1f4].iter().all(|b| *b == 0));
        let mut other = vec![0u8; 5 * SECTOR];
        assert!(patch_core(&mut other, 1).is_err());
    }

    #[test]
    fn missing_grub_modules_name_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let tree = ImageTree::open(dir.path()).unwrap();
        let err = Platform::Bios
            .modules_dir(&tree, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("grub-pc-bin") && err.contains("BIOS"), "{err}");
        let err = Platform::Efi
            .modules_dir(&tree, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("grub-efi-amd64-bin"), "{err}");
    }

    #[test]
    fn real_core_img_patches_cleanly() {
        let dir = Path::new("/usr/lib/grub/i386-pc");
        if !crate::test_tools::have_file(&dir.join("kernel.img"), "grub-pc-bin")
            || !crate::test_tools::have("grub-mkimage")
        {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let early = scratch.path().join("early.cfg");
        std::fs::write(&early, early_config("0a1b2c3d-0000-4000-8000-000000000000")).unwrap();
        let plan = crate::disk::plan_disk(
            crate::disk::Layout::Gpt,
            crate::disk::FsType::Ext4,
            1 << 30,
            "root",
            vec![],
            &crate::disk::Seed::random().unwrap(),
            None,
        )
        .unwrap();
        let out = scratch.path().join("core.img");
        mkimage(dir, Platform::Bios, &early, &out, &plan).unwrap();
        let mut core = std::fs::read(&out).unwrap();
        let sectors = core.len().div_ceil(SECTOR);
        // grub-mkimage fills in the count; setup only moves the start.
        assert_eq!(core[0x1fc..0x1fe], ((sectors - 1) as u16).to_le_bytes());
        core.resize(sectors * SECTOR, 0);
        patch_core(&mut core, 130 * 1024).unwrap();
        let boot = std::fs::read(dir.join("boot.img")).unwrap();
        patch_mbr(&mut vec![0u8; SECTOR], &boot, 130 * 1024).unwrap();
    }
}
