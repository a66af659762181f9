//! Outputs in a shared directory (docs/architecture.md §10.7): another user who plants links
//! at every name kiln could be predicted to write never gets the image written
//! through them; the outputs appear complete, as regular files of the caller's.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const KILNTEST_CANARY: &[u8] = b"canary of kilntest\n";
const ROOT_CANARY: &[u8] = b"canary of root, writable by all\n";

/// The files links point at: one of the caller's (the realistic victim, say
/// ~/.bashrc) and one anyone may write.
struct Canaries {
    mine: PathBuf,
    anyones: PathBuf,
}

impl Canaries {
    fn new(s: &Scratch) -> Canaries {
        let u = user();
        let mine = s.join("canary");
        std::fs::write(&mine, KILNTEST_CANARY).unwrap();
        std::os::unix::fs::chown(&mine, Some(u.uid), Some(u.gid)).unwrap();
        let anyones = s.join("canary-root");
        std::fs::write(&anyones, ROOT_CANARY).unwrap();
        std::fs::set_permissions(&anyones, std::fs::Permissions::from_mode(0o666)).unwrap();
        Canaries { mine, anyones }
    }

    fn assert_unchanged(&self) {
        for (path, want) in [(&self.mine, KILNTEST_CANARY), (&self.anyones, ROOT_CANARY)] {
            let got = std::fs::read(path).unwrap();
            let start = String::from_utf8_lossy(&got[..got.len().min(200)]);
            assert!(
                got == want,
                "{} was written through a link; it begins {start:?}",
                path.display()
            );
        }
    }
}

fn user() -> User {
    env()
        .user
        .clone()
        .expect("tests/outputs.rs plants files as a second user: run the tests as root")
}

/// A directory like /tmp (`mode` 1777) or a group's shared one (0777), owned by
/// root, so root's links in it are followed even where fs.protected_symlinks
/// is on.
fn shared_dir(s: &Scratch, name: &str, mode: u32) -> PathBuf {
    let d = s.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

/// A link at `dir/name` to `target`, owned by `owner` (root when None).
fn plant(dir: &Path, name: &str, target: &Path, owner: Option<&User>) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(target, &link).unwrap();
    if let Some(u) = owner {
        std::os::unix::fs::lchown(&link, Some(u.uid), Some(u.gid)).unwrap();
    }
    link
}

