//! ramdisk-image-create: a kernel and initramfs that boot straight into their
//! job — checked by booting them for real under QEMU (TCG): the test flavour's
//! init.d marker, the inventory JSON, burn-in, reproducible bytes, and
//! provisioning a disk from a kiln-built qcow2 that then boots on its own.

mod common;

use common::qemu::{Boot, BootOptions, Firmware};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Any fixed value: two builds with it must give the same bytes.
const EPOCH: &str = "1700000000";
/// One flavour set for every build here, so they share one cached base tree.
const RAMDISK_FLAVOURS: [&str; 5] = ["debian", "inventory", "burnin", "deploy", "ramdisk-marker"];
const MAC: &str = "52:54:00:12:34:56";

struct RamdiskBuild {
    scratch: Scratch,
    out: PathBuf,
}

impl RamdiskBuild {
    fn kernel(&self) -> PathBuf {
        PathBuf::from(format!("{}.kernel", self.out.display()))
    }
    fn initramfs(&self) -> PathBuf {
        PathBuf::from(format!("{}.initramfs", self.out.display()))
    }
}

fn build_ramdisk(
    scratch: &Scratch,
    name: &str,
    flavours: &[&str],
    elements_path: &str,
) -> std::process::Output {
    let out = scratch.join(name);
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    chown_to_user(&tmp);
    let mut args = vec!["-o", out.to_str().unwrap()];
    args.extend(flavours);
    kiln("ramdisk-image-create", &args)
        .env("ELEMENTS_PATH", elements_path)
        .env("TMPDIR", &tmp)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .expect("running ramdisk-image-create")
}

/// The ramdisk every boot test uses, built once.
fn ramdisk() -> &'static RamdiskBuild {
    static B: OnceLock<RamdiskBuild> = OnceLock::new();
    B.get_or_init(|| {
        let scratch = Scratch::new("ramdisk");
        let t = Instant::now();
        let o = build_ramdisk(&scratch, "r", &RAMDISK_FLAVOURS, &test_flavours_path(&[]));
        assert!(
            o.status.success(),
            "ramdisk-image-create failed:\n{}",
            output_text(&o)
        );
        eprintln!("ramdisk build: {:.1}s", t.elapsed().as_secs_f64());
        assert_no_leftovers(
            &scratch.join("tmp"),
            &scratch.path,
            &["r.kernel", "r.initramfs"],
        );
        let out = scratch.join("r");
        let b = RamdiskBuild { scratch, out };
        eprintln!(
            "kernel {} KiB, initramfs {} KiB",
            std::fs::metadata(b.kernel()).unwrap().len() / 1024,
            std::fs::metadata(b.initramfs()).unwrap().len() / 1024
        );
        b
    })
}

fn boot(b: &RamdiskBuild, append: &str, extra: &[&str]) -> Boot {
    let mut opts = BootOptions::new(Firmware::Bios, "raw");
    opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
    Boot::start_kernel(
        &b.kernel(),
        &b.initramfs(),
        &format!("console=ttyS0 {append}"),
        &opts,
    )
    .unwrap()
}

