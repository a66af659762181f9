//! Each test plants what a hostile hook would, with a canary outside the tree.

use super::*;
use std::os::unix::fs::symlink;
use tempfile::TempDir;

struct Setup {
    _dir: TempDir,
    tree: ImageTree,
    root: PathBuf,
    canary: PathBuf,
    outside: PathBuf,
}

fn setup() -> Setup {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("home");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(outside.join("secret-dir")).unwrap();
    let canary = outside.join("canary");
    std::fs::write(&canary, "host secret\n").unwrap();
    std::fs::write(outside.join("secret-dir/key"), "host key\n").unwrap();
    let tree = ImageTree::open(&root).unwrap();
    Setup {
        tree,
        root,
        canary,
        outside,
        _dir: dir,
    }
}

#[test]
fn replace_through_an_absolute_symlink_leaves_the_host_file_alone() {
    let s = setup();
    symlink(&s.canary, s.root.join("etc/machine-id")).unwrap();
    s.tree
        .replace(Path::new("/etc/machine-id"), b"", 0o444)
        .unwrap();
    assert_eq!(std::fs::read_to_string(&s.canary).unwrap(), "host secret\n");
    let meta = std::fs::symlink_metadata(s.root.join("etc/machine-id")).unwrap();
    assert!(meta.is_file() && meta.len() == 0);
}

#[test]
fn replace_through_a_hard_link_leaves_the_host_file_alone() {
    let s = setup();
    std::fs::hard_link(&s.canary, s.root.join("etc/machine-id")).unwrap();
    s.tree
        .replace(Path::new("etc/machine-id"), b"", 0o444)
        .unwrap();
    assert_eq!(std::fs::read_to_string(&s.canary).unwrap(), "host secret\n");
}

