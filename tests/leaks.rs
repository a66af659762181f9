//! Nothing leaks: after a failing hook and after SIGINT during install.d, no
//! mount, process, build directory or output file of kiln's is left.

mod common;

use common::*;

/// Sends the process group SIGINT (as Ctrl-C does) when a stderr line contains
/// `marker`; returns the exit code and stderr.
fn interrupt_at(
    args: &[&str],
    tmp: &std::path::Path,
    marker: &'static str,
) -> (Option<i32>, String) {
    let mut cmd = kiln("disk-image-create", args);
    cmd.env("ELEMENTS_PATH", test_flavours_path(&[]))
        .env("TMPDIR", tmp);
    let (status, seen) = signal_at(cmd, marker, nix::sys::signal::Signal::SIGINT, true);
    (status.code(), seen)
}

#[test]
fn failing_hook_names_flavour_and_file_and_leaves_nothing() {
    let (s, tmp) = scratch_with_tmp("leak-fail");
    let out = s.join("img");
    let mut args = vec!["-t", "tar,qcow2", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.push("fail-install");
    let o = kiln("disk-image-create", &args)
        .env("ELEMENTS_PATH", test_flavours_path(&[]))
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        err.contains("flavour fail-install, hook install.d/60-fail: exit 3"),
        "{err}"
    );
    assert!(
        err.contains("about to fail on purpose"),
        "the hook's last output is shown:\n{err}"
    );
    assert_no_leftovers(&tmp, &s.path, &[]);
}

#[test]
fn sigint_during_install_leaves_no_mounts_processes_or_files() {
    let (s, tmp) = scratch_with_tmp("leak-sigint");
    let out = s.join("img");
    let mut args = vec!["-t", "tar", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.push("slow-install");
    let (code, seen) = interrupt_at(&args, &tmp, "slow hook started");
    assert_eq!(code, Some(130), "{seen}");
    assert!(seen.contains("interrupted"), "{seen}");
    // No `sleep 1000` of the hook's survives.
    let survivors: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| {
            std::fs::read(p.path().join("cmdline"))
                .map(|c| c == b"sleep\x001000\x00")
                .unwrap_or(false)
        })
        .collect();
    assert!(
        survivors.is_empty(),
        "hook processes outlived the build: {survivors:?}"
    );
    assert_no_leftovers(&tmp, &s.path, &[]);
}

#[test]
fn failing_finalise_hook_leaves_no_image_and_nothing_else() {
    let (s, tmp) = scratch_with_tmp("leak-finalise");
    let out = s.join("img");
    let mut args = vec!["-t", "qcow2,raw", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.push("fail-finalise");
    let o = kiln("disk-image-create", &args)
        .env("ELEMENTS_PATH", test_flavours_path(&[]))
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        err.contains("flavour fail-finalise, hook finalise.d/90-fail: exit 4"),
        "{err}"
    );
    assert_no_leftovers(&tmp, &s.path, &[]);
}

#[test]
fn sigint_during_assembly_leaves_no_partial_image() {
    let (s, tmp) = scratch_with_tmp("leak-assemble");
    let out = s.join("img");
    // An existing output must survive an interrupted rebuild untouched.
    std::fs::write(s.join("img.qcow2"), b"previous image").unwrap();
    let mut args = vec!["-t", "qcow2", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    let (code, seen) = interrupt_at(&args, &tmp, "assemble  filesystems");
    assert_eq!(code, Some(130), "{seen}");
    assert_eq!(
        std::fs::read(s.join("img.qcow2")).unwrap(),
        b"previous image"
    );
    assert_no_leftovers_after_failure(&tmp, &s.path, &["img.qcow2"]);
}

#[test]
fn image_size_too_small_for_the_content_is_a_clear_error() {
    let (s, tmp) = scratch_with_tmp("small-size");
    let out = s.join("img");
    let mut args = vec!["--image-size", "300M", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    let o = kiln("disk-image-create", &args)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("too small") && err.contains("--image-size"),
        "{err}"
    );
    assert_no_leftovers(&tmp, &s.path, &[]);
}

#[test]
fn a_build_on_disk_when_memory_is_short_leaves_nothing_either() {
    let (s, tmp) = scratch_with_tmp("leak-on-disk");
    let out = s.join("img");
    // More than any machine has free: the tree goes to $TMPDIR instead of a tmpfs.
    let mut args = vec![
        "--min-tmpfs",
        "100000",
        "-t",
        "tar",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(IMAGE_FLAVOURS);
    let o = run_ok(kiln("disk-image-create", &args).env("TMPDIR", &tmp));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains("tree on disk") && log.contains("--min-tmpfs"),
        "{log}"
    );
    assert_no_leftovers(&tmp, &s.path, &["img.tar"]);
}
