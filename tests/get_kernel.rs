//! disk-image-get-kernel, run for real as an ordinary user: on small images made
//! the way kiln makes its own (mke2fs -d, sfdisk, qemu-img convert -c), and on a
//! kiln-built `debian vm` image checked against debugfs.

mod common;

use common::*;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const KERNEL: &str = "vmlinuz-6.1.0-1-amd64";
const INITRD: &str = "initrd.img-6.1.0-1-amd64";

fn sh(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Text with noise between, so `qemu-img convert -c` stores some clusters
/// compressed and some not.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        if (v.len() / 40_000) % 2 == 0 {
            v.extend_from_slice(format!("seed {seed} line {}\n", v.len()).as_bytes());
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v.truncate(len);
    v
}

/// A Debian-like root (two kernels, /vmlinuz symlink) in an ext4 in a GPT, as
/// `NAME.raw` and compressed `NAME.qcow2`; returns the tree.
fn synthetic(s: &Scratch, name: &str, with_kernel: bool) -> PathBuf {
    let tree = s.join(&format!("{name}-tree"));
    let boot = tree.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    if with_kernel {
        std::fs::write(boot.join(KERNEL), content(1, 700_000)).unwrap();
        std::fs::write(boot.join(INITRD), content(2, 1_300_000)).unwrap();
        std::fs::write(boot.join("vmlinuz-5.10.0-9-amd64"), content(3, 10_000)).unwrap();
        std::fs::write(boot.join("initrd.img-5.10.0-9-amd64"), content(4, 10_000)).unwrap();
        symlink(format!("boot/{KERNEL}"), tree.join("vmlinuz")).unwrap();
    }
    let fs = s.join(&format!("{name}.fs"));
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&fs)
        .arg("8M"));
    let raw = s.join(&format!("{name}.raw"));
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(12 << 20)
        .unwrap();
    let mut sf = Command::new("sfdisk");
    sf.args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = sf.spawn().unwrap();
    let script = "label: gpt\nsize=1MiB, type=U, name=ESP\nsize=8MiB, type=L, name=root\n";
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk");
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.write_all_at(&std::fs::read(&fs).unwrap(), 2 << 20)
        .unwrap();
    sh(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(s.join(&format!("{name}.qcow2"))));
    chmod_a_r(&s.path);
    tree
}

fn chmod_a_r(p: &Path) {
    sh(Command::new("chmod").args(["-R", "a+rX"]).arg(p));
}

/// An output directory the test user owns.
fn out_dir(s: &Scratch, name: &str) -> PathBuf {
    let d = s.join(name);
    std::fs::create_dir_all(&d).unwrap();
    chown_to_user(&d);
    d
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn get_kernel(args: &[&str]) -> Output {
    kiln("disk-image-get-kernel", args).output().unwrap()
}

#[test]
fn extracts_kernel_and_initrd_from_a_compressed_qcow2() {
    let s = Scratch::new("gk-qcow2");
    let tree = synthetic(&s, "img", true);
    let out = out_dir(&s, "out");
    let img = s.join("img.qcow2");
    let o = run_ok(&mut kiln(
        "disk-image-get-kernel",
        &["-i", img.to_str().unwrap(), "-d", out.to_str().unwrap()],
    ));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("/boot/{KERNEL}")) && stdout.contains(&format!("/boot/{INITRD}")),
        "{stdout}"
    );
    assert_eq!(listing(&out), ["baremetal-initrd", "baremetal-vmlinuz"]);
    assert!(
        std::fs::read(out.join("baremetal-vmlinuz")).unwrap()
            == std::fs::read(tree.join("boot").join(KERNEL)).unwrap()
    );
    assert!(
        std::fs::read(out.join("baremetal-initrd")).unwrap()
            == std::fs::read(tree.join("boot").join(INITRD)).unwrap()
    );

    // Raw, a prefix, and the current directory as the default -d.
    let here = out_dir(&s, "here");
    run_ok(
        kiln(
            "disk-image-get-kernel",
            &["-i", s.join("img.raw").to_str().unwrap(), "-o", "node1"],
        )
        .current_dir(&here),
    );
    assert_eq!(listing(&here), ["node1-initrd", "node1-vmlinuz"]);
    assert!(
        std::fs::read(here.join("node1-vmlinuz")).unwrap()
            == std::fs::read(tree.join("boot").join(KERNEL)).unwrap()
    );
}

