//! Recorded owners (tree::owners) through every writer made from the tree,
//! checked with the tools that read those formats. The trees live under the
//! crate's directory: tmpfs has no user.* attributes before Linux 6.6.

use super::convert::{tree_archive, Format};
use super::fs::build_filesystems;
use super::layout::MIB;
use crate::tree::owners::{self, Owner, Recorded, XATTR};
use crate::tree::ImageTree;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const EPOCH: i64 = 1_700_000_000;
const SHADOW: Owner = Owner { uid: 0, gid: 42 };
const DIR: Owner = Owner { uid: 100, gid: 101 };
const LINKED: Owner = Owner { uid: 7, gid: 8 };
const LONG: Owner = Owner {
    uid: 1000,
    gid: 1001,
};
/// Above tar's seven octal digits.
const BIG: Owner = Owner {
    uid: 3_000_000,
    gid: 3_000_001,
};
const IN_ESP: Owner = Owner { uid: 5, gid: 5 };
/// The tree's own root directory.
const TOP: Owner = Owner { uid: 0, gid: 3 };

fn long_dir() -> String {
    format!("{}/{}", "d".repeat(60), "e".repeat(60))
}

fn record(path: &Path, owner: Owner) {
    let f = File::open(path).unwrap();
    owners::record(f.as_fd(), owner).unwrap();
}

