//! Bad input is reported at plan time — before anything is downloaded — naming the
//! flavour and the file. Each case runs the real command as the test user.

mod common;

use common::*;
use std::path::Path;

const README: (&str, &str, bool) = ("README.md", "test flavour\n", false);
const OS: (&str, &str, bool) = ("element-provides", "operating-system\n", false);

/// Runs a dry build of `flavours` with the scratch's flavours first on the path;
/// returns (success, stderr+stdout).
fn plan(s: &Scratch, flavours: &[&str], extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--dry-run", "-o"];
    let out = s.join("out");
    args.push(out.to_str().unwrap());
    args.extend(extra);
    args.extend(flavours);
    let o = kiln("disk-image-create", &args)
        .env("ELEMENTS_PATH", s.path.join("flavours"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!text.contains("panicked"), "kiln panicked:\n{text}");
    (o.status.success(), text)
}

fn fails_with(s: &Scratch, flavours: &[&str], needles: &[&str]) {
    let (ok, text) = plan(s, flavours, &[]);
    assert!(!ok, "expected a failure, got:\n{text}");
    for n in needles {
        assert!(text.contains(n), "error should mention {n:?}:\n{text}");
    }
}

#[test]
fn unknown_flavour_is_named() {
    let s = Scratch::new("bad-unknown");
    s.flavour(
        "myos",
        &[README, OS, ("element-deps", "no-such-flavour\n", false)],
    );
    fails_with(
        &s,
        &["-n", "myos"],
        &["no-such-flavour", "myos", "element-deps"],
    );
}

#[test]
fn dependency_cycle_names_the_chain() {
    let s = Scratch::new("bad-cycle");
    s.flavour("a", &[README, OS, ("element-deps", "b\n", false)]);
    s.flavour("b", &[README, ("element-deps", "a\n", false)]);
    fails_with(&s, &["-n", "a"], &["cycle", "element-deps"]);
}

#[test]
fn no_operating_system_flavour() {
    let s = Scratch::new("bad-noos");
    s.flavour("lonely", &[README]);
    fails_with(&s, &["-n", "lonely"], &["operating-system"]);
}

#[test]
fn two_operating_system_flavours() {
    let s = Scratch::new("bad-twoos");
    s.flavour("os1", &[README, OS]);
    s.flavour("os2", &[README, OS]);
    fails_with(
        &s,
        &["-n", "os1", "os2"],
        &["os1", "os2", "operating-system"],
    );
}

#[test]
fn duplicate_hook_names_both_files() {
    let s = Scratch::new("bad-dup");
    s.flavour(
        "one",
        &[README, OS, ("install.d/50-same", "#!/bin/sh\n", true)],
    );
    s.flavour("two", &[README, ("install.d/50-same", "#!/bin/sh\n", true)]);
    fails_with(
        &s,
        &["-n", "one", "two"],
        &["one/install.d/50-same", "two/install.d/50-same"],
    );
}

#[test]
fn non_executable_hook_is_skipped_with_a_warning_as_diskimage_builder_does() {
    let s = Scratch::new("warn-noexec");
    s.flavour(
        "myos",
        &[
            README,
            OS,
            ("cleanup.d/99-fix-grub", "GRUB_X=1\n", false),
            ("cleanup.d/50-real", "#!/bin/sh\n", true),
        ],
    );
    let (ok, text) = plan(&s, &["-n", "myos"], &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning")
            && text.contains("myos/cleanup.d/99-fix-grub is not executable and will not run"),
        "{text}"
    );
    assert!(text.contains("chmod +x"), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("99-fix-grub"))
        .unwrap_or_else(|| panic!("no plan line:\n{text}"));
    assert!(line.contains("(myos) skipped: not executable"), "{line}");
}

#[test]
fn missing_readme_names_the_directory() {
    let s = Scratch::new("bad-readme");
    s.flavour("bare", &[OS]);
    fails_with(&s, &["-n", "bare"], &["bare", "README"]);
}

#[test]
fn malformed_package_installs_names_file_and_line() {
    let s = Scratch::new("bad-yaml");
    s.flavour(
        "myos",
        &[
            README,
            OS,
            (
                "package-installs.yaml",
                "vim:\n  phase: install.d\n bad: [\n",
                false,
            ),
        ],
    );
    fails_with(
        &s,
        &["-n", "myos"],
        &["myos", "package-installs.yaml", "line"],
    );
}

#[test]
fn unknown_output_format_lists_the_valid_ones() {
    let s = Scratch::new("bad-format");
    s.flavour("myos", &[README, OS]);
    let (ok, text) = plan(&s, &["-n", "myos"], &["-t", "qcow2,floppy"]);
    assert!(!ok);
    assert!(
        text.contains("floppy") && text.contains("qcow2, raw"),
        "{text}"
    );
}

#[test]
fn dotted_executable_is_a_warning_not_an_error() {
    let s = Scratch::new("warn-dot");
    s.flavour(
        "myos",
        &[
            README,
            OS,
            ("install.d/50-setup.sh", "#!/bin/sh\n", true),
            ("install.d/60-real", "#!/bin/sh\n", true),
        ],
    );
    let (ok, text) = plan(&s, &["-n", "myos"], &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning") && text.contains("50-setup.sh"),
        "{text}"
    );
    assert!(
        text.contains("60-real"),
        "the plan lists the real hook:\n{text}"
    );
}

#[test]
fn dry_run_prints_phases_in_run_order_with_flavours() {
    let s = Scratch::new("dry-run");
    s.flavour(
        "myos",
        &[
            README,
            OS,
            ("install.d/10-b", "#!/bin/sh\n", true),
            ("install.d/9-a", "#!/bin/sh\n", true),
            ("root.d/10-root", "#!/bin/sh\n", true),
        ],
    );
    let (ok, text) = plan(&s, &["-n", "myos"], &[]);
    assert!(ok, "{text}");
    let a = text.find("9-a").unwrap();
    let b = text.find("10-b").unwrap();
    assert!(a < b, "numeric order: 9-a before 10-b:\n{text}");
    assert!(text.find("root.d:").unwrap() < text.find("install.d:").unwrap());
    assert!(text.contains("(myos)"));
}

#[test]
fn missing_output_directory_is_reported_before_the_build() {
    let s = Scratch::new("bad-outdir");
    s.flavour("myos", &[README, OS]);
    let o = kiln(
        "disk-image-create",
        &["-n", "-t", "tar", "-o", "/nonexistent-dir/x", "myos"],
    )
    .env("ELEMENTS_PATH", s.path.join("flavours"))
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        text.contains("/nonexistent-dir") && text.contains("does not exist"),
        "{text}"
    );
    assert!(!Path::new("/nonexistent-dir").exists());
}

