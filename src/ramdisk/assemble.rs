//! The last step of `ramdisk-image-create`: pack the ramdisk root that the
//! `ramdisk` flavour staged inside the tree, and copy out the kernel it chose.
//!
//! Everything that executes the tree's programs (busybox's applet list, ldd,
//! depmod, the ramdisk-install.d hooks) already ran inside the sandbox during
//! post-install.d; this side only reads files, so it needs no chroot.

use super::compress::{compress_into, Compression};
use super::cpio::{self, Extra, ExtraKind};
use crate::tree::owners::Recorded;
use crate::tree::ImageTree;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the ramdisk flavour stages its work, relative to the image root.
pub const STAGING: &str = "var/lib/kiln/ramdisk";

#[derive(Debug, Clone, Default)]
pub struct RamdiskOptions {
    pub compression: Compression,
    /// Clamp every timestamp in the archive to this (reproducible builds).
    pub source_date_epoch: Option<u64>,
    /// The tree's recorded owners (a build without subordinate ids).
    pub owners: Option<Recorded>,
}

/// What was written, for the build's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub kernel_version: String,
    pub entries: usize,
    /// The cpio archive before compression.
    pub cpio_bytes: u64,
    pub initramfs_bytes: u64,
    pub kernel_bytes: u64,
}

/// The staged ramdisk root and the kernel version its modules belong to.
pub struct Staged {
    pub root: PathBuf,
    pub kernel_version: String,
    /// Inside the image.
    pub kernel: PathBuf,
}

/// Finds what the ramdisk flavour's post-install.d hook left in `tree`.
pub fn staged(tree: &ImageTree) -> Result<Staged> {
    let staging = Path::new(STAGING);
    let version_file = staging.join("kernel-version");
    if !tree.is_file(&staging.join("root/init")) || !tree.is_file(&version_file) {
        bail!(
            "no ramdisk was staged in the image (/{STAGING} has no root/init or kernel-version): \
             the `ramdisk` flavour's post-install.d hook must run in this build"
        );
    }
    // The cpio writer walks this directory without following symlinks in it.
    let root = tree.host_dir(&staging.join("root"))?;
    let kernel_version = String::from_utf8_lossy(&tree.read(&version_file)?)
        .trim()
        .to_string();
    if kernel_version.is_empty() || kernel_version.contains('/') || kernel_version.starts_with('.')
    {
        bail!(
            "/{}: {kernel_version:?} is not a kernel version",
            version_file.display()
        );
    }
    let candidates =
        ["vmlinuz", "vmlinux"].map(|p| Path::new("boot").join(format!("{p}-{kernel_version}")));
    let Some(kernel) = candidates.iter().find(|p| tree.is_file(p)).cloned() else {
        if let Some(link) = candidates
            .iter()
            .find(|p| tree.kind(p) == Some(crate::tree::Kind::Symlink))
        {
            bail!("the image's /{} is a symbolic link that leads to no regular file inside the image; kiln copies the kernel only from the image itself", link.display());
        }
        bail!("the image has no /boot/vmlinuz-{kernel_version}, the kernel the ramdisk's modules were staged for");
    };
    Ok(Staged {
        root,
        kernel_version,
        kernel,
    })
}

/// What an unprivileged build cannot put into the tree: the console the kernel
/// opens for /init's stdio before /init can mount devtmpfs.
fn synthetic_entries() -> Vec<Extra> {
    vec![
        Extra {
            path: "dev".into(),
            kind: ExtraKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
        },
        Extra {
            path: "dev/console".into(),
            kind: ExtraKind::CharDev { major: 5, minor: 1 },
            perm: 0o600,
            uid: 0,
            gid: 0,
        },
        Extra {
            path: "dev/null".into(),
            kind: ExtraKind::CharDev { major: 1, minor: 3 },
            perm: 0o666,
            uid: 0,
            gid: 0,
        },
    ]
}

