//! End-to-end through the library on real images: trees made into ext2/3/4 by
//! mke2fs, laid out by sfdisk, converted by qemu-img — the tools whose output kiln
//! ships — then read back and compared byte for byte.

use super::*;
use std::os::unix::fs::{symlink, FileExt};
use std::path::Path;
use std::process::Command;

pub(crate) const KERNEL: &str = "vmlinuz-6.1.0-1-amd64";
pub(crate) const INITRD: &str = "initrd.img-6.1.0-1-amd64";

/// Half text (compresses: qcow2 -c stores it compressed), half noise (does not:
/// stored raw), alternating within clusters, so one image exercises both paths.
pub(crate) fn content(seed: u64, len: usize) -> Vec<u8> {
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

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The usual Debian /boot: two kernels with their initrds, and /vmlinuz → boot/….
pub(crate) fn debian_tree(root: &Path) {
    let boot = root.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join(KERNEL), content(1, 700_000)).unwrap();
    std::fs::write(boot.join(INITRD), content(2, 1_300_000)).unwrap();
    std::fs::write(boot.join("vmlinuz-5.10.0-9-amd64"), content(3, 10_000)).unwrap();
    std::fs::write(boot.join("initrd.img-5.10.0-9-amd64"), content(4, 10_000)).unwrap();
    std::fs::write(boot.join("config-6.1.0-1-amd64"), "CONFIG_X=y\n").unwrap();
    symlink(format!("boot/{KERNEL}"), root.join("vmlinuz")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/debian_version"), "12.0\n").unwrap();
}

pub(crate) fn mkfs(tree: &Path, out: &Path, kind: &str, mib: u32, extra: &[&str]) {
    let mut c = Command::new(format!("mkfs.{kind}"));
    c.args(["-q", "-F", "-d"])
        .arg(tree)
        .args(extra)
        .arg(out)
        .arg(format!("{mib}M"));
    run(&mut c);
}

/// A disk holding `fs` as partition 2 ("root") after an ESP, or per `script`.
pub(crate) fn disk(fs: &Path, out: &Path, label: &str) -> u64 {
    let len = std::fs::metadata(fs).unwrap().len();
    let sectors = len / 512;
    let script = match label {
        "gpt" => format!(
            "label: gpt\nsize=1MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\nsize={sectors}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
        ),
        // A primary vfat, then the filesystem as logical partition 5.
        "dos" => format!("label: dos\nsize=1MiB, type=c\ntype=5\nsize={sectors}, type=83\n"),
        l => panic!("label {l}"),
    };
    let f = std::fs::File::create(out).unwrap();
    f.set_len(len + (4 << 20)).unwrap();
    let mut c = Command::new("sfdisk");
    c.args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(std::process::Stdio::piped());
    let mut child = c.stdout(std::process::Stdio::null()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {label}");
    let j = Command::new("sfdisk").arg("-J").arg(out).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    let parts = v["partitiontable"]["partitions"].as_array().unwrap();
    let start = parts.last().unwrap()["start"].as_u64().unwrap() * 512;
    f.write_all_at(&std::fs::read(fs).unwrap(), start).unwrap();
    start
}

pub(crate) fn qcow2(raw: &Path, out: &Path, args: &[&str]) {
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .args(args)
        .arg(raw)
        .arg(out));
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        Case { dir }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn tree(&self) -> PathBuf {
        self.p("tree")
    }
    fn opts(&self, image: &str) -> Options {
        Options {
            image: self.p(image),
            dir: self.p("out"),
            prefix: "t".into(),
            patterns: Patterns::default(),
            verbose: false,
        }
    }
    fn get(&self, image: &str) -> Result<Extracted> {
        get_kernel(&self.opts(image))
    }
    fn err(&self, image: &str) -> String {
        let e = format!(
            "{:#}",
            self.get(image)
                .err()
                .unwrap_or_else(|| panic!("{image}: expected an error"))
        );
        self.assert_out_empty();
        e
    }
    fn out(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(self.p("out/t-vmlinuz")).unwrap(),
            std::fs::read(self.p("out/t-initrd")).unwrap(),
        )
    }
    /// Extracts and compares with the tree's files.
    fn expect(&self, image: &str, kernel: &str, initrd: &str) {
        let r = self.get(image).unwrap_or_else(|e| panic!("{image}: {e:#}"));
        assert!(
            r.kernel_source.ends_with(kernel),
            "{image}: {}",
            r.kernel_source
        );
        let (k, i) = self.out();
        assert!(
            k == std::fs::read(self.tree().join(kernel)).unwrap(),
            "{image}: kernel differs"
        );
        assert!(
            i == std::fs::read(self.tree().join(initrd)).unwrap(),
            "{image}: initrd differs"
        );
        std::fs::remove_file(self.p("out/t-vmlinuz")).unwrap();
        std::fs::remove_file(self.p("out/t-initrd")).unwrap();
    }
    fn assert_out_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.p("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "files left behind: {left:?}");
    }
}

