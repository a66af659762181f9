//! disk-image-create `debian vm`: bootable images without root, every output
//! format, first-boot.d and growroot — booted for real in QEMU (TCG).

mod common;

use common::qemu::{Boot, BootOptions, Firmware};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

struct VmBuild {
    scratch: Scratch,
    out: PathBuf,
}

impl VmBuild {
    fn file(&self, ext: &str) -> PathBuf {
        PathBuf::from(format!("{}.{ext}", self.out.display()))
    }
}

/// One build of every format, shared by the tests of this file.
fn vm_build() -> &'static VmBuild {
    static B: OnceLock<VmBuild> = OnceLock::new();
    B.get_or_init(|| {
        let scratch = Scratch::new("vm");
        let out = scratch.join("vm");
        let tmp = scratch.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        chown_to_user(&tmp);
        let mut args = vec![
            "-t",
            "qcow2,raw,vhd,vmdk,tar",
            "--checksum",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(IMAGE_FLAVOURS);
        args.push("boot-report");
        let o = run_ok(
            kiln("disk-image-create", &args)
                .env("ELEMENTS_PATH", test_flavours_path(&[]))
                .env("TMPDIR", &tmp),
        );
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(
            log.contains("KILN-BLOCK-DEVICE disk.raw partitions=3"),
            "block-device.d did not see the laid-out disk:\n{log}"
        );
        let mut expected = vec!["tmp".to_string()];
        for f in ["qcow2", "raw", "vhd", "vmdk", "tar"] {
            for suffix in ["", ".sha256", ".md5"] {
                expected.push(format!("vm.{f}{suffix}"));
            }
        }
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_no_leftovers(&tmp, &scratch.path, &expected[1..]);
        for f in ["qcow2", "raw", "vhd", "vmdk", "tar"] {
            let p = PathBuf::from(format!("{}.{f}", out.display()));
            let m = std::fs::metadata(&p).unwrap();
            eprintln!(
                "size of {f}: {} MiB on disk ({} MiB apparent)",
                m_blocks(&m) / 1048576,
                m.len() / 1048576
            );
        }
        VmBuild { scratch, out }
    })
}

fn m_blocks(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(m) * 512
}

/// A copy-on-write overlay of the built qcow2, so a test may write to "the same disk".
fn overlay(b: &VmBuild, name: &str, size: Option<&str>) -> PathBuf {
    let p = b.scratch.join(name);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(b.file("qcow2"))
        .arg(&p);
    if let Some(s) = size {
        cmd.arg(s);
    }
    assert!(cmd.status().unwrap().success());
    p
}

fn boot_to_login(image: &Path, firmware: Firmware, format: &str) -> String {
    let mut g = Boot::start(image, &BootOptions::new(firmware, format)).unwrap();
    let t = g
        .wait_for("login:", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "{} ({firmware:?}, {format}): login prompt after {:.1}s",
        image.display(),
        t.as_secs_f64()
    );
    g.console()
}