/// Writes NAME.kernel and NAME.initramfs (at the given temporary paths) from the
/// ramdisk staged in `tree`. Run where the tree's owners read as themselves
/// (kiln's user namespace), so the archive records root as root.
pub fn assemble(
    tree: &ImageTree,
    kernel_out: &Path,
    initramfs_out: &Path,
    opts: &RamdiskOptions,
) -> Result<Assembled> {
    let s = staged(tree)?;
    // Debian and Ubuntu keep /boot/vmlinuz-* 0600; the output is for a boot server to read.
    let mut kernel_file = crate::disk::create_output(kernel_out, 0o644)?;
    let kernel_bytes = tree.copy_out(&s.kernel, &mut kernel_file)?;
    kernel_file.set_permissions(std::fs::Permissions::from_mode(0o644))?;

    let out = crate::disk::create_output(initramfs_out, 0o644)?;
    let cpio_opts = cpio::Options {
        source_date_epoch: opts.source_date_epoch,
        owners: opts
            .owners
            .as_ref()
            .map(|o| o.under(&Path::new(STAGING).join("root"))),
    };
    let extras = synthetic_entries();
    let summary = compress_into(opts.compression, out, |w| {
        cpio::write_tree(&s.root, &extras, &cpio_opts, w)
    })
    .with_context(|| format!("writing the initramfs {}", initramfs_out.display()))?;
    let initramfs_bytes = std::fs::metadata(initramfs_out)?.len();
    Ok(Assembled {
        kernel_version: s.kernel_version,
        entries: summary.entries,
        cpio_bytes: summary.bytes,
        initramfs_bytes,
        kernel_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use tempfile::TempDir;

    fn fake_tree(kver: &str) -> TempDir {
        let t = TempDir::new().unwrap();
        let st = t.path().join(STAGING);
        std::fs::create_dir_all(st.join("root/bin")).unwrap();
        std::fs::write(st.join("root/init"), "#!/bin/sh\necho hello\n").unwrap();
        std::fs::write(st.join("kernel-version"), format!("{kver}\n")).unwrap();
        std::fs::create_dir_all(t.path().join("boot")).unwrap();
        std::fs::write(
            t.path().join(format!("boot/vmlinuz-{kver}")),
            b"kernel bytes",
        )
        .unwrap();
        std::fs::set_permissions(
            t.path().join(format!("boot/vmlinuz-{kver}")),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        t
    }

    #[test]
    fn packs_the_staged_root_with_a_console_node_and_copies_its_kernel() {
        let tree = fake_tree("6.1.0-1-test");
        let out = TempDir::new().unwrap();
        let (k, i) = (out.path().join("r.kernel"), out.path().join("r.initramfs"));
        let opts = RamdiskOptions {
            compression: Compression::Gzip,
            source_date_epoch: Some(1),
            owners: None,
        };
        let a = assemble(&ImageTree::open(tree.path()).unwrap(), &k, &i, &opts).unwrap();
        assert_eq!(a.kernel_version, "6.1.0-1-test");
        assert_eq!(std::fs::read(&k).unwrap(), b"kernel bytes");
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let listing = Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -dc {} | cpio -itv --quiet", i.display()))
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw-------") && l.ends_with("dev/console")),
            "{listing}"
        );
        assert!(listing.lines().any(|l| l.ends_with(" init")), "{listing}");
        assert!(!listing.contains("kernel-version"), "{listing}");
        // Same tree, same epoch: same bytes.
        let i2 = out.path().join("again.initramfs");
        assemble(
            &ImageTree::open(tree.path()).unwrap(),
            &out.path().join("again.kernel"),
            &i2,
            &opts,
        )
        .unwrap();
        assert_eq!(std::fs::read(&i).unwrap(), std::fs::read(&i2).unwrap());
    }

    /// By hand, on a tree where the ramdisk flavour's hook ran:
    /// `KILN_RAMDISK_TREE=/path/to/tree KILN_RAMDISK_OUT=/tmp/r cargo test --lib real_tree -- --ignored`
    #[test]
    #[ignore]
    fn real_tree() {
        let (Ok(tree), Ok(out)) = (
            std::env::var("KILN_RAMDISK_TREE"),
            std::env::var("KILN_RAMDISK_OUT"),
        ) else {
            return;
        };
        let compression = Compression::parse(
            &std::env::var("KILN_RAMDISK_COMPRESSION").unwrap_or_else(|_| "zstd".into()),
        )
        .unwrap();
        let opts = RamdiskOptions {
            compression,
            source_date_epoch: Some(1_700_000_000),
            owners: None,
        };
        let t = std::time::Instant::now();
        let a = assemble(
            &ImageTree::open(Path::new(&tree)).unwrap(),
            Path::new(&format!("{out}.kernel")),
            Path::new(&format!("{out}.initramfs")),
            &opts,
        )
        .unwrap();
        eprintln!("{a:?} in {:.2}s", t.elapsed().as_secs_f64());
    }

    #[test]
    fn a_tree_without_the_ramdisk_flavour_is_refused_plainly() {
        let t = TempDir::new().unwrap();
        let out = TempDir::new().unwrap();
        let e = assemble(
            &ImageTree::open(t.path()).unwrap(),
            &out.path().join("k"),
            &out.path().join("i"),
            &RamdiskOptions::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("`ramdisk` flavour"), "{e:#}");
    }

    #[test]
    fn a_missing_kernel_is_named() {
        let tree = fake_tree("6.1.0-2-test");
        std::fs::remove_file(tree.path().join("boot/vmlinuz-6.1.0-2-test")).unwrap();
        let out = TempDir::new().unwrap();
        let e = assemble(
            &ImageTree::open(tree.path()).unwrap(),
            &out.path().join("k"),
            &out.path().join("i"),
            &RamdiskOptions::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("vmlinuz-6.1.0-2-test"), "{e:#}");
    }
}