/// Every temporary name kiln used (`.NAME.FMT.kiln-PID`, its checksums and
/// their `.tmp`) for the pids the build is likely to get, and names other tools
/// use for partial files.
fn predictable_names(name: &str, fmt: &str) -> Vec<String> {
    let read = |f: &str| {
        std::fs::read_to_string(f)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let (last, max) = (
        read("/proc/sys/kernel/ns_last_pid"),
        read("/proc/sys/kernel/pid_max"),
    );
    let mut names = Vec::new();
    for k in 1..=3000 {
        // Past pid_max the kernel starts again above the reserved pids.
        let pid = if last + k < max {
            last + k
        } else {
            300 + (last + k - max)
        };
        let t = format!(".{name}.{fmt}.kiln-{pid}");
        names.extend([
            format!("{t}.sha256.tmp"),
            format!("{t}.md5.tmp"),
            format!("{t}.sha256"),
            format!("{t}.md5"),
            t,
        ]);
    }
    for n in [
        ".{n}.{f}.tmp",
        "{n}.{f}.part",
        "{n}.{f}.tmp",
        ".{n}.{f}",
        "{n}.{f}.sha256.tmp",
        "{n}.{f}.md5.tmp",
        ".{n}.{f}.sha256.tmp",
        "{n}.tmp",
        ".{n}.kiln-XXXXXX",
        ".{n}.kiln-000000",
        ".{n}.kiln-aaaaaa",
    ] {
        names.push(n.replace("{n}", name).replace("{f}", fmt));
    }
    names
}

fn tar_build(out: &Path, tmp: &Path, extra: &[&str]) -> Command {
    let mut args = vec!["-t", "tar", "--checksum", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.extend(extra);
    let mut cmd = kiln("disk-image-create", &args);
    cmd.env("ELEMENTS_PATH", test_flavours_path(&[]))
        .env("TMPDIR", tmp);
    cmd
}

/// NAME.tar and its checksums are regular files of the caller's, the tar holds
/// the image, and both checksum files name NAME.tar and match it.
fn assert_outputs(dir: &Path, name: &str) {
    let u = user();
    for f in [
        format!("{name}.tar"),
        format!("{name}.tar.sha256"),
        format!("{name}.tar.md5"),
    ] {
        let m = std::fs::symlink_metadata(dir.join(&f)).unwrap();
        assert!(
            m.file_type().is_file(),
            "{f} is not a regular file: {:?}",
            m.file_type()
        );
        assert_eq!((m.uid(), m.nlink()), (u.uid, 1), "{f}");
    }
    let list = Command::new("tar")
        .arg("-tf")
        .arg(dir.join(format!("{name}.tar")))
        .output()
        .unwrap();
    assert!(list.status.success());
    assert!(
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .any(|l| l == "./etc/os-release"),
        "the tar holds no image"
    );
    for (sum, tool) in [("sha256", "sha256sum"), ("md5", "md5sum")] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.tar.{sum}"))).unwrap();
        assert!(text.ends_with(&format!("  {name}.tar\n")), "{sum}: {text}");
        let check = Command::new(tool)
            .arg("-c")
            .arg("--strict")
            .arg(format!("{name}.tar.{sum}"))
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(check.status.success(), "{tool} -c: {}", output_text(&check));
    }
}

/// The `.NAME.kiln-*` entries in `dir`.
fn private_dirs(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.kiln-");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

#[test]
fn links_planted_at_every_predictable_name_in_a_sticky_directory_are_never_written_through() {
    let u = user();
    let (s, tmp) = scratch_with_tmp("outputs-sticky");
    let canaries = Canaries::new(&s);
    let shared = shared_dir(&s, "shared", 0o1777);

    // Another user's links at every temporary name.
    let mut planted = Vec::new();
    for (i, n) in predictable_names("img", "tar").iter().enumerate() {
        let target = if i % 2 == 0 {
            &canaries.mine
        } else {
            &canaries.anyones
        };
        planted.push((plant(&shared, n, target, None), target.clone()));
    }
    // Another user's entries named like kiln's private directory: left alone.
    let foreign = shared.join(".img.kiln-r00t01");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("owner"), "1 1\n").unwrap();
    // The caller's own links at the final names (a stale link of theirs, say):
    // replaced, never followed.
    for n in ["img.tar", "img.tar.sha256", "img.tar.md5"] {
        plant(&shared, n, &canaries.mine, Some(&u));
    }
    // A private directory a killed build of the caller's left: swept.
    let stale = shared.join(".img.kiln-stale1");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("img.tar"), b"half an image").unwrap();
    std::fs::write(stale.join("owner"), format!("{} 1\n", dead_pid())).unwrap();
    Command::new("chown")
        .args(["-R", &format!("{}:{}", u.uid, u.gid)])
        .arg(&stale)
        .status()
        .unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o700)).unwrap();

    let o = tar_build(&shared.join("img"), &tmp, &[]).output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    canaries.assert_unchanged();
    assert!(o.status.success(), "{}", output_text(&o));
    assert_outputs(&shared, "img");
    for (link, target) in &planted {
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            *target,
            "{} was replaced",
            link.display()
        );
    }
    assert!(
        log.contains(&format!("removed {}", stale.display())),
        "{log}"
    );
    let mut left = vec![
        ".img.kiln-000000",
        ".img.kiln-XXXXXX",
        ".img.kiln-aaaaaa",
        ".img.kiln-r00t01",
    ];
    left.sort();
    assert_eq!(
        private_dirs(&shared, "img"),
        left,
        "kiln's private directory is left, or another's was removed"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "build directory left in {}",
        tmp.display()
    );
}

#[test]
fn another_users_file_at_a_final_name_in_a_sticky_directory_stops_the_build_before_it_starts() {
    let (s, tmp) = scratch_with_tmp("outputs-foreign-final");
    let canaries = Canaries::new(&s);
    let shared = shared_dir(&s, "shared", 0o1777);
    let link = plant(&shared, "img.tar.md5", &canaries.mine, None);
    let o = tar_build(&shared.join("img"), &tmp, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        err.contains(&link.display().to_string())
            && err.contains("sticky")
            && err.contains("-o NAME"),
        "{err}"
    );
    assert!(!err.contains("root.d"), "the build started:\n{err}");
    canaries.assert_unchanged();
    assert_eq!(std::fs::read_link(&link).unwrap(), canaries.mine);
    let names: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("img.tar.md5")]);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn a_build_killed_outright_leaves_its_private_directory_to_the_next_which_replaces_links_at_the_final_names(
) {
    let u = user();
    let (s, tmp) = scratch_with_tmp("outputs-killed");
    let canaries = Canaries::new(&s);
    // Group-shared, no sticky bit: anyone may replace anyone's entries, kiln too.
    let shared = shared_dir(&s, "shared", 0o777);
    let out = shared.join("img");

    let cmd = tar_build(&out, &tmp, &["slow-install"]);
    let (status, seen) = signal_at(
        cmd,
        "slow hook started",
        nix::sys::signal::Signal::SIGKILL,
        true,
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{seen}"
    );
    // Nothing of kiln's ran after SIGKILL: its private directory is all it left here.
    let left = private_dirs(&shared, "img");
    assert_eq!(left.len(), 1, "{left:?}");
    let killed = shared.join(&left[0]);
    let m = std::fs::symlink_metadata(&killed).unwrap();
    assert!(
        m.is_dir() && m.uid() == u.uid && m.mode() & 0o7777 == 0o700,
        "{m:?}"
    );
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 1);

    for n in ["img.tar", "img.tar.sha256", "img.tar.md5"] {
        plant(&shared, n, &canaries.mine, None);
    }
    let tmp2 = s.join("tmp2");
    std::fs::create_dir(&tmp2).unwrap();
    std::os::unix::fs::chown(&tmp2, Some(u.uid), Some(u.gid)).unwrap();
    let o = run_ok(&mut tar_build(&out, &tmp2, &[]));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        log.contains(&format!("removed {}", killed.display())),
        "{log}"
    );
    canaries.assert_unchanged();
    assert_outputs(&shared, "img");
    assert!(
        private_dirs(&shared, "img").is_empty(),
        "{:?}",
        private_dirs(&shared, "img")
    );
    assert_eq!(
        std::fs::read_dir(&tmp2).unwrap().count(),
        0,
        "build directory left in {}",
        tmp2.display()
    );
}

