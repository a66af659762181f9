//! A flavour that asks for a real block device (docs/architecture.md §6): kiln attaches the
//! image through kiln-helper (setuid, or through sudo), its block-device.d hook
//! repartitions /dev/loopN with sfdisk and makes a filesystem on a partition,
//! the result boots; nothing is left attached whatever happens to the build. Without
//! a real device, a hook that moves a partition in the disk file is followed the same way.

mod common;

use common::helper::{install_setuid, install_sudo};
use common::qemu::{Boot, BootOptions, Firmware};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// A loop device bound to a file. The kernel numbers every binding
/// (`diskseq`), so a device freed and bound again elsewhere is not taken for it.
#[derive(Debug)]
struct Binding {
    device: String,
    diskseq: String,
    file: String,
}

impl Binding {
    fn still_bound(&self) -> bool {
        let sys = Path::new("/sys/block").join(&self.device);
        std::fs::read_to_string(sys.join("diskseq")).is_ok_and(|n| n.trim() == self.diskseq)
            && sys.join("loop/backing_file").exists()
    }
}

/// Loop devices whose backing file lies under `dir`.
fn bindings_under(dir: &Path) -> Vec<Binding> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let (Ok(diskseq), Ok(file)) = (
            std::fs::read_to_string(e.path().join("diskseq")),
            std::fs::read_to_string(e.path().join("loop/backing_file")),
        ) else {
            continue;
        };
        if file.trim().starts_with(&dir.display().to_string()) {
            found.push(Binding {
                device: e.file_name().to_string_lossy().into_owned(),
                diskseq: diskseq.trim().to_string(),
                file: file.trim().to_string(),
            });
        }
    }
    found
}

fn loops_under(dir: &Path) -> Vec<String> {
    bindings_under(dir)
        .iter()
        .map(|b| format!("{} -> {}", b.device, b.file))
        .collect()
}