#[test]
fn patterns_from_the_environment_choose() {
    let s = Scratch::new("gk-pattern");
    synthetic(&s, "img", true);
    let out = out_dir(&s, "out");
    let img = s.join("img.qcow2");
    let o = run_ok(
        kiln(
            "disk-image-get-kernel",
            &["-i", img.to_str().unwrap(), "-d", out.to_str().unwrap()],
        )
        .env("DIB_BAREMETAL_KERNEL_PATTERN", "vmlinuz-5.10*")
        .env("DIB_BAREMETAL_INITRD_PATTERN", "initrd.img-5.*"),
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("initrd.img-5.10.0-9-amd64"));
    assert!(std::fs::read(out.join("baremetal-vmlinuz")).unwrap() == content(3, 10_000));
}

#[test]
fn help_explains_the_options() {
    let o = run_ok(&mut kiln("disk-image-get-kernel", &["-h"]));
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "-i <IMAGE>",
        "-d <DIR>",
        "-o <PREFIX>",
        "baremetal",
        "DIB_BAREMETAL_KERNEL_PATTERN",
        "qcow2",
    ] {
        assert!(text.contains(needle), "-h should mention {needle}:\n{text}");
    }
}

#[test]
fn errors_are_plain_and_leave_no_files() {
    let s = Scratch::new("gk-errors");
    synthetic(&s, "img", true);
    synthetic(&s, "bare", false);
    let bytes = std::fs::read(s.join("img.qcow2")).unwrap();
    std::fs::write(s.join("cut.qcow2"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(s.join("notes.txt"), "not a disk image\n".repeat(200)).unwrap();
    chmod_a_r(&s.path);
    let out = out_dir(&s, "out");
    let locked = out_dir(&s, "locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let p = |n: &str| s.join(n).to_str().unwrap().to_string();
    let o = out.to_str().unwrap().to_string();
    for (image, dir, needle) in [
        (p("missing.qcow2"), o.clone(), "does not exist"),
        (p("notes.txt"), o.clone(), "not a disk image"),
        (p("cut.qcow2"), o.clone(), "truncated"),
        (p("bare.qcow2"), o.clone(), "no kernel found"),
        (p("img.qcow2"), p("locked"), "not writable"),
        (p("img.qcow2"), p("nowhere"), "does not exist"),
    ] {
        let r = get_kernel(&["-i", &image, "-d", &dir]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(
            r.status.code(),
            Some(1),
            "{image} → {dir}: {}",
            output_text(&r)
        );
        assert!(
            err.starts_with("disk-image-get-kernel: error: ") && err.contains(needle),
            "{image}: want {needle:?}:\n{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("os error"),
            "{err}"
        );
        assert!(
            listing(&out).is_empty() && listing(&locked).is_empty(),
            "files left: {:?}",
            listing(&out)
        );
    }
}

fn sfdisk_partitions(raw: &Path) -> Vec<serde_json::Value> {
    let o = Command::new("sfdisk").arg("-J").arg(raw).output().unwrap();
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    t["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

fn debugfs_dump(raw: &Path, offset: u64, path: &str, to: &Path) -> Vec<u8> {
    let spec = format!("{}?offset={offset}", raw.display());
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {path} {}", to.display()))
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(to).unwrap_or_else(|e| panic!("debugfs dumped nothing for {path}: {e}"))
}

/// A real `debian vm` image, 2 GiB: what we extract must be what debugfs reads
/// from the raw image, and it must be quick.
#[test]
fn matches_debugfs_on_a_kiln_built_vm_image() {
    let s = Scratch::new("gk-vm");
    let (qcow2, raw) = match std::env::var_os("KILN_TEST_VM_IMAGE") {
        Some(q) => {
            let raw = s.join("vm.raw");
            sh(Command::new("qemu-img")
                .args(["convert", "-q", "-O", "raw"])
                .arg(&q)
                .arg(&raw));
            (PathBuf::from(q), raw)
        }
        None => {
            let tmp = out_dir(&s, "tmp");
            let out = s.join("vm");
            let mut args = vec![
                "-t",
                "qcow2,raw",
                "--image-size",
                "2G",
                "-o",
                out.to_str().unwrap(),
            ];
            args.extend(IMAGE_FLAVOURS);
            run_ok(kiln("disk-image-create", &args).env("TMPDIR", &tmp));
            (s.join("vm.qcow2"), s.join("vm.raw"))
        }
    };
    let parts = sfdisk_partitions(&raw);
    let root = parts
        .iter()
        .find(|p| p["name"] == "root")
        .or(parts.last())
        .unwrap();
    let offset = root["start"].as_u64().unwrap() * 512;

    for image in [&qcow2, &raw] {
        let out = out_dir(
            &s,
            &format!("out-{}", image.extension().unwrap().to_string_lossy()),
        );
        let started = Instant::now();
        let o = run_ok(&mut kiln(
            "disk-image-get-kernel",
            &["-i", image.to_str().unwrap(), "-d", out.to_str().unwrap()],
        ));
        let took = started.elapsed();
        let size = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(image)
            .output()
            .unwrap();
        let size: serde_json::Value = serde_json::from_slice(&size.stdout).unwrap();
        eprintln!(
            "disk-image-get-kernel on {} ({} bytes virtual): {:.3} s",
            image.display(),
            size["virtual-size"],
            took.as_secs_f64()
        );
        assert!(took.as_secs() < 10, "took {took:?}");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let chosen: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.rsplit_once(", ").map(|(_, p)| p.trim_end_matches(')')))
            .collect();
        assert_eq!(chosen.len(), 2, "{stdout}");
        assert!(
            chosen[0].starts_with("/boot/vmlinuz-") && chosen[1].starts_with("/boot/initrd.img-"),
            "{stdout}"
        );
        let k = debugfs_dump(&raw, offset, chosen[0], &s.join("dbg-vmlinuz"));
        let i = debugfs_dump(&raw, offset, chosen[1], &s.join("dbg-initrd"));
        assert!(
            std::fs::read(out.join("baremetal-vmlinuz")).unwrap() == k,
            "{}: kernel differs from debugfs",
            image.display()
        );
        assert!(
            std::fs::read(out.join("baremetal-initrd")).unwrap() == i,
            "{}: initrd differs from debugfs",
            image.display()
        );
    }
}

/// What is neither a file nor a block device is refused at once and named: a
/// FIFO's open would otherwise wait for a writer that never comes, deaf to Ctrl-C.
#[test]
fn refuses_a_fifo_a_character_device_a_directory_and_a_socket_at_once() {
    let s = Scratch::new("gk-kinds");
    let fifo = s.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    chown_to_user(&fifo);
    let dir = out_dir(&s, "a-directory");
    let sock = s.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    chown_to_user(&sock);
    let out = out_dir(&s, "out");
    let cases = [
        (fifo, "is a FIFO"),
        (PathBuf::from("/dev/zero"), "is a character device"),
        (dir, "is a directory"),
        (sock, "is a socket"),
    ];
    for (input, what) in cases {
        let started = Instant::now();
        let mut child = kiln(
            "disk-image-get-kernel",
            &["-i", input.to_str().unwrap(), "-d", out.to_str().unwrap()],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        // A hang must fail the test, not hold it.
        while child.try_wait().unwrap().is_none() && started.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let took = started.elapsed();
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
        let r = child.wait_with_output().unwrap();
        eprintln!(
            "{}: refused in {:.3} s",
            input.display(),
            took.as_secs_f64()
        );
        assert!(
            took.as_secs_f64() < 1.0,
            "{}: took {took:?}; {}",
            input.display(),
            output_text(&r)
        );
        assert_eq!(
            r.status.code(),
            Some(1),
            "{}: {}",
            input.display(),
            output_text(&r)
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains(&format!("{} {what}, not a disk image", input.display())),
            "want {what:?}:\n{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("os error"),
            "{err}"
        );
        assert!(listing(&out).is_empty(), "files left: {:?}", listing(&out));
    }
}

/// Output files are created inside -d and never through a symbolic link planted
/// there: a link at the output name is replaced, the file it points to untouched.
#[test]
fn a_planted_link_at_the_output_name_is_replaced_not_followed() {
    let s = Scratch::new("gk-planted");
    let tree = synthetic(&s, "img", true);
    let out = out_dir(&s, "out");
    let victim = s.join("victim");
    std::fs::write(&victim, "not to be overwritten").unwrap();
    chown_to_user(&victim);
    symlink(&victim, out.join("baremetal-vmlinuz")).unwrap();
    run_ok(&mut kiln(
        "disk-image-get-kernel",
        &[
            "-i",
            s.join("img.raw").to_str().unwrap(),
            "-d",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "not to be overwritten"
    );
    assert!(std::fs::symlink_metadata(out.join("baremetal-vmlinuz"))
        .unwrap()
        .is_file());
    assert!(
        std::fs::read(out.join("baremetal-vmlinuz")).unwrap()
            == std::fs::read(tree.join("boot").join(KERNEL)).unwrap()
    );
    assert_eq!(listing(&out), ["baremetal-initrd", "baremetal-vmlinuz"]);
}