/// Boots a writable disk to the login prompt, logs in as root (the boot-report
/// flavour allows it on the console) and powers off cleanly.
fn boot_and_power_off(image: &Path) -> String {
    let mut opts = BootOptions::new(Firmware::Bios, "qcow2");
    opts.snapshot = false;
    let mut g = Boot::start(image, &opts).unwrap();
    g.wait_for("login:", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.send_line("root").unwrap();
    g.wait_for("#", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.send_line("poweroff").unwrap();
    let _ = g.wait_for("reboot: Power down", Duration::from_secs(180));
    g.console()
}

#[test]
fn vm_qcow2_boots_under_seabios() {
    let b = vm_build();
    let console = boot_to_login(&b.file("qcow2"), Firmware::Bios, "qcow2");
    assert!(
        console.contains("GRUB") || console.contains("Booting"),
        "no bootloader output:\n{console}"
    );
}

#[test]
fn the_same_qcow2_boots_under_ovmf() {
    let b = vm_build();
    boot_to_login(&b.file("qcow2"), Firmware::Uefi, "qcow2");
}

#[test]
fn raw_image_boots_too() {
    let b = vm_build();
    boot_to_login(&b.file("raw"), Firmware::Bios, "raw");
}

#[test]
fn first_boot_hook_runs_on_the_first_boot_only() {
    let b = vm_build();
    let disk = overlay(b, "first-boot.qcow2", None);
    let first = boot_and_power_off(&disk);
    assert!(
        first.contains("KILN-FIRST-BOOT-MARKER"),
        "marker missing on first boot:\n{first}"
    );
    let second = boot_and_power_off(&disk);
    assert!(
        !second.contains("KILN-FIRST-BOOT-MARKER"),
        "marker on the second boot:\n{second}"
    );
}

#[test]
fn growroot_fills_a_resized_disk() {
    let b = vm_build();
    let disk = overlay(b, "grown.qcow2", Some("6G"));
    let mut g = Boot::start(&disk, &BootOptions::new(Firmware::Bios, "qcow2")).unwrap();
    g.wait_for("KILN-ROOT-SIZE ", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.wait_for("login:", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let console = g.console();
    let size: u64 = console
        .lines()
        .find_map(|l| l.split("KILN-ROOT-SIZE ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no size on the console:\n{console}"));
    assert!(
        size > 5 << 30,
        "root is {size} bytes on a 6 GiB disk:\n{console}"
    );
}

#[test]
fn every_format_is_recognised_and_checksums_verify() {
    let b = vm_build();
    for (ext, qemu_format) in [
        ("qcow2", "qcow2"),
        ("raw", "raw"),
        ("vhd", "vpc"),
        ("vmdk", "vmdk"),
    ] {
        let o = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(b.file(ext))
            .output()
            .unwrap();
        assert!(o.status.success());
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(info["format"], qemu_format, "{ext}: {info}");
    }
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(b.file("tar"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout)
        .lines()
        .any(|l| l == "./etc/shadow"));
    for ext in ["qcow2", "raw", "vhd", "vmdk", "tar"] {
        for (tool, sum) in [("sha256sum", "sha256"), ("md5sum", "md5")] {
            let st = Command::new(tool)
                .arg("-c")
                .arg(b.file(&format!("{ext}.{sum}")))
                .current_dir(&b.scratch.path)
                .output()
                .unwrap();
            assert!(
                st.status.success(),
                "{tool} -c vm.{ext}.{sum}: {}",
                String::from_utf8_lossy(&st.stdout)
            );
        }
    }
}

#[test]
fn partition_table_is_gpt_with_bios_boot_esp_and_root_last() {
    let b = vm_build();
    let o = Command::new("sfdisk")
        .arg("-J")
        .arg(b.file("raw"))
        .output()
        .unwrap();
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(t["partitiontable"]["label"], "gpt");
    let parts = t["partitiontable"]["partitions"].as_array().unwrap();
    let types: Vec<String> = parts
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_uppercase())
        .collect();
    assert!(
        types.contains(&"21686148-6449-6E6F-744E-656564454649".to_string()),
        "{types:?}"
    );
    assert!(
        types.contains(&"C12A7328-F81F-11D2-BA4B-00A0C93EC93B".to_string()),
        "{types:?}"
    );
    assert_eq!(
        types.last().unwrap(),
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "root must be last to grow"
    );
}

/// NAME.manifest.json: each output's size and SHA-256 match the file, the
/// kernel package's version is the one dpkg recorded inside the image, and
/// everything that varies between identical builds is kept under `timings`.
#[test]
fn manifest_describes_the_outputs_and_the_images_packages() {
    let b = vm_build();
    let text = std::fs::read_to_string(b.file("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let outputs = m["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 5, "{text}");
    for o in outputs {
        let name = o["name"].as_str().unwrap();
        let path = b.scratch.join(name);
        assert_eq!(
            o["size"].as_u64().unwrap(),
            std::fs::metadata(&path).unwrap().len()
        );
        let sum = Command::new("sha256sum").arg(&path).output().unwrap();
        let sum = String::from_utf8_lossy(&sum.stdout);
        assert_eq!(
            o["sha256"].as_str(),
            sum.split_whitespace().next(),
            "{name}"
        );
    }
    // dpkg's own record of the kernel package, read from the tar.
    let status = Command::new("tar")
        .arg("-xOf")
        .arg(b.file("tar"))
        .arg("./var/lib/dpkg/status")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    let kernel = status
        .split("\n\n")
        .find(|s| s.lines().next() == Some("Package: linux-image-cloud-amd64"))
        .and_then(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("Version: "))?;
            let p = s.lines().find_map(|l| l.strip_prefix("Package: "))?;
            Some((p.to_string(), v.to_string()))
        })
        .expect("no kernel package in the image's dpkg status");
    let listed = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == kernel.0.as_str())
        .unwrap_or_else(|| panic!("{} not in the manifest", kernel.0));
    assert_eq!(listed["version"], kernel.1.as_str());
    assert_eq!(listed["architecture"], "amd64");
    let flavours: Vec<&str> = m["flavours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for f in IMAGE_FLAVOURS {
        assert!(flavours.contains(&f), "{f} not in {flavours:?}");
    }
    assert!(m["flavours"][0]["sha256"].as_str().unwrap().len() == 64);
    assert_eq!(m["base_tree_cache_key"].as_str().unwrap().len(), 64);
    assert!(m["timings"].as_array().is_some_and(|t| !t.is_empty()));
}