/// Loop devices are freed when the last descriptor closes, which happens as the
/// killed build's processes exit: allow that a moment.
fn assert_no_loop_device(dir: &Path) {
    let start = Instant::now();
    loop {
        let left = loops_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "loop devices left attached: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// As assert_no_loop_device, for bindings seen while the build ran. Once the
/// build's mounts are gone the kernel names a leftover's file by its path
/// inside the build (`/image/disk.raw`), no longer under the scratch directory.
fn assert_released(bound: &[Binding]) {
    let start = Instant::now();
    loop {
        let left: Vec<&Binding> = bound.iter().filter(|b| b.still_bound()).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "loop devices left attached: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The binding kiln reports in its log ("the image is /dev/loopN (diskseq S)"),
/// checked released after kiln exited: a path-based check is blind by then,
/// since the kernel names a leftover's file by its path inside the build.
fn assert_logged_binding_released(log: &str) {
    let line = log
        .lines()
        .find(|l| l.contains("block-device: the image is /dev/"))
        .unwrap_or_else(|| panic!("kiln did not say which device it attached:\n{log}"));
    let rest = line.split("the image is /dev/").nth(1).unwrap();
    let device = rest.split_whitespace().next().unwrap().to_string();
    let diskseq = rest
        .split("(diskseq ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no diskseq in: {line}"))
        .to_string();
    assert_ne!(diskseq, "unknown", "{line}");
    assert_released(&[Binding {
        device,
        diskseq,
        file: "(the build's image)".into(),
    }]);
}

fn assert_no_mount(dir: &Path) {
    let needle = dir.display().to_string();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(mi) = std::fs::read_to_string(p.path().join("mountinfo")) {
            assert!(
                !mi.contains(&needle),
                "a mount under {needle} is left in {}",
                p.path().display()
            );
        }
    }
}

fn build_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--image-size", "3G", "-o", out];
    args.extend(extra);
    args.extend(IMAGE_FLAVOURS);
    args
}

/// disk-image-create with the test flavours (and `flavours`), TMPDIR and KILN_HELPER set.
fn build_cmd(
    args: &[&str],
    tmp: &Path,
    helper: impl AsRef<std::ffi::OsStr>,
    flavours: &[&Path],
) -> std::process::Command {
    let mut cmd = kiln("disk-image-create", args);
    cmd.env("ELEMENTS_PATH", test_flavours_path(flavours))
        .env("TMPDIR", tmp)
        .env("KILN_HELPER", helper);
    cmd
}

#[test]
fn without_kiln_helper_a_flavour_that_asks_fails_at_plan_time_with_the_install_steps() {
    let (s, tmp) = scratch_with_tmp("bdev-nohelper");
    let out = s.join("img");
    let mut args = build_args(out.to_str().unwrap(), &["--dry-run"]);
    args.push("real-disk");
    let o = build_cmd(&args, &tmp, "/nonexistent/kiln-helper", &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}", output_text(&o));
    assert!(
        err.contains("real-disk") && err.contains("real-block-device"),
        "names neither flavour nor file:\n{err}"
    );
    assert!(
        err.contains("4755") && err.contains("sudoers.d") && err.contains("visudo"),
        "no install instructions:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_hook_repartitions_the_real_device_and_the_image_boots() {
    let helper = install_setuid();
    let (s, tmp) = scratch_with_tmp("bdev-setuid");
    let out = s.join("img");
    let mut args = build_args(out.to_str().unwrap(), &["-t", "qcow2"]);
    args.extend(["real-disk", "boot-report"]);
    let started = Instant::now();
    let o = run_ok(&mut build_cmd(&args, &tmp, &helper, &[]));
    eprintln!(
        "build with a real block device: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains("KILN-REAL-DISK loop")
            && log.contains("partitions=4")
            && log.contains("p4=67108864"),
        "the hook did not repartition:\n{log}"
    );
    assert!(
        log.contains("partition 3 is now at"),
        "kiln did not adopt the shrunk root partition:\n{log}"
    );
    assert!(
        log.contains("KILN-LOOP-DETACH refused"),
        "a hook could detach the lent device:\n{log}"
    );
    assert_no_loop_device(&s.path);
    assert_logged_binding_released(&log);
    assert_no_leftovers(&tmp, &s.path, &["img.qcow2"]);

    let mut g = Boot::start(
        &s.join("img.qcow2"),
        &BootOptions::new(Firmware::Bios, "qcow2"),
    )
    .unwrap();
    g.wait_for("KILN-DATA-LABEL kiln-data", Duration::from_secs(420))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.wait_for("login:", Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// One policy for both paths (disk::adopt_table): a partition moved in the disk
/// file, without kiln-helper, is filled where the table now puts it.
#[test]
fn a_hook_moves_root_in_the_file_and_kiln_fills_it_there() {
    let (s, tmp) = scratch_with_tmp("bdev-file-move");
    let out = s.join("img");
    let mut args = build_args(out.to_str().unwrap(), &["-t", "raw"]);
    args.push("move-root");
    let o = run_ok(&mut build_cmd(&args, &tmp, "/nonexistent/kiln-helper", &[]));
    let log = String::from_utf8_lossy(&o.stderr);
    let moved_to: u64 = log
        .lines()
        .find_map(|l| l.split("KILN-MOVED-ROOT p3 start=").nth(1))
        .unwrap_or_else(|| panic!("the hook did not move partition 3:\n{log}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        log.contains(&format!("partition 3 is now at {} MiB", moved_to >> 20)),
        "kiln did not adopt the moved root partition:\n{log}"
    );
    let image = s.join("img.raw");
    let o = run_ok(std::process::Command::new("sfdisk").arg("-J").arg(&image));
    let table: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let root = &table["partitiontable"]["partitions"][2];
    assert_eq!(root["start"].as_u64().unwrap() * 512, moved_to);
    // The kernel is read from the filesystem at the partition's new offset.
    let o = run_ok(&mut kiln(
        "disk-image-get-kernel",
        &[
            "-i",
            image.to_str().unwrap(),
            "-d",
            s.path.to_str().unwrap(),
            "-o",
            "k",
            "-x",
        ],
    ));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("partition 3 (\"root\"): ext2/3/4"), "{said}");
    assert!(s.join("k-vmlinuz").is_file());
    assert_no_leftovers(&tmp, &s.path, &["img.raw", "k-vmlinuz", "k-initrd"]);
}

#[test]
fn through_sudo_the_same_build_works() {
    let helper = install_sudo();
    let (s, tmp) = scratch_with_tmp("bdev-sudo");
    let out = s.join("img");
    let mut args = build_args(out.to_str().unwrap(), &["-t", "raw"]);
    args.push("real-disk");
    let o = run_ok(&mut build_cmd(&args, &tmp, &helper, &[]));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains("KILN-REAL-DISK loop") && log.contains("partitions=4"),
        "{log}"
    );
    assert_no_loop_device(&s.path);
    assert_logged_binding_released(&log);
    assert_no_leftovers(&tmp, &s.path, &["img.raw"]);
    let parts = std::process::Command::new("sfdisk")
        .arg("--dump")
        .arg(s.join("img.raw"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&parts.stdout);
    assert_eq!(table.matches("start=").count(), 4, "{table}");
}

/// Starts a build whose block-device.d hook runs `hook`, kills kiln (the
/// caller) with SIGKILL when a stderr line contains `marker` and the image is
/// on a loop device, and checks that no loop device and no mount of the build
/// is left.
fn sigkill_at(name: &str, hook: &str, marker: &'static str) {
    let helper = install_setuid();
    let (s, tmp) = scratch_with_tmp(name);
    let flavours = s.flavour(
        "hold-device",
        &[
            ("README.md", "holds the lent device\n", false),
            ("real-block-device", "", false),
            ("block-device.d/50-hold", hook, true),
        ],
    );
    let out = s.join("img");
    let mut args = build_args(out.to_str().unwrap(), &["-t", "raw"]);
    args.push("hold-device");
    let cmd = build_cmd(&args, &tmp, &helper, &[&flavours]);
    // "Nothing left" means something only if the kill met an attached device.
    let dir = s.path.clone();
    let (status, seen, attached) = signal_when(
        cmd,
        marker,
        move || Some(bindings_under(&dir)).filter(|b| !b.is_empty()),
        nix::sys::signal::Signal::SIGKILL,
        false,
    );
    let attached = attached.unwrap_or_else(|| {
        panic!("no loop device of the build was attached when kiln was killed:\n{seen}")
    });
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{seen}"
    );
    assert_released(&attached);
    assert_no_loop_device(&s.path);
    assert_no_mount(&s.path);
}

#[test]
fn sigkill_while_the_helper_attaches_leaves_no_loop_device() {
    sigkill_at(
        "bdev-kill-attach",
        "#!/bin/sh\nsleep 600\n",
        "attaching the image to a loop device",
    );
}

#[test]
fn sigkill_while_a_hook_holds_a_partition_leaves_no_loop_device() {
    let hook = "#!/bin/bash\nexec 3<>\"${IMAGE_BLOCK_DEVICE}p3\"\necho KILN-HOLDING-PARTITION\nsleep 600\n";
    sigkill_at("bdev-kill-hold", hook, "KILN-HOLDING-PARTITION");
}

#[test]
fn sigkill_after_a_rescan_leaves_no_loop_device() {
    let hook = "#!/bin/bash\nset -e\necho ',,L' | sfdisk --quiet --append \"$IMAGE_BLOCK_DEVICE\" || true\nblockdev --rereadpt \"$IMAGE_BLOCK_DEVICE\"\necho KILN-RESCANNED\nsleep 600\n";
    sigkill_at("bdev-kill-rescan", hook, "KILN-RESCANNED");
}