fn boot(k: &str) -> String {
    format!("boot/{k}")
}

#[test]
fn gpt_raw_and_every_qcow2_variant_give_identical_files() {
    let c = Case::new();
    debian_tree(&c.tree());
    mkfs(&c.tree(), &c.p("fs"), "ext4", 8, &[]);
    disk(&c.p("fs"), &c.p("raw"), "gpt");
    c.expect("raw", &boot(KERNEL), &boot(INITRD));
    for (name, args) in [
        ("plain.qcow2", &[][..]),
        ("zlib.qcow2", &["-c"][..]),
        ("v2.qcow2", &["-c", "-o", "compat=0.10"][..]),
        ("small.qcow2", &["-c", "-o", "cluster_size=4096"][..]),
        ("huge.qcow2", &["-c", "-o", "cluster_size=2M"][..]),
        (
            "subclusters.qcow2",
            &["-o", "extended_l2=on,cluster_size=128k"][..],
        ),
        (
            "subclusters-c.qcow2",
            &["-c", "-o", "extended_l2=on,cluster_size=128k"][..],
        ),
        ("zstd.qcow2", &["-c", "-o", "compression_type=zstd"][..]),
    ] {
        qcow2(&c.p("raw"), &c.p(name), args);
        c.expect(name, &boot(KERNEL), &boot(INITRD));
    }
}

#[test]
fn bare_filesystem_and_mbr_logical_partition() {
    let c = Case::new();
    debian_tree(&c.tree());
    mkfs(&c.tree(), &c.p("fs"), "ext4", 8, &[]);
    c.expect("fs", &boot(KERNEL), &boot(INITRD));
    disk(&c.p("fs"), &c.p("mbr"), "dos");
    let r = c.get("mbr").unwrap();
    assert!(
        r.kernel_source.starts_with("partition 5"),
        "{}",
        r.kernel_source
    );
    std::fs::remove_dir_all(c.p("out")).unwrap();
    std::fs::create_dir(c.p("out")).unwrap();
    qcow2(&c.p("mbr"), &c.p("mbr.qcow2"), &["-c"]);
    c.expect("mbr.qcow2", &boot(KERNEL), &boot(INITRD));
}

#[test]
fn ext2_and_ext3_block_maps_with_indirect_blocks() {
    let c = Case::new();
    debian_tree(&c.tree());
    // 1 KiB blocks: the 700 kB kernel needs single and double indirect blocks.
    for kind in ["ext2", "ext3"] {
        mkfs(&c.tree(), &c.p(kind), kind, 8, &["-b", "1024"]);
        c.expect(kind, &boot(KERNEL), &boot(INITRD));
    }
}