fn wait(g: &mut Boot, what: &str) -> Duration {
    g.wait_for(what, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Lists the initramfs with the host's zstd and cpio.
fn listing(initramfs: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | cpio -itv --quiet",
            initramfs.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn initramfs_is_a_zstd_newc_archive_of_a_small_root() {
    let b = ramdisk();
    let list = listing(&b.initramfs());
    let names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for want in [
        "init",
        "bin/busybox",
        "bin/bash",
        "bin/qemu-img",
        "bin/lsblk",
        "dev/console",
        "etc/udhcpc/default.script",
    ] {
        assert!(
            names.contains(&want),
            "{want} missing from the initramfs:\n{list}"
        );
    }
    assert!(
        names.iter().any(|n| n.ends_with("/virtio_blk.ko")),
        "no virtio_blk module:\n{list}"
    );
    assert!(
        names.iter().any(|n| n.ends_with("/modules.dep")),
        "no modules.dep:\n{list}"
    );
    // Not the whole tree: no systemd, no apt.
    assert!(
        !names
            .iter()
            .any(|n| n.contains("systemd") || n.contains("apt/")),
        "the tree leaked in:\n{list}"
    );
    let console = list.lines().find(|l| l.ends_with(" dev/console")).unwrap();
    assert!(console.starts_with("crw-------"), "{console}");
    // Everything belongs to root, whatever user built it.
    for l in list.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(
            f.len() > 3 && f[2] == "root" && f[3] == "root",
            "not root-owned: {l}"
        );
    }
}

#[test]
fn ramdisk_boots_to_the_marker_of_a_test_flavour() {
    let b = ramdisk();
    let mut g = boot(b, "kiln.after=poweroff", &[]);
    let t = wait(&mut g, "KILN-RAMDISK-MARKER: init.d ran");
    eprintln!("boot to the init.d marker: {:.1}s", t.as_secs_f64());
    wait(
        &mut g,
        "KILN-RAMDISK-INSTALL: ramdisk-install.d ran for kernel",
    );
    wait(&mut g, "KILN-RAMDISK-BINARY-DEPS: lsblk runs");
    wait(&mut g, "reboot: Power down");
    g.wait_exit(Duration::from_secs(60)).unwrap();
}

#[test]
fn inventory_json_names_the_vms_disk_and_nic() {
    let b = ramdisk();
    let disk = b.scratch.join("inventory-disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let drive = format!("file={},if=none,id=d1,format=raw", disk.display());
    let netdev = format!("virtio-net-pci,netdev=n,mac={MAC}");
    let mut g = boot(
        b,
        "kiln.after=poweroff ip=dhcp",
        &[
            "-smp",
            "2",
            "-netdev",
            "user,id=n",
            "-device",
            &netdev,
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d1,serial=kiln-extra",
        ],
    );
    wait(&mut g, "KILN-INVENTORY-END");
    let console = g.console();
    let json = console
        .split("KILN-INVENTORY-BEGIN")
        .nth(1)
        .and_then(|s| s.split("KILN-INVENTORY-END").next())
        .unwrap()
        .trim();
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    assert_eq!(v["cpus"]["count"], 2, "{v}");
    assert!(
        v["cpus"]["model"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    let mem = v["memory"]["total_bytes"].as_u64().unwrap();
    assert!(mem > 512 << 20 && mem <= 1024 << 20, "{v}");
    let disks = v["disks"].as_array().unwrap();
    let d = disks
        .iter()
        .find(|d| d["serial"] == "kiln-extra")
        .unwrap_or_else(|| panic!("no disk with our serial: {v}"));
    assert_eq!(d["name"], "vda", "{v}");
    assert_eq!(d["size_bytes"], 64u64 << 20, "{v}");
    let nics = v["nics"].as_array().unwrap();
    let n = nics
        .iter()
        .find(|n| n["mac"] == MAC)
        .unwrap_or_else(|| panic!("no NIC with {MAC}: {v}"));
    assert_eq!(n["driver"], "virtio_net", "{v}");
    assert!(
        n["ipv4"].as_str().is_some_and(|a| a.starts_with("10.0.2.")),
        "DHCP did not configure it: {v}"
    );
    wait(&mut g, "reboot: Power down");
}

#[test]
fn burnin_passes_on_a_healthy_vm() {
    let b = ramdisk();
    let mut g = boot(
        b,
        "kiln.after=poweroff kiln.burnin=5 kiln.burnin.memory=5",
        &["-smp", "2"],
    );
    wait(&mut g, "KILN-BURNIN: ");
    let t = wait(&mut g, "kiln ramdisk: powering off");
    let console = g.console();
    assert!(
        console.contains("KILN-BURNIN: PASS 5s, 2 CPUs"),
        "{console}"
    );
    eprintln!("burn-in run done after {:.1}s", t.as_secs_f64());
}

#[test]
fn two_builds_with_the_same_source_date_epoch_are_identical() {
    let first = ramdisk();
    let scratch = Scratch::new("ramdisk-again");
    let o = build_ramdisk(
        &scratch,
        "again",
        &RAMDISK_FLAVOURS,
        &test_flavours_path(&[]),
    );
    assert!(
        o.status.success(),
        "second build failed:\n{}",
        output_text(&o)
    );
    let a = std::fs::read(first.initramfs()).unwrap();
    let b = std::fs::read(scratch.join("again.initramfs")).unwrap();
    assert!(
        a == b,
        "initramfs differs between two builds ({} vs {} bytes)",
        a.len(),
        b.len()
    );
    assert_eq!(
        std::fs::read(first.kernel()).unwrap(),
        std::fs::read(scratch.join("again.kernel")).unwrap()
    );
}

#[test]
fn a_missing_binary_dep_stops_the_build_naming_its_list() {
    let scratch = Scratch::new("ramdisk-missing-dep");
    let flavours = scratch.flavour(
        "wants-nothing-such",
        &[
            (
                "README.md",
                "test flavour: lists a binary that no package installs\n",
                false,
            ),
            ("binary-deps.d/wants", "kiln-no-such-binary\n", false),
        ],
    );
    let mut set: Vec<&str> = RAMDISK_FLAVOURS.to_vec();
    set.push("wants-nothing-such");
    let o = build_ramdisk(&scratch, "bad", &set, &test_flavours_path(&[&flavours]));
    assert!(
        !o.status.success(),
        "the build should fail:\n{}",
        output_text(&o)
    );
    let text = output_text(&o);
    assert!(
        text.contains("binary-deps.d/wants lists kiln-no-such-binary"),
        "{text}"
    );
    assert!(!scratch.join("bad.initramfs").exists() && !scratch.join("bad.kernel").exists());
}

/// The provisioning flow: the deploy ramdisk writes a kiln-built `debian vm`
/// qcow2 (the second disk, given to the guest as its raw qcow2 bytes) onto an
/// empty first disk, powers off, and that disk then boots on its own.
#[test]
fn deploy_writes_a_kiln_qcow2_onto_an_empty_disk_that_then_boots() {
    let b = ramdisk();
    let scratch = Scratch::new("ramdisk-deploy");
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    chown_to_user(&tmp);
    let image = scratch.join("vm");
    let mut args = vec!["-o", image.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    run_ok(
        kiln("disk-image-create", &args)
            .env("ELEMENTS_PATH", test_flavours_path(&[]))
            .env("TMPDIR", &tmp),
    );
    let qcow2 = scratch.join("vm.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow2)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let virtual_size = info["virtual-size"].as_u64().unwrap();

    let target = scratch.join("target.raw");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(virtual_size + (64 << 20))
        .unwrap();
    let target_drive = format!("file={},if=virtio,format=raw", target.display());
    let source_drive = format!("file={},if=virtio,format=raw,readonly=on", qcow2.display());
    let mut g = boot(
        b,
        "kiln.deploy.source=/dev/vdb kiln.deploy.target=/dev/vda",
        &["-drive", &target_drive, "-drive", &source_drive],
    );
    wait(&mut g, "kiln ramdisk: source file format: qcow2");
    let t = wait(&mut g, "KILN-DEPLOY: DONE /dev/vdb -> /dev/vda");
    eprintln!("deploy done after {:.1}s", t.as_secs_f64());
    wait(&mut g, "reboot: Power down");
    g.wait_exit(Duration::from_secs(60)).unwrap();
    drop(g);

    let mut g = Boot::start(&target, &BootOptions::new(Firmware::Bios, "raw")).unwrap();
    let t = wait(&mut g, "login:");
    eprintln!(
        "the deployed disk reached login: after {:.1}s",
        t.as_secs_f64()
    );
}