#[test]
fn a_symlinked_parent_directory_resolves_inside_the_tree() {
    let s = setup();
    // usr/lib/kiln -> /home/.../outside: creating below it must stay in the tree.
    std::fs::create_dir_all(s.root.join("usr/lib")).unwrap();
    symlink(&s.outside, s.root.join("usr/lib/kiln")).unwrap();
    let e = s
        .tree
        .create_dir_all(Path::new("/usr/lib/kiln/first-boot.d"), 0o755)
        .unwrap_err();
    assert!(format!("{e:#}").contains("/usr/lib/kiln"), "{e:#}");
    assert!(!s.outside.join("first-boot.d").exists());
    // Once the link's target exists inside the image, the link is followed there.
    let inside = s.root.join(s.outside.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    s.tree
        .create_dir_all(Path::new("/usr/lib/kiln/first-boot.d"), 0o755)
        .unwrap();
    s.tree
        .replace(
            Path::new("/usr/lib/kiln/first-boot.d/50-x"),
            b"#!/bin/sh\n",
            0o755,
        )
        .unwrap();
    assert!(!s.outside.join("first-boot.d").exists());
    assert!(inside.join("first-boot.d/50-x").is_file());
}

#[test]
fn reads_follow_links_only_inside_the_tree() {
    let s = setup();
    std::fs::create_dir_all(s.root.join("boot")).unwrap();
    symlink(&s.canary, s.root.join("boot/vmlinuz-1")).unwrap();
    let e = s.tree.read(Path::new("boot/vmlinuz-1")).unwrap_err();
    assert!(format!("{e:#}").contains("/boot/vmlinuz-1"), "{e:#}");
    let mut out = tempfile::tempfile().unwrap();
    assert!(s
        .tree
        .copy_out(Path::new("boot/vmlinuz-1"), &mut out)
        .is_err());
    // A relative link inside the tree works.
    std::fs::write(s.root.join("boot/real"), "kernel").unwrap();
    symlink("real", s.root.join("boot/vmlinuz-2")).unwrap();
    assert_eq!(
        s.tree.read(Path::new("/boot/vmlinuz-2")).unwrap(),
        b"kernel"
    );
    // `..` stops at the root.
    symlink("../../../../../../../../etc/passwd", s.root.join("boot/up")).unwrap();
    std::fs::write(s.root.join("etc/passwd"), "image passwd").unwrap();
    assert_eq!(s.tree.read(Path::new("boot/up")).unwrap(), b"image passwd");
}

#[test]
fn copy_out_refuses_a_hard_linked_file() {
    let s = setup();
    std::fs::create_dir_all(s.root.join("boot")).unwrap();
    std::fs::hard_link(&s.canary, s.root.join("boot/vmlinuz-1")).unwrap();
    let mut out = tempfile::tempfile().unwrap();
    let e = s
        .tree
        .copy_out(Path::new("boot/vmlinuz-1"), &mut out)
        .unwrap_err();
    assert!(format!("{e:#}").contains("hard links"), "{e:#}");
    assert_eq!(out.metadata().unwrap().len(), 0);
}

#[test]
fn a_fifo_is_refused_at_once() {
    let s = setup();
    nix::unistd::mkfifo(&s.root.join("etc/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    let t = std::time::Instant::now();
    let e = s.tree.read(Path::new("etc/fifo")).unwrap_err();
    assert!(format!("{e:#}").contains("a FIFO"), "{e:#}");
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn removal_and_rename_take_the_link_itself() {
    let s = setup();
    std::fs::create_dir_all(s.root.join("var/lib")).unwrap();
    symlink(&s.outside, s.root.join("var/lib/dbus")).unwrap();
    // var/lib/dbus/machine-id resolves to <tree><outside>/machine-id: absent, nothing removed.
    std::fs::write(s.outside.join("machine-id"), "x").unwrap();
    assert!(!s
        .tree
        .remove_file(Path::new("var/lib/dbus/machine-id"))
        .unwrap());
    assert!(s.outside.join("machine-id").exists());
    assert!(s.tree.remove_file(Path::new("var/lib/dbus")).unwrap());
    assert!(s.outside.is_dir());
    symlink(&s.canary, s.root.join("etc/resolv.conf")).unwrap();
    s.tree
        .rename(Path::new("etc/resolv.conf"), Path::new("etc/aside"))
        .unwrap();
    assert!(std::fs::symlink_metadata(s.root.join("etc/aside"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&s.canary).unwrap(), "host secret\n");
    // An empty-dir removal through a symlink removes nothing on the host.
    std::fs::create_dir_all(s.root.join("tmp")).unwrap();
    std::fs::create_dir(s.outside.join("empty")).unwrap();
    symlink(s.outside.join("empty"), s.root.join("tmp/in_target.d")).unwrap();
    assert!(!s.tree.remove_empty_dir(Path::new("tmp/in_target.d")));
    assert!(s.outside.join("empty").is_dir());
}

#[test]
fn stage_dereferences_inside_the_tree_and_never_reaches_the_host() {
    let s = setup();
    std::fs::create_dir_all(s.root.join("boot/efi/EFI/debian")).unwrap();
    std::fs::write(s.root.join("boot/efi/EFI/debian/grubx64.efi"), "efi").unwrap();
    symlink(&s.canary, s.root.join("boot/efi/stolen")).unwrap();
    symlink(
        s.outside.join("secret-dir"),
        s.root.join("boot/efi/stolen-dir"),
    )
    .unwrap();
    let dest = s._dir.path().join("stage");
    let e = s.tree.stage(Path::new("boot/efi"), &dest).unwrap_err();
    assert!(format!("{e:#}").contains("/boot/efi/stolen"), "{e:#}");
    // With the dangling links gone, in-tree links are copied as files.
    std::fs::remove_file(s.root.join("boot/efi/stolen")).unwrap();
    std::fs::remove_file(s.root.join("boot/efi/stolen-dir")).unwrap();
    symlink(
        "/boot/efi/EFI/debian/grubx64.efi",
        s.root.join("boot/efi/alias.efi"),
    )
    .unwrap();
    symlink("/boot/efi", s.root.join("boot/efi/EFI/loop")).unwrap();
    let _ = std::fs::remove_dir_all(&dest);
    let e = s.tree.stage(Path::new("boot/efi"), &dest).unwrap_err();
    assert!(format!("{e:#}").contains("loop"), "{e:#}");
    std::fs::remove_file(s.root.join("boot/efi/EFI/loop")).unwrap();
    let _ = std::fs::remove_dir_all(&dest);
    assert_eq!(s.tree.stage(Path::new("boot/efi"), &dest).unwrap(), 2);
    assert_eq!(
        std::fs::read_to_string(dest.join("alias.efi")).unwrap(),
        "efi"
    );
}

#[test]
fn host_dir_stays_inside_the_tree() {
    let s = setup();
    symlink(&s.outside, s.root.join("boot")).unwrap();
    let e = s.tree.host_dir(Path::new("boot")).unwrap_err();
    assert!(format!("{e:#}").contains("/boot"), "{e:#}");
    std::fs::create_dir_all(s.root.join("var/lib/kiln/real")).unwrap();
    symlink("/var/lib/kiln/real", s.root.join("var/lib/kiln/link")).unwrap();
    assert_eq!(
        s.tree.host_dir(Path::new("var/lib/kiln/link")).unwrap(),
        s.tree.path().join("var/lib/kiln/real")
    );
}

#[test]
fn clamping_times_never_touches_what_links_point_at() {
    let s = setup();
    symlink(&s.canary, s.root.join("etc/link-to-file")).unwrap();
    symlink(&s.outside, s.root.join("etc/link-to-dir")).unwrap();
    std::fs::write(s.root.join("etc/own"), "x").unwrap();
    let before = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (canary, key) = (before(&s.canary), before(&s.outside.join("secret-dir/key")));
    let clamped = s.tree.clamp_times(1_000_000_000).unwrap();
    assert!(clamped >= 4, "{clamped}");
    assert_eq!(before(&s.canary), canary);
    assert_eq!(before(&s.outside.join("secret-dir/key")), key);
    let own = std::fs::symlink_metadata(s.root.join("etc/own")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&own), 1_000_000_000);
    let link = std::fs::symlink_metadata(s.root.join("etc/link-to-file")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&link), 1_000_000_000);
}
