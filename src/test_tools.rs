//! Unit tests that cross-check kiln against a host tool (sfdisk, qemu-img,
//! mkfs.btrfs, grub-mkimage). Outside CI a missing tool skips the check with a
//! line saying so; under CI (`CI` set, as `.ci/run` runs) it fails the test:
//! `contrib/setup --tests` installs every one of them, so a missing tool there
//! is a broken setup, not a reason to pass.

/// Whether `tool` is on PATH; panics under CI when it is not.
pub fn have(tool: &str) -> bool {
    which::which(tool).is_ok() || missing(tool)
}

/// Whether the file a check needs exists; panics under CI when it does not.
pub fn have_file(path: &std::path::Path, package: &str) -> bool {
    path.exists() || missing(&format!("{} (package {package})", path.display()))
}

/// Reports `what` missing: false outside CI, a panic under it.
pub fn missing(what: &str) -> bool {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{what} is missing: `contrib/setup --tests` installs it, and under CI a check never skips");
    }
    eprintln!("{what} is missing: this check is skipped (under CI it fails)");
    false
}

/// `e2fsck -fn` finds nothing to fix in the filesystem `image` names (a file,
/// or `FILE?offset=N`).
pub fn assert_e2fsck_clean(image: impl AsRef<std::ffi::OsStr>) {
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}