#[test]
fn unknown_block_device_layout_is_refused_at_plan_time() {
    let s = Scratch::new("bad-layout");
    s.flavour("myos", &[README, OS]);
    let o = kiln(
        "disk-image-create",
        &["--dry-run", "-o", "/tmp/x", "-n", "myos", "vm"],
    )
    .env("ELEMENTS_PATH", s.path.join("flavours"))
    .env("DIB_BLOCK_DEVICE", "floppy")
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(text.contains("block-device-floppy"), "{text}");
}

#[test]
fn unknown_fs_type_is_refused_at_plan_time() {
    let s = Scratch::new("bad-fstype");
    s.flavour("myos", &[README, OS]);
    let o = kiln(
        "disk-image-create",
        &["--dry-run", "-o", "/tmp/x", "-n", "myos", "vm"],
    )
    .env("ELEMENTS_PATH", s.path.join("flavours"))
    .env("FS_TYPE", "reiserfs")
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(text.contains("reiserfs") && text.contains("ext4"), "{text}");
}

const MBR_CONFIG: &str = "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: mbr\n    partitions:\n      - name: root\n        flags: [ boot, primary ]\n        size: 100%\n        mkfs:\n          type: ext4\n          mount:\n            mount_point: /\n";

#[test]
fn dib_block_device_config_chooses_the_layout() {
    let s = Scratch::new("dib-config");
    s.flavour("myos", &[README, OS]);
    let o = kiln(
        "disk-image-create",
        &["--dry-run", "-o", "/tmp/x", "-n", "myos", "vm"],
    )
    .env("ELEMENTS_PATH", s.path.join("flavours"))
    .env("DIB_BLOCK_DEVICE_CONFIG", MBR_CONFIG)
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(text.contains("disk layout: mbr"), "{text}");
}

#[test]
fn dib_block_device_config_with_lvm_is_refused_with_what_works() {
    let s = Scratch::new("dib-config-lvm");
    s.flavour("myos", &[README, OS]);
    let lvm = format!("{MBR_CONFIG}- lvm:\n    name: lvm\n    base: [root]\n    pvs:\n      - name: pv\n        base: root\n");
    let o = kiln(
        "disk-image-create",
        &["--dry-run", "-o", "/tmp/x", "-n", "myos", "vm"],
    )
    .env("ELEMENTS_PATH", s.path.join("flavours"))
    .env("DIB_BLOCK_DEVICE_CONFIG", lvm)
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        text.contains("lvm")
            && text.contains("DIB_BLOCK_DEVICE_CONFIG")
            && text.contains("supported"),
        "{text}"
    );
}