/// A pid no process has now.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// A finalise.d hook that sets kiln's owner attribute itself (perl's syscall:
/// setxattr is 188 on x86_64), as a stray one in a build with a subordinate
/// range, where it means nothing.
const STRAY_OWNER_HOOK: &str = r#"#!/bin/bash
set -eu
echo stray > /etc/kiln-stray
perl -e 'my ($p, $n, $v) = ("/etc/kiln-stray", "user.kiln.owner", "1:2");
syscall(188, $p, $n, $v, length $v, 0) == 0 or die "setxattr: $!\n"'
"#;

#[test]
fn tar_and_squashfs_keep_the_trees_owners_and_never_kilns_owner_attribute() {
    let (s, tmp) = scratch_with_tmp("owners");
    let flavours = s.flavour(
        "stray-owner",
        &[
            (
                "README.md",
                "test flavour: a stray user.kiln.owner\n",
                false,
            ),
            ("finalise.d/50-stray-owner", STRAY_OWNER_HOOK, true),
        ],
    );
    let out = s.join("out");
    std::fs::create_dir_all(&out).unwrap();
    chown_to_user(&out);
    let img = out.join("img");
    let mut args = vec![
        "-t",
        "tar,squashfs",
        "--no-tmpfs",
        "-o",
        img.to_str().unwrap(),
    ];
    args.extend(IMAGE_FLAVOURS);
    args.push("stray-owner");
    let mut cmd = kiln("disk-image-create", &args);
    cmd.env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
        .env("TMPDIR", &tmp);
    let o = run_ok(&mut cmd);
    let log = output_text(&o);
    assert!(
        log.contains("owners: removed user.kiln.owner from 1 files"),
        "{log}"
    );

    let tar = out.join("img.tar");
    let listing = |args: &[&str]| {
        let o = Command::new("tar").args(args).arg(&tar).output().unwrap();
        assert!(o.status.success(), "{}", output_text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let plain = listing(&["--numeric-owner", "-tvf"]);
    assert!(
        plain
            .lines()
            .any(|l| l.starts_with("-rw-r----- 0/42 ") && l.ends_with(" ./etc/shadow")),
        "{plain}"
    );
    assert!(plain.contains("./etc/kiln-stray"), "{plain}");
    let with_xattrs = listing(&["--xattrs", "--xattrs-include=*", "-tvvf"]);
    assert!(!with_xattrs.contains("user.kiln"), "{with_xattrs}");

    let sq = out.join("img.squashfs");
    let o = Command::new("unsquashfs")
        .arg("-lln")
        .arg(&sq)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let sq_listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        sq_listing
            .lines()
            .any(|l| l.starts_with("-rw-r----- 0/42 ") && l.ends_with("/etc/shadow")),
        "{sq_listing}"
    );
    let x = s.join("x");
    let o = Command::new("unsquashfs")
        .arg("-d")
        .arg(&x)
        .arg("-no-progress")
        .arg(&sq)
        .arg("etc/kiln-stray")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let stray = x.join("etc/kiln-stray");
    assert_eq!(std::fs::read(&stray).unwrap(), b"stray\n");
    let mut names = vec![0u8; 4096];
    let path = std::ffi::CString::new(stray.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and buffer.
    let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "{}", std::io::Error::last_os_error());
    assert!(
        !names[..n as usize].windows(9).any(|w| w == b"user.kiln"),
        "{:?}",
        String::from_utf8_lossy(&names[..n as usize])
    );
}