/// etc/shadow (0640, 0:42), var/lib/d (a directory, 100:101), usr/bin/a and
/// its hard link usr/bin/b (7:8), a file under a path longer than tar's 100
/// bytes (1000:1001), opt/big (3000000:3000001), a symlink, an unrecorded
/// file, boot/efi/EFI/x (the ESP's content, 5:5), and the root itself (0:3).
/// Times clamped to EPOCH.
fn tree() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let t = dir.path().join("tree");
    let long = t.join(long_dir());
    for d in [
        t.join("etc"),
        t.join("var/lib/d"),
        t.join("usr/bin"),
        t.join("opt"),
        t.join("boot/efi/EFI"),
        long.clone(),
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(t.join("etc/shadow"), b"root:*:1::::::\n").unwrap();
    std::fs::set_permissions(t.join("etc/shadow"), PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::write(t.join("etc/hostname"), b"kiln\n").unwrap();
    std::fs::write(t.join("usr/bin/a"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(t.join("usr/bin/a"), PermissionsExt::from_mode(0o4755)).unwrap();
    std::fs::hard_link(t.join("usr/bin/a"), t.join("usr/bin/b")).unwrap();
    std::fs::write(long.join("file"), b"long\n").unwrap();
    std::fs::write(t.join("opt/big"), b"big\n").unwrap();
    std::fs::write(t.join("boot/efi/EFI/x"), b"esp\n").unwrap();
    std::os::unix::fs::symlink("etc/shadow", t.join("link")).unwrap();
    record(&t.join("etc/shadow"), SHADOW);
    record(&t.join("var/lib/d"), DIR);
    record(&t.join("usr/bin/a"), LINKED);
    record(&long.join("file"), LONG);
    record(&t.join("opt/big"), BIG);
    record(&t.join("boot/efi/EFI/x"), IN_ESP);
    record(&t, TOP);
    ImageTree::open(&t).unwrap().clamp_times(EPOCH).unwrap();
    (dir, t)
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `UID/GID` a listing line shows for `name` (its last field).
fn owner_in(listing: &str, name: &str) -> String {
    let line = listing
        .lines()
        .find(|l| l.ends_with(name) || l.contains(&format!("{name} link to ")))
        .unwrap_or_else(|| panic!("{name} not in\n{listing}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

fn ids(o: Owner) -> String {
    format!("{}/{}", o.uid, o.gid)
}

#[test]
fn the_tree_reads_every_recorded_owner_and_strip_removes_them() {
    let (_dir, t) = tree();
    let tree = ImageTree::open(&t).unwrap();
    let started = std::time::Instant::now();
    let rec = Recorded::read(&tree).unwrap();
    eprintln!(
        "read {} recorded owners in {:?}",
        rec.len(),
        started.elapsed()
    );
    assert_eq!(rec.len(), 8, "{rec:?}");
    assert_eq!(rec.get(Path::new("/")), Some(TOP));
    assert_eq!(rec.get(Path::new("etc/shadow")), Some(SHADOW));
    assert_eq!(rec.get(Path::new("/var/lib/d/")), Some(DIR));
    // The attribute is on the inode: both names of the hard link carry it.
    assert_eq!(rec.get(Path::new("./usr/bin/b")), Some(LINKED));
    assert_eq!(rec.get(&Path::new(&long_dir()).join("file")), Some(LONG));
    assert_eq!(rec.get(Path::new("etc/hostname")), None);
    assert_eq!(rec.get(Path::new("link")), None);
    let shadow = rec
        .iter()
        .find(|(p, _)| *p == Path::new("etc/shadow"))
        .unwrap();
    assert_eq!(shadow.1.perm, 0o640);
    assert_eq!(
        rec.under(Path::new("boot/efi")).get(Path::new("EFI/x")),
        Some(IN_ESP)
    );
    // Seven inodes carried it (a and b are one).
    assert_eq!(owners::strip(&tree).unwrap(), 7);
    assert!(Recorded::read(&tree).unwrap().is_empty());
    assert_eq!(owners::strip(&tree).unwrap(), 0);
}

#[test]
fn a_value_kiln_did_not_write_is_refused_naming_the_file() {
    let (_dir, t) = tree();
    let f = File::open(t.join("var/lib/d")).unwrap();
    let bogus = b"daemon";
    // SAFETY: valid pointers and lengths.
    let r = unsafe {
        libc::fsetxattr(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            XATTR.as_ptr(),
            bogus.as_ptr().cast(),
            bogus.len(),
            0,
        )
    };
    assert_eq!(r, 0);
    let e = Recorded::read(&ImageTree::open(&t).unwrap()).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("/var/lib/d") && text.contains("daemon"),
        "{text}"
    );
}

#[test]
fn tar_and_tgz_carry_the_recorded_owners_and_never_the_attribute() {
    let (dir, t) = tree();
    let rec = Recorded::read(&ImageTree::open(&t).unwrap()).unwrap();
    // Not stripped: tar itself must leave the attribute out.
    let tar = dir.path().join("t.tar");
    let started = std::time::Instant::now();
    tree_archive(&t, Format::Tar, &tar, Some(&rec)).unwrap();
    eprintln!("tar with owners: {:?}", started.elapsed());
    let listing = output(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("-tvf")
            .arg(&tar),
    );
    assert_eq!(owner_in(&listing, "./etc/shadow"), ids(SHADOW), "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-r----- 0/42 ") && l.ends_with("./etc/shadow")),
        "{listing}"
    );
    assert_eq!(owner_in(&listing, "./var/lib/d/"), ids(DIR));
    assert_eq!(owner_in(&listing, "./usr/bin/a"), ids(LINKED));
    // The second name is a hard-link entry ('1'): its header changes too.
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("hrwsr-xr-x 7/8 ")
                && l.contains("./usr/bin/b link to ./usr/bin/a")),
        "{listing}"
    );
    assert_eq!(
        owner_in(&listing, &format!("./{}/file", long_dir())),
        ids(LONG)
    );
    assert_eq!(owner_in(&listing, "./opt/big"), ids(BIG));
    assert_eq!(owner_in(&listing, " ./"), ids(TOP));
    let me = format!(
        "{}/{}",
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw()
    );
    assert_eq!(owner_in(&listing, "./etc/hostname"), me);
    let with_xattrs = output(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-tvvf"])
            .arg(&tar),
    );
    assert!(!with_xattrs.contains("user.kiln"), "{with_xattrs}");

    // The same tree again, elsewhere: the same bytes.
    let (dir2, t2) = tree();
    let rec2 = Recorded::read(&ImageTree::open(&t2).unwrap()).unwrap();
    let tar2 = dir2.path().join("t.tar");
    tree_archive(&t2, Format::Tar, &tar2, Some(&rec2)).unwrap();
    assert!(std::fs::read(&tar).unwrap() == std::fs::read(&tar2).unwrap());

    let tgz = dir.path().join("t.tgz");
    let tgz2 = dir2.path().join("t.tgz");
    tree_archive(&t, Format::Tgz, &tgz, Some(&rec)).unwrap();
    tree_archive(&t2, Format::Tgz, &tgz2, Some(&rec2)).unwrap();
    assert!(std::fs::read(&tgz).unwrap() == std::fs::read(&tgz2).unwrap());
    // Nothing of the uncompressed tar is left beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    let listing = output(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("-tvzf")
            .arg(&tgz),
    );
    assert_eq!(owner_in(&listing, "./etc/shadow"), ids(SHADOW));
    assert_eq!(owner_in(&listing, "./var/lib/d/"), ids(DIR));
}

#[test]
fn squashfs_carries_the_recorded_owners_and_modes() {
    let (dir, t) = tree();
    let tree = ImageTree::open(&t).unwrap();
    let rec = Recorded::read(&tree).unwrap();
    // As the build does before any writer runs.
    owners::strip(&tree).unwrap();
    let sq = dir.path().join("t.squashfs");
    tree_archive(&t, Format::Squashfs, &sq, Some(&rec)).unwrap();
    let listing = output(Command::new("unsquashfs").arg("-lln").arg(&sq));
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!("squashfs-root/{name}")))
            .unwrap_or_else(|| panic!("{name} not in\n{listing}"))
            .to_string()
    };
    assert!(
        line("etc/shadow").starts_with("-rw-r----- 0/42 "),
        "{listing}"
    );
    assert!(
        line("var/lib/d").starts_with("drwxr-xr-x 100/101 "),
        "{listing}"
    );
    assert!(
        line("usr/bin/a").starts_with("-rwsr-xr-x 7/8 "),
        "{listing}"
    );
    assert!(
        line("usr/bin/b").starts_with("-rwsr-xr-x 7/8 "),
        "{listing}"
    );
    assert!(
        line(&format!("{}/file", long_dir())).starts_with("-rw-r--r-- 1000/1001 "),
        "{listing}"
    );
    assert!(line("opt/big").contains(" 3000000/3000001 "), "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("drwxr-xr-x 0/3 ") && l.ends_with(" squashfs-root")),
        "{listing}"
    );
    assert!(
        listing.lines().any(
            |l| l.starts_with("lrwxrwxrwx ") && l.ends_with("squashfs-root/link -> etc/shadow")
        ),
        "{listing}"
    );
    // No pseudo file left beside the output.
    assert!(!dir.path().join("t.squashfs.kiln-pseudo").exists());
    let extracted = dir.path().join("x");
    output(
        Command::new("unsquashfs")
            .arg("-d")
            .arg(&extracted)
            .arg("-no-progress")
            .arg(&sq),
    );
    let mut names = vec![0u8; 4096];
    let shadow =
        std::ffi::CString::new(extracted.join("etc/shadow").as_os_str().as_encoded_bytes())
            .unwrap();
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(shadow.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0);
    assert!(
        !names[..n as usize].windows(9).any(|w| w == b"user.kiln"),
        "{:?}",
        String::from_utf8_lossy(&names[..n as usize])
    );
}