#[test]
fn a_min_tmpfs_that_is_not_a_number_is_named() {
    let s = Scratch::new("bad-min-tmpfs");
    s.flavour("myos", &[README, OS]);
    let o = kiln(
        "disk-image-create",
        &["--dry-run", "-o", "/tmp/x", "-t", "tar", "myos"],
    )
    .env("ELEMENTS_PATH", s.path.join("flavours"))
    .env("DIB_MIN_TMPFS", "lots")
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        text.contains("DIB_MIN_TMPFS") && text.contains("lots") && text.contains("GiB"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

/// Without -o the outputs are named `image`, as diskimage-builder's default.
#[test]
fn output_name_defaults_to_image() {
    let s = Scratch::new("dib-o-default");
    s.flavour("myos", &[README, OS]);
    let o = kiln(
        "disk-image-create",
        &["--dry-run", "-n", "-t", "qcow2,tar", "myos"],
    )
    .env("ELEMENTS_PATH", s.path.join("flavours"))
    .output()
    .unwrap();
    let text = output_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("outputs: image.qcow2 image.tar\n"), "{text}");
}

/// DIB_CHECKSUM picks which checksum files are written; a value kiln does not
/// know is refused, naming the variable and the accepted values.
#[test]
fn dib_checksum_values_choose_the_files() {
    let s = Scratch::new("dib-checksum");
    s.flavour("myos", &[README, OS]);
    let run = |value: &str, extra: &[&str]| {
        let mut args = vec!["--dry-run", "-n", "-o", "x"];
        args.extend(extra);
        args.push("myos");
        let o = kiln("disk-image-create", &args)
            .env("ELEMENTS_PATH", s.path.join("flavours"))
            .env("DIB_CHECKSUM", value)
            .output()
            .unwrap();
        (o.status.success(), output_text(&o))
    };
    let (ok, text) = run("md5", &[]);
    assert!(
        ok && text.contains("outputs: x.qcow2.md5 x.qcow2\n"),
        "{text}"
    );
    let (ok, text) = run("sha256", &[]);
    assert!(
        ok && text.contains("outputs: x.qcow2.sha256 x.qcow2\n"),
        "{text}"
    );
    let (ok, text) = run("0", &[]);
    assert!(ok && text.contains("outputs: x.qcow2\n"), "{text}");
    let (ok, text) = run("0", &["--checksum"]);
    assert!(
        ok && text.contains("outputs: x.qcow2.sha256 x.qcow2.md5 x.qcow2\n"),
        "{text}"
    );
    let (ok, text) = run("crc32", &[]);
    assert!(
        !ok && text.contains("DIB_CHECKSUM")
            && text.contains("crc32")
            && text.contains("md5, sha256"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

/// A log file kiln cannot open, or a DIB_QUIET it does not know, stops the
/// build before anything runs, naming the path or the variable.
#[test]
fn bad_logfile_and_dib_quiet_are_named() {
    let s = Scratch::new("dib-logfile");
    s.flavour("myos", &[README, OS]);
    let missing = s.join("no-such-dir/build.log");
    let (ok, text) = plan(
        &s,
        &["-n", "myos"],
        &["--logfile", missing.to_str().unwrap()],
    );
    assert!(
        !ok && text.contains("--logfile") && text.contains(missing.to_str().unwrap()),
        "{text}"
    );
    let o = kiln("disk-image-create", &["--dry-run", "-n", "myos"])
        .env("ELEMENTS_PATH", s.path.join("flavours"))
        .env("DIB_QUIET", "yes")
        .output()
        .unwrap();
    let text = output_text(&o);
    assert!(
        !o.status.success() && text.contains("DIB_QUIET") && text.contains("yes"),
        "{text}"
    );
}

/// DIB_QUIET=1 without a log file: a failing build shows its error (with the
/// hint under it) and nothing else.
#[test]
fn quiet_shows_only_the_error() {
    let o = kiln("disk-image-create", &["--dry-run", "-n", "no-such-flavour"])
        .env("DIB_QUIET", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{text}");
    assert!(
        text.starts_with("disk-image-create: error: unknown flavour `no-such-flavour`"),
        "{text}"
    );
    assert!(text.contains("\n  hint:"), "{text}");
}

/// diskimage-builder's filesystem settings become kiln's: DIB_ROOT_FSTYPE the
/// root type, DIB_JOURNAL_SIZE `-J size=`, --max-online-resize `-E resize=`.
#[test]
fn dib_filesystem_settings_map_onto_mkfs() {
    let s = Scratch::new("dib-fs");
    s.flavour("myos", &[README, OS]);
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec!["--dry-run", "-n", "-o", "x"];
        args.extend(extra);
        args.push("myos");
        let mut cmd = kiln("disk-image-create", &args);
        cmd.env("ELEMENTS_PATH", s.path.join("flavours"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        let text = output_text(&o);
        assert!(!text.contains("panicked"), "{text}");
        (o.status.success(), text)
    };
    let (ok, text) = run(
        &[("DIB_JOURNAL_SIZE", "32")],
        &["--max-online-resize", "4000000"],
    );
    assert!(
        ok && text.contains("root filesystem: ext4 (mkfs options: -E resize=4000000 -J size=32)"),
        "{text}"
    );
    let (ok, text) = run(
        &[("DIB_ROOT_FSTYPE", "ext3"), ("DIB_JOURNAL_SIZE", "16")],
        &[],
    );
    assert!(
        ok && text.contains("root filesystem: ext3 (mkfs options: -J size=16)"),
        "{text}"
    );
    // Settings kiln cannot honour are refused, naming the setting and why.
    let (ok, text) = run(
        &[("DIB_ROOT_FSTYPE", "btrfs")],
        &["--max-online-resize", "4000000"],
    );
    assert!(
        !ok && text.contains("--max-online-resize") && text.contains("btrfs"),
        "{text}"
    );
    let (ok, text) = run(&[("FS_TYPE", "ext2"), ("DIB_JOURNAL_SIZE", "32")], &[]);
    assert!(
        !ok && text.contains("DIB_JOURNAL_SIZE") && text.contains("ext2"),
        "{text}"
    );
    let (ok, text) = run(&[("DIB_JOURNAL_SIZE", "big")], &[]);
    assert!(!ok && text.contains("DIB_JOURNAL_SIZE=\"big\""), "{text}");
    let (ok, text) = run(&[("FS_TYPE", "ext4"), ("DIB_ROOT_FSTYPE", "xfs")], &[]);
    assert!(!ok && text.contains("DIB_ROOT_FSTYPE"), "{text}");
    let (ok, text) = run(&[("DIB_BOOT_LABEL", "boot")], &[]);
    assert!(
        !ok && text.contains("DIB_BOOT_LABEL") && text.contains("ESP"),
        "{text}"
    );
    let (ok, _) = run(&[("DIB_BOOT_LABEL", "ESP")], &[]);
    assert!(ok);
    let (ok, text) = run(&[("DIB_IMAGE_EXTRA_SIZE", "1")], &["--image-size", "3"]);
    assert!(
        !ok && text.contains("DIB_IMAGE_EXTRA_SIZE") && text.contains("--image-size"),
        "{text}"
    );
    let (ok, text) = run(&[("DIB_IMAGE_EXTRA_SIZE", "lots")], &[]);
    assert!(!ok && text.contains("DIB_IMAGE_EXTRA_SIZE"), "{text}");
    let (ok, text) = run(&[("DIB_NO_TIMESTAMP", "yes")], &[]);
    assert!(!ok && text.contains("DIB_NO_TIMESTAMP"), "{text}");
}

#[test]
fn bad_source_date_epoch_and_seed_say_what_is_expected() {
    let s = Scratch::new("bad-epoch");
    s.flavour("myos", &[README, OS]);
    let o = kiln("disk-image-create", &["--dry-run", "-o", "x", "-n", "myos"])
        .env("ELEMENTS_PATH", s.path.join("flavours"))
        .env("SOURCE_DATE_EPOCH", "17e8")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        text.contains("SOURCE_DATE_EPOCH=\"17e8\"") && text.contains("whole seconds since 1970"),
        "{text}"
    );
    let (ok, text) = plan(&s, &["-n", "myos"], &["--seed", "two words"]);
    assert!(!ok);
    assert!(
        text.contains("--seed/DIB_IMAGE_SEED") && text.contains("printable characters"),
        "{text}"
    );
    let (ok, text) = plan(&s, &["-n", "myos"], &["--seed", "abc"]);
    assert!(ok, "{text}");
    assert!(text.contains("identities from seed abc (given)"), "{text}");
}
