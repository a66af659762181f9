//! The layouts besides the default GPT-with-ESP, each built by kiln as the
//! unprivileged test user and booted under the firmware it is for: MBR under
//! SeaBIOS, EFI-only under OVMF, and a btrfs root (default layout) under both.

mod common;

use common::qemu::{Boot, BootOptions, Firmware};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// `debian vm` plus `extra`, as qcow2; returns the scratch dir and the image.
fn build(name: &str, extra: &[&str], env: &[(&str, &str)]) -> (Scratch, PathBuf) {
    let s = Scratch::new(name);
    let out = s.join(name);
    let mut args = vec!["-t", "qcow2", "-o", out.to_str().unwrap(), "debian", "vm"];
    args.extend(extra);
    let mut cmd = kiln("disk-image-create", &args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_ok(&mut cmd);
    (s, PathBuf::from(format!("{}.qcow2", out.display())))
}

fn boot_to_login(image: &Path, firmware: Firmware) -> String {
    let mut g = Boot::start(image, &BootOptions::new(firmware, "qcow2")).unwrap();
    let t = g
        .wait_for("login:", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{} under {firmware:?}: {e:#}", image.display()));
    eprintln!(
        "{} ({firmware:?}): login prompt after {:.1}s",
        image.display(),
        t.as_secs_f64()
    );
    g.console()
}

/// `sfdisk -J` of the image, read through a raw copy.
fn partition_table(image: &Path, scratch: &Scratch) -> serde_json::Value {
    let raw = scratch.join("table.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let o = Command::new("sfdisk").arg("-J").arg(&raw).output().unwrap();
    assert!(o.status.success(), "sfdisk -J {}", raw.display());
    let _ = std::fs::remove_file(&raw);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn mbr_image_boots_under_seabios() {
    let (s, image) = build("layout-mbr", &["block-device-mbr"], &[]);
    let t = partition_table(&image, &s);
    assert_eq!(t["partitiontable"]["label"], "dos", "{t}");
    assert_eq!(
        t["partitiontable"]["partitions"].as_array().unwrap().len(),
        1,
        "{t}"
    );
    boot_to_login(&image, Firmware::Bios);
}

#[test]
fn efi_only_image_boots_under_ovmf() {
    let (s, image) = build("layout-efi", &["block-device-efi"], &[]);
    let t = partition_table(&image, &s);
    assert_eq!(t["partitiontable"]["label"], "gpt", "{t}");
    let parts = t["partitiontable"]["partitions"].as_array().unwrap();
    // ESP and root, no BIOS boot partition.
    assert_eq!(parts.len(), 2, "{t}");
    assert!(
        !t.to_string()
            .contains("21686148-6449-6E6F-744E-656564454649"),
        "a BIOS boot partition in an EFI-only layout: {t}"
    );
    boot_to_login(&image, Firmware::Uefi);
}

#[test]
fn btrfs_root_boots_under_seabios_and_ovmf() {
    let (_s, image) = build("layout-btrfs", &[], &[("FS_TYPE", "btrfs")]);
    let console = boot_to_login(&image, Firmware::Bios);
    assert!(
        console.to_lowercase().contains("btrfs"),
        "no sign of btrfs on the console:\n{console}"
    );
    boot_to_login(&image, Firmware::Uefi);
}

#[test]
fn console_tail_drops_terminal_escapes() {
    let raw =
        b"\x1b[H\x1b[J\x1b[1;1HGNU GRUB\r\n\x1b[0;32m  OK  \x1b[0m] Reached target\r\nvm login: ";
    assert_eq!(
        kiln::boot::console_tail(raw, 2),
        "  OK  ] Reached target\nvm login: "
    );
}
