//! disk-image-boot, as a user runs it (the test user, no root): a kiln image
//! boots to its login prompt, a broken one fails within its timeout, bad input
//! is refused by name; the image is never written and no QEMU is left behind.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Built {
    scratch: Scratch,
    qcow2: PathBuf,
}

fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let (scratch, tmp) = scratch_with_tmp("boot-command");
        let out = scratch.join("vm");
        let mut args = vec!["-o", out.to_str().unwrap()];
        args.extend(IMAGE_FLAVOURS);
        run_ok(kiln("disk-image-create", &args).env("TMPDIR", &tmp));
        let qcow2 = scratch.join("vm.qcow2");
        Built { scratch, qcow2 }
    })
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// QEMU processes whose command line mentions `needle` (a test's scratch path).
fn qemus_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_str().unwrap();
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system") && cmdline.contains(needle) {
            found.push(format!("{}: {cmdline}", e.file_name().to_string_lossy()));
        }
    }
    found
}

fn boot(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let o = kiln("disk-image-boot", args).output().unwrap();
    (o, t.elapsed())
}

#[test]
fn a_kiln_image_boots_to_login_and_is_left_unchanged() {
    let b = built();
    let before = sha256(&b.qcow2);
    let log = b.scratch.join("console.log");
    let (o, took) = boot(&[
        b.qcow2.to_str().unwrap(),
        "--expect",
        "login:",
        "--timeout",
        "420",
        "--console-log",
        log.to_str().unwrap(),
    ]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    eprintln!("login: after {:.1}s", took.as_secs_f64());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("/login:/ matched after"), "{text}");
    assert!(stderr.contains("qcow2, BIOS"), "{text}");
    // The console went to stdout and to the log.
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("login:"),
        "{text}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("login:"), "{logged}");
    assert_eq!(sha256(&b.qcow2), before, "the image was written");
    assert_eq!(qemus_mentioning(&b.scratch.path), Vec::<String>::new());
}

#[test]
fn a_zero_filled_image_fails_within_its_timeout() {
    let (s, tmp) = scratch_with_tmp("boot-broken");
    let image = s.join("zero.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    chown_to_user(&image);
    let before = sha256(&image);
    let (o, took) = {
        let t = Instant::now();
        let o = kiln(
            "disk-image-boot",
            &[
                image.to_str().unwrap(),
                "--expect",
                "login:",
                "--timeout",
                "15",
            ],
        )
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
        (o, t.elapsed())
    };
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(124), "{text}");
    assert!(took < Duration::from_secs(15 + 10), "took {took:?}\n{text}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("did not match within 15s"), "{text}");
    // The default log sits beside the image, and the failure says so.
    let log = s.join("zero.console.log");
    assert!(log.is_file(), "{text}");
    assert!(
        stderr.contains(&format!("console log: {}", log.display())),
        "{text}"
    );
    assert_eq!(sha256(&image), before);
    assert_eq!(qemus_mentioning(&s.path), Vec::<String>::new());
    // Nothing of its own left in TMPDIR (the UEFI variables' directory).
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn a_signal_stops_qemu_and_removes_the_temporary_files() {
    let (s, tmp) = scratch_with_tmp("boot-signal");
    let image = s.join("zero.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    chown_to_user(&image);
    let mut cmd = kiln(
        "disk-image-boot",
        &[image.to_str().unwrap(), "--uefi", "--accel", "tcg"],
    );
    cmd.env("TMPDIR", &tmp);
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion must not leave it running: it has no timeout.
    struct Stop(i32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _stop = Stop(child.id() as i32);
    // Wait for QEMU to be up, then stop disk-image-boot as a service manager would.
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemus_mentioning(&s.path).is_empty() {
        assert!(Instant::now() < deadline, "QEMU never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let work: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(work.len(), 1, "{work:?}");
    assert!(
        work[0].join("overlay.qcow2").is_file() && work[0].join("OVMF_VARS.fd").is_file(),
        "{work:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(128 + 15), "{text}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stopped by signal 15"),
        "{text}"
    );
    assert_eq!(qemus_mentioning(&s.path), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn bad_input_is_refused_by_name() {
    let (s, _tmp) = scratch_with_tmp("boot-bad");
    let missing = s.join("missing.qcow2");
    let (o, _) = boot(&[missing.to_str().unwrap()]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("image {}: cannot read it", missing.display())),
        "{text}"
    );

    // A format QEMU knows but disk-image-boot does not boot.
    let qed = s.join("disk.qed");
    let c = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qed"])
        .arg(&qed)
        .arg("16M")
        .status()
        .unwrap();
    assert!(c.success());
    chown_to_user(&qed);
    let (o, _) = boot(&[qed.to_str().unwrap()]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("unknown image format \"qed\""), "{text}");

    let raw = s.join("disk.raw");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    chown_to_user(&raw);
    let (o, _) = {
        let o = kiln("disk-image-boot", &[raw.to_str().unwrap(), "--uefi"])
            .env("KILN_OVMF_CODE", s.join("no-ovmf.fd"))
            .output()
            .unwrap();
        (o, ())
    };
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("KILN_OVMF_CODE=") && text.contains("no-ovmf.fd: no such file"),
        "{text}"
    );

    let o = kiln("disk-image-boot", &[raw.to_str().unwrap()])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("qemu-system-x86_64 not found") && text.contains("qemu-system-x86"),
        "{text}"
    );

    let o = kiln("disk-image-boot", &[raw.to_str().unwrap(), "--expect", "("])
        .output()
        .unwrap();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("not a valid regular expression"), "{text}");
}