#[test]
fn ext4_root_carries_the_recorded_owners_and_stays_clean() {
    let (dir, t) = tree();
    let tree = ImageTree::open(&t).unwrap();
    let rec = Recorded::read(&tree).unwrap();
    owners::strip(&tree).unwrap();
    let raw = dir.path().join("disk.raw");
    let plan = crate::disk::plan_disk(
        crate::disk::Layout::Efi,
        super::FsType::Ext4,
        256 * MIB,
        "root",
        vec![],
        &crate::disk::Seed::random().unwrap(),
        Some(EPOCH),
    )
    .unwrap();
    crate::disk::lay_out(&raw, &plan).unwrap();
    let started = std::time::Instant::now();
    build_filesystems(&raw, &tree, &plan, Some(&rec)).unwrap();
    eprintln!("filesystems with owners: {:?}", started.elapsed());
    let root = plan.root().unwrap();
    let image = format!("{}?offset={}", raw.display(), root.start);
    let stat = |path: &str| {
        output(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("stat \"{path}\""))
                .arg(&image),
        )
    };
    let owner_of = |path: &str| {
        let s = stat(path);
        let line = s
            .lines()
            .find(|l| l.starts_with("User:"))
            .unwrap_or_else(|| panic!("{path}: {s}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[1].to_string(), f[3].to_string())
    };
    assert_eq!(owner_of("/etc/shadow"), ("0".into(), "42".into()));
    assert!(stat("/etc/shadow").contains("Mode:  0640"));
    assert_eq!(owner_of("/var/lib/d"), ("100".into(), "101".into()));
    assert_eq!(owner_of("/usr/bin/b"), ("7".into(), "8".into()));
    assert_eq!(
        owner_of(&format!("/{}/file", long_dir())),
        ("1000".into(), "1001".into())
    );
    assert_eq!(owner_of("/opt/big"), ("3000000".into(), "3000001".into()));
    assert_eq!(owner_of("/"), ("0".into(), "3".into()));
    // The ESP's file is not in the root filesystem and did not stop debugfs.
    assert!(!output(
        Command::new("debugfs")
            .arg("-R")
            .arg("ls -l /boot/efi")
            .arg(&image)
    )
    .contains(" x"));
    let ea = output(
        Command::new("debugfs")
            .arg("-R")
            .arg("ea_list /etc/shadow")
            .arg(&image),
    );
    assert!(!ea.contains("kiln"), "{ea}");
    crate::test_tools::assert_e2fsck_clean(&image);
}

#[test]
fn names_a_script_cannot_hold_are_refused_naming_the_file() {
    let rec = Recorded::from_files([(
        PathBuf::from("etc/bad\"name"),
        owners::RecordedFile {
            owner: SHADOW,
            perm: 0o640,
        },
    )]);
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let t = dir.path().join("tree");
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::write(t.join("etc/bad\"name"), b"x").unwrap();
    let e = tree_archive(&t, Format::Squashfs, &dir.path().join("s"), Some(&rec)).unwrap_err();
    assert!(format!("{e:#}").contains("etc/bad"), "{e:#}");
    let raw = dir.path().join("root.ext4");
    let plan = crate::disk::plan_disk(
        crate::disk::Layout::None,
        super::FsType::Ext4,
        64 * MIB,
        "root",
        vec![],
        &crate::disk::Seed::random().unwrap(),
        None,
    )
    .unwrap();
    crate::disk::lay_out(&raw, &plan).unwrap();
    let e = build_filesystems(&raw, &ImageTree::open(&t).unwrap(), &plan, Some(&rec)).unwrap_err();
    assert!(format!("{e:#}").contains("etc/bad"), "{e:#}");
}

#[test]
fn the_same_tree_and_owners_give_the_same_ext4_bytes() {
    let seed = crate::disk::Seed::from_inputs(b"owners");
    let image = || {
        let (dir, t) = tree();
        let tree = ImageTree::open(&t).unwrap();
        let rec = Recorded::read(&tree).unwrap();
        owners::strip(&tree).unwrap();
        let raw = dir.path().join("root.ext4");
        let plan = crate::disk::plan_disk(
            crate::disk::Layout::None,
            super::FsType::Ext4,
            64 * MIB,
            "root",
            vec![],
            &seed,
            Some(EPOCH),
        )
        .unwrap();
        crate::disk::lay_out(&raw, &plan).unwrap();
        build_filesystems(&raw, &tree, &plan, Some(&rec)).unwrap();
        let owner = output(
            Command::new("debugfs")
                .arg("-R")
                .arg("stat /etc/shadow")
                .arg(&raw),
        );
        assert!(owner.contains("Group:    42"), "{owner}");
        std::fs::read(&raw).unwrap()
    };
    assert!(image() == image());
}