fn debugfs(fs: &Path, request: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(fs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn deep_extent_tree_and_hashed_directory() {
    let c = Case::new();
    debian_tree(&c.tree());
    // A kernel spanning many small block groups without flex_bg gets more extents
    // than the inode holds: the tree grows a level.
    std::fs::write(c.tree().join(boot(KERNEL)), content(9, 5_000_000)).unwrap();
    for i in 0..400 {
        std::fs::write(
            c.tree()
                .join(format!("boot/filler-{i:04}-with-a-long-name")),
            "x",
        )
        .unwrap();
    }
    mkfs(
        &c.tree(),
        &c.p("fs"),
        "ext4",
        12,
        &["-b", "1024", "-g", "1024", "-O", "^flex_bg,^resize_inode"],
    );
    // -D rebuilds directories as hashed trees; exit 1 means "changed", as intended.
    let st = Command::new("e2fsck")
        .args(["-fyD"])
        .arg(c.p("fs"))
        .output()
        .unwrap()
        .status;
    assert!(matches!(st.code(), Some(0 | 1)), "e2fsck: {st}");
    assert!(
        debugfs(&c.p("fs"), &format!("ex /boot/{KERNEL}")).contains(" 1/ 1 "),
        "the test needs a depth-1 extent tree"
    );
    assert!(
        debugfs(&c.p("fs"), "htree /boot").contains("Root node dump"),
        "the test needs a hashed /boot"
    );
    c.expect("fs", &boot(KERNEL), &boot(INITRD));
}

#[test]
fn inline_data_directory_and_files() {
    let c = Case::new();
    let b = c.tree().join("boot");
    std::fs::create_dir_all(&b).unwrap();
    // Short names keep /boot inline (mke2fs moves a directory to a block rather
    // than into the attribute); the 100-byte initrd spills from i_block into it.
    std::fs::write(b.join("vmlinuz-1.0-a"), content(5, 50)).unwrap();
    std::fs::write(b.join("initrd.img-1.0-a"), content(6, 100)).unwrap();
    mkfs(&c.tree(), &c.p("fs"), "ext4", 8, &["-O", "inline_data"]);
    let inline = |path: &str| {
        let stat = debugfs(&c.p("fs"), &format!("stat {path}"));
        stat.split("Size of inline data: ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok())
    };
    assert_eq!(inline("/boot"), Some(60), "the test needs an inline /boot");
    assert_eq!(
        inline("/boot/initrd.img-1.0-a"),
        Some(100),
        "the test needs an initrd inline past i_block"
    );
    c.expect("fs", "boot/vmlinuz-1.0-a", "boot/initrd.img-1.0-a");
}

#[test]
fn symlinks_fast_slow_and_dangling() {
    let c = Case::new();
    let t = c.tree();
    let real = "usr/lib/modules/7.0.0-1-amd64/a-directory-name-long-enough-to-need-a-block";
    std::fs::create_dir_all(t.join(real)).unwrap();
    std::fs::create_dir_all(t.join("bootdir")).unwrap();
    std::fs::write(t.join(real).join("vmlinuz"), content(7, 300_000)).unwrap();
    std::fs::write(
        t.join("bootdir/initrd.img-7.0.0-1-amd64"),
        content(8, 200_000),
    )
    .unwrap();
    // /boot is a fast symlink; the kernel is a slow (block-held) absolute one; a
    // newer-looking dangling one must be passed over.
    symlink("bootdir", t.join("boot")).unwrap();
    symlink(
        format!("/{real}/vmlinuz"),
        t.join("bootdir/vmlinuz-7.0.0-1-amd64"),
    )
    .unwrap();
    symlink("nowhere", t.join("bootdir/vmlinuz-9.9.9")).unwrap();
    mkfs(&c.tree(), &c.p("fs"), "ext4", 8, &[]);
    let r = c.get("fs").unwrap();
    assert!(
        r.kernel_source.ends_with("/boot/vmlinuz-7.0.0-1-amd64"),
        "{}",
        r.kernel_source
    );
    let (k, i) = c.out();
    assert!(k == std::fs::read(t.join(real).join("vmlinuz")).unwrap());
    assert!(i == std::fs::read(t.join("bootdir/initrd.img-7.0.0-1-amd64")).unwrap());
}

#[test]
fn separate_boot_filesystem_is_found_after_an_empty_root_boot() {
    let c = Case::new();
    debian_tree(&c.p("bootfs-tree"));
    let bt = c.p("bootfs-tree/boot");
    std::fs::create_dir_all(c.tree().join("boot")).unwrap();
    std::fs::write(c.tree().join("etc-marker"), "root").unwrap();
    mkfs(&c.tree(), &c.p("root"), "ext4", 4, &[]);
    mkfs(&bt, &c.p("boot"), "ext4", 8, &[]);
    // GPT: ESP, root (2, with an empty /boot), /boot (3).
    let len = std::fs::metadata(c.p("boot")).unwrap().len()
        + std::fs::metadata(c.p("root")).unwrap().len();
    let raw = c.p("raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(len + (4 << 20))
        .unwrap();
    let mut sf = Command::new("sfdisk");
    sf.args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = sf.spawn().unwrap();
    let script = "label: gpt\nsize=1MiB, type=U\nsize=4MiB, name=root\nsize=8MiB, name=boot\n";
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.write_all_at(&std::fs::read(c.p("root")).unwrap(), 2 << 20)
        .unwrap();
    f.write_all_at(&std::fs::read(c.p("boot")).unwrap(), 6 << 20)
        .unwrap();
    let r = c.get("raw").unwrap();
    assert_eq!(
        r.kernel_source,
        format!("partition 3 (\"boot\"), /{KERNEL}")
    );
    assert!(c.out().0 == std::fs::read(bt.join(KERNEL)).unwrap());
}

#[test]
fn patterns_choose_the_older_kernel() {
    let c = Case::new();
    debian_tree(&c.tree());
    mkfs(&c.tree(), &c.p("fs"), "ext4", 8, &[]);
    let mut o = c.opts("fs");
    o.patterns.kernel = Some("vmlinuz-5.10*".into());
    let r = get_kernel(&o).unwrap();
    assert!(
        r.initrd_source.ends_with("/boot/initrd.img-5.10.0-9-amd64"),
        "{}",
        r.initrd_source
    );
    assert!(c.out().0 == content(3, 10_000));
    o.patterns.kernel = Some("bzImage*".into());
    let e = format!("{:#}", get_kernel(&o).err().unwrap());
    assert!(
        e.contains("DIB_BAREMETAL_KERNEL_PATTERN=\"bzImage*\""),
        "{e}"
    );
    o.patterns.kernel = Some("../vmlinuz*".into());
    assert!(format!("{:#}", get_kernel(&o).err().unwrap()).contains("cannot contain '/'"));
}

#[test]
fn errors_name_the_problem_and_leave_nothing() {
    let c = Case::new();
    debian_tree(&c.tree());
    mkfs(&c.tree(), &c.p("fs"), "ext4", 8, &[]);
    disk(&c.p("fs"), &c.p("raw"), "gpt");
    qcow2(&c.p("raw"), &c.p("zlib.qcow2"), &["-c"]);

    std::fs::write(
        c.p("text"),
        "just some text, long enough to not be tiny\n".repeat(100),
    )
    .unwrap();
    assert!(c.err("text").contains("not a disk image"));
    std::fs::write(c.p("empty"), "").unwrap();
    assert!(c.err("empty").contains("not a disk image"));
    assert!(c.err("missing").contains("does not exist"));
    assert!(c.err("out").contains("is a directory"));
    std::fs::write(c.p("vmdk"), b"KDMV\x01\0\0\0").unwrap();
    assert!(c.err("vmdk").contains("VMDK"));

    let bytes = std::fs::read(c.p("zlib.qcow2")).unwrap();
    std::fs::write(c.p("hdr.qcow2"), &bytes[..50]).unwrap();
    assert!(c.err("hdr.qcow2").contains("truncated"));
    std::fs::write(c.p("l1.qcow2"), &bytes[..0x10000]).unwrap();
    let e = c.err("l1.qcow2");
    assert!(e.contains("truncated") && e.contains("L1"), "{e}");
    std::fs::write(c.p("half.qcow2"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(c.err("half.qcow2").contains("truncated"));
    std::fs::write(
        c.p("half.raw"),
        &std::fs::read(c.p("raw")).unwrap()[..3 << 20],
    )
    .unwrap();
    assert!(c.err("half.raw").contains("truncated"));

    let img = |args: &[&str], name: &str| {
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .args(args)
            .arg(c.p(name))
            .arg("16M"));
    };
    img(
        &["-b", c.p("zlib.qcow2").to_str().unwrap(), "-F", "qcow2"],
        "overlay.qcow2",
    );
    assert!(c.err("overlay.qcow2").contains("backing file"));
    img(
        &[
            "--object",
            "secret,id=s,data=pw",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s",
        ],
        "enc.qcow2",
    );
    assert!(c.err("enc.qcow2").contains("encrypted"));
    img(
        &["-o", &format!("data_file={}", c.p("data.raw").display())],
        "ext.qcow2",
    );
    assert!(c.err("ext.qcow2").contains("external"));

    // No kernel: the message names what each partition held.
    std::fs::remove_dir_all(c.tree().join("boot")).unwrap();
    std::fs::remove_file(c.tree().join("vmlinuz")).unwrap();
    mkfs(&c.tree(), &c.p("fs2"), "ext4", 8, &[]);
    disk(&c.p("fs2"), &c.p("nokernel"), "gpt");
    let e = c.err("nokernel");
    assert!(
        e.contains("no kernel") && e.contains("partition 2 (\"root\") (ext) has no vmlinuz-*"),
        "{e}"
    );
    assert!(
        e.contains("partition 1 (\"ESP\") holds no filesystem"),
        "{e}"
    );

    // A kernel without its initrd.
    std::fs::create_dir(c.tree().join("boot")).unwrap();
    std::fs::write(c.tree().join(boot(KERNEL)), "k").unwrap();
    mkfs(&c.tree(), &c.p("fs3"), "ext4", 8, &[]);
    let e = c.err("fs3");
    assert!(e.contains(INITRD) && e.contains(KERNEL), "{e}");

    // Filesystems we do not read are named with their partition.
    let raw = std::fs::read(c.p("raw")).unwrap();
    let start = disk(&c.p("fs"), &c.p("xfs"), "gpt") as usize;
    let mut x = raw.clone();
    x[start..start + 4096].fill(0);
    x[start..start + 4].copy_from_slice(b"XFSB");
    std::fs::write(c.p("xfs"), &x).unwrap();
    let e = c.err("xfs");
    assert!(
        e.contains("partition 2 (\"root\") holds xfs") && e.contains("ext2/3/4"),
        "{e}"
    );
    let mut b = raw.clone();
    b[start + 1024..start + 2048].fill(0);
    b[start + 0x10040..start + 0x10048].copy_from_slice(b"_BHRfS_M");
    std::fs::write(c.p("btrfs"), &b).unwrap();
    assert!(c.err("btrfs").contains("holds btrfs"));

    // Output directory and prefix.
    let mut o = c.opts("raw");
    o.dir = c.p("nodir");
    assert!(format!("{:#}", get_kernel(&o).err().unwrap()).contains("does not exist"));
    o.dir = c.p("raw");
    assert!(format!("{:#}", get_kernel(&o).err().unwrap()).contains("not a directory"));
    let mut o = c.opts("raw");
    o.prefix = "a/b".into();
    assert!(format!("{:#}", get_kernel(&o).err().unwrap()).contains("prefix"));
    c.assert_out_empty();
}

/// Every truncation point either fails cleanly, leaving nothing, or (at full
/// length) succeeds.
#[test]
fn truncation_anywhere_fails_cleanly() {
    let c = Case::new();
    debian_tree(&c.tree());
    mkfs(&c.tree(), &c.p("fs"), "ext4", 8, &[]);
    disk(&c.p("fs"), &c.p("raw"), "gpt");
    qcow2(&c.p("raw"), &c.p("full.qcow2"), &["-c"]);
    for src in ["full.qcow2", "raw"] {
        let bytes = std::fs::read(c.p(src)).unwrap();
        for k in 0..24 {
            let len = bytes.len() * k / 24;
            std::fs::write(c.p("cut"), &bytes[..len]).unwrap();
            match c.get("cut") {
                // The tail (backup GPT, free space) is not needed.
                Ok(_) => c.expect("cut", &boot(KERNEL), &boot(INITRD)),
                Err(e) => {
                    c.assert_out_empty();
                    let e = format!("{e:#}");
                    assert!(
                        e.contains("truncated") || e.contains("not a disk image"),
                        "{src} cut at {len}: {e}"
                    );
                }
            }
        }
    }
}

/// Flipped bytes in the metadata: an error or a result, never a panic (overflow
/// checks are on in test builds, so arithmetic on hostile values is caught too).
#[test]
fn corrupted_images_never_panic() {
    let c = Case::new();
    debian_tree(&c.tree());
    mkfs(&c.tree(), &c.p("fs"), "ext4", 8, &[]);
    let start = disk(&c.p("fs"), &c.p("raw"), "gpt");
    qcow2(&c.p("raw"), &c.p("q"), &["-c"]);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    // The partition table; the filesystem's metadata and directories; qcow2 tables.
    for (image, base, window) in [
        ("raw", 0, 34 * 512),
        ("raw", start, 1 << 20),
        ("q", 0, 1 << 20),
    ] {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(c.p(image))
            .unwrap();
        for i in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = base + x % window;
            let mut old = [0u8; 4];
            f.read_exact_at(&mut old, off).unwrap();
            f.write_all_at(&(x >> 32).to_le_bytes()[..4], off).unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.get(image)));
            assert!(
                r.is_ok(),
                "{image}: panicked with 4 bytes changed at {off} (iteration {i})"
            );
            f.write_all_at(&old, off).unwrap();
            let _ = std::fs::remove_dir_all(c.p("out"));
            std::fs::create_dir(c.p("out")).unwrap();
        }
    }
}
