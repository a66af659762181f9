//! End to end, on a real Debian tree: finalise hooks of `vm` and `bootloader`, then
//! plan, lay out, filesystems, GRUB, qcow2, and boots to `login:` under SeaBIOS and
//! OVMF with the harness of tests/common/qemu.rs.
//!
//! Dev machines only: it runs the hooks by `chroot` (root) and takes minutes of TCG.
//!
//! ```text
//! mmdebstrap --variant=minbase --include=linux-image-cloud-amd64,systemd-sysv,\
//!   initramfs-tools,grub-pc-bin,grub-efi-amd64-bin,grub2-common,udev bookworm TREE
//! KILN_DISK_TEST_TREE=TREE cargo test --lib disk::boot_test -- --ignored --nocapture
//! ```

#[path = "../../tests/common/qemu.rs"]
mod qemu;

use super::*;
use qemu::{Boot, BootOptions, Firmware};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn tree() -> PathBuf {
    let t = PathBuf::from(
        std::env::var("KILN_DISK_TEST_TREE").unwrap_or("/var/tmp/kiln-disk-dev/tree".into()),
    );
    assert!(
        t.join("boot").is_dir(),
        "no Debian tree at {} (see the module docs)",
        t.display()
    );
    t
}

fn out_dir() -> PathBuf {
    let d = PathBuf::from(
        std::env::var("KILN_DISK_TEST_OUT").unwrap_or("/var/tmp/kiln-disk-dev/out".into()),
    );
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the flavours' finalise.d hooks inside the tree, as the pipeline would.
fn run_finalise_hooks(tree: &Path, plan: &DiskPlan) {
    let flavours = Path::new(env!("CARGO_MANIFEST_DIR")).join("flavours");
    let staged = tree.join("tmp/kiln-hooks");
    std::fs::create_dir_all(&staged).unwrap();
    for hook in [
        "vm/finalise.d/30-vm-fstab",
        "bootloader/finalise.d/50-bootloader",
    ] {
        let name = Path::new(hook).file_name().unwrap();
        std::fs::copy(flavours.join(hook), staged.join(name)).unwrap();
        let status = Command::new("chroot")
            .arg(tree)
            .arg(Path::new("/tmp/kiln-hooks").join(name))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(plan.hook_env())
            .env("DIB_GRUB_TIMEOUT", "1")
            .status()
            .unwrap();
        assert!(status.success(), "{hook} failed");
    }
    std::fs::remove_dir_all(&staged).unwrap();
}

fn timed<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> T {
    let t = Instant::now();
    let v = f().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    eprintln!("[timing] {what}: {:.2}s", t.elapsed().as_secs_f64());
    v
}

fn build_and_boot(layout: &str, fs: FsType, firmwares: &[Firmware]) {
    let tree = tree();
    let out = out_dir();
    let content = content_size(&tree).unwrap();
    let size = size_for_tree(&tree).unwrap();
    check_image_size(size, content, layout).unwrap();
    eprintln!(
        "[{layout}/{}] content {}, image {}",
        fs.as_str(),
        format_human(content),
        format_size(size)
    );
    let plan = plan_disk(layout, fs, size, "cloudimg-rootfs", vec![]).unwrap();
    timed("finalise hooks (chroot)", || {
        run_finalise_hooks(&tree, &plan);
        Ok(())
    });

    let raw = out.join(format!("{layout}-{}.raw", fs.as_str()));
    timed("lay_out", || lay_out(&raw, &plan));
    timed("build_filesystems", || {
        build_filesystems(&raw, &crate::tree::ImageTree::open(&tree).unwrap(), &plan)
    });
    timed("install_bootloader", || {
        install_bootloader(&raw, &crate::tree::ImageTree::open(&tree).unwrap(), &plan)
    });
    let qcow2 = raw.with_extension("qcow2");
    timed("convert qcow2 (compressed)", || {
        convert(&raw, Format::Qcow2, &qcow2, true, "")
    });
    // Checksum files are only ever created new: clear the last run's.
    for ext in ["qcow2.sha256", "qcow2.md5"] {
        let _ = std::fs::remove_file(raw.with_extension(ext));
    }
    timed("write_checksums", || write_checksums(&qcow2));

    if plan.table != TableKind::None {
        let d = Command::new("sfdisk").arg("-d").arg(&raw).output().unwrap();
        eprintln!("{}", String::from_utf8_lossy(&d.stdout));
    }
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&qcow2)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&info.stdout));

    for fw in firmwares {
        let mut guest = Boot::start(&qcow2, &BootOptions::new(*fw, "qcow2")).unwrap();
        let took = guest
            .wait_for("login:", Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("{layout} {fw:?}: {e:#}"));
        eprintln!(
            "[timing] boot to login: under {fw:?} ({layout}): {:.1}s",
            took.as_secs_f64()
        );
        let log = guest.console();
        assert!(
            log.contains(&format!("root=UUID={}", plan.root_uuid)),
            "kernel command line not seen"
        );
    }
}

#[test]
#[ignore = "needs a Debian tree, root (chroot) and minutes of QEMU TCG"]
fn gpt_ext4_image_boots_to_login_under_bios_and_uefi() {
    build_and_boot("gpt", FsType::Ext4, &[Firmware::Bios, Firmware::Uefi]);
}

#[test]
#[ignore = "needs a Debian tree, root (chroot) and minutes of QEMU TCG"]
fn mbr_image_boots_under_bios_and_efi_image_under_uefi() {
    build_and_boot("mbr", FsType::Ext4, &[Firmware::Bios]);
    build_and_boot("efi", FsType::Ext4, &[Firmware::Uefi]);
}

#[test]
#[ignore = "needs a Debian tree, root (chroot), btrfs-progs and minutes of QEMU TCG"]
fn gpt_btrfs_image_boots_to_login_under_bios_and_uefi() {
    build_and_boot("gpt", FsType::Btrfs, &[Firmware::Bios, Firmware::Uefi]);
}

#[test]
fn console_tail_drops_terminal_escapes() {
    let raw =
        b"\x1b[H\x1b[J\x1b[1;1HGNU GRUB\r\n\x1b[0;32m  OK  \x1b[0m] Reached target\r\nvm login: ";
    assert_eq!(
        qemu::tail_for_tests(raw, 2),
        "  OK  ] Reached target\nvm login: "
    );
}
