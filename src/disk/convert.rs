//! Step 4: output formats and checksums.

use super::ids::Seed;
use super::sparse;
use super::tool::{run, tool, HostTool};
use crate::tree::owners::{Recorded, XATTR};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Output formats (`-t`). Disk formats are converted from the raw disk; archive
/// formats are made from the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Qcow2,
    Raw,
    Vhd,
    Vmdk,
    Tar,
    Tgz,
    Squashfs,
}

impl Format {
    /// Every format, in the order `-t`'s error lists them.
    pub const ALL: [Format; 7] = [
        Format::Qcow2,
        Format::Raw,
        Format::Vhd,
        Format::Vmdk,
        Format::Tar,
        Format::Tgz,
        Format::Squashfs,
    ];

    /// One name of `-t`: exactly the output file's extension.
    pub fn parse(s: &str) -> Result<Format> {
        match Format::ALL.into_iter().find(|f| f.as_str() == s) {
            Some(f) => Ok(f),
            None => bail!(
                "unknown output format `{s}` in -t: kiln writes {}",
                Format::ALL.map(Format::as_str).join(", ")
            ),
        }
    }

    /// The name `-t` takes, which is also the output file's extension (`NAME.qcow2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
            Format::Vhd => "vhd",
            Format::Vmdk => "vmdk",
            Format::Tar => "tar",
            Format::Tgz => "tgz",
            Format::Squashfs => "squashfs",
        }
    }

    /// Made from the raw disk by [`convert`]; otherwise from the tree by [`tree_archive`].
    pub fn is_disk(self) -> bool {
        matches!(
            self,
            Format::Qcow2 | Format::Raw | Format::Vhd | Format::Vmdk
        )
    }

    /// Host tools making this format runs.
    pub fn tools(self) -> Vec<HostTool> {
        match self {
            Format::Raw => vec![],
            Format::Qcow2 | Format::Vhd | Format::Vmdk => vec![tool("qemu-img", "qemu-utils")],
            Format::Tar => vec![tool("tar", "tar")],
            Format::Tgz => vec![tool("tar", "tar"), tool("gzip", "gzip")],
            Format::Squashfs => vec![tool("mksquashfs", "squashfs-tools")],
        }
    }
}

/// Converts the raw disk into `format` at `out_tmp` (the caller renames it into place
/// once every output is complete). `compress` applies to qcow2 (`-u` turns it off);
/// `qemu_img_options` is `--qemu-img-options`, passed as `qemu-img convert -o`.
///
/// Compressed qcow2 uses zstd clusters: on a 758 MiB `debian vm` disk, 3.7 s instead
/// of zlib's 15.6 s for a 2% smaller file (README, "Speed"). Readers need qemu ≥ 5.1;
/// `--qemu-img-options compression_type=zlib` (or `compat=0.10`) writes what older
/// ones read.
pub fn convert(
    raw: &Path,
    format: Format,
    out_tmp: &Path,
    compress: bool,
    qemu_img_options: &str,
    reproducible: Option<(&Seed, i64)>,
) -> Result<()> {
    let (name, defaults): (&str, &[&str]) = match format {
        Format::Raw => {
            let src = File::open(raw).with_context(|| format!("cannot open {}", raw.display()))?;
            let dst = create_output(out_tmp, 0o666)?;
            return sparse::copy_file(&src, &dst).with_context(|| {
                format!("cannot copy {} to {}", raw.display(), out_tmp.display())
            });
        }
        Format::Qcow2 if compress && !qcow2_v2(qemu_img_options) => {
            ("qcow2", &["compression_type=zstd"])
        }
        Format::Qcow2 => ("qcow2", &[]),
        // force_size keeps the virtual size exact instead of rounding it to a CHS
        // geometry (clouds reject VHDs whose size is not a whole MiB).
        Format::Vhd => ("vpc", &["force_size=on"]),
        // The variant VMware's OVF tooling and vSphere imports expect.
        Format::Vmdk => ("vmdk", &["subformat=streamOptimized"]),
        Format::Tar | Format::Tgz | Format::Squashfs => {
            bail!(
                "{} is made from the image tree (tree_archive), not from the disk",
                format.as_str()
            )
        }
    };
    let options = merge_options(defaults, qemu_img_options);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O", name]);
    if compress && format == Format::Qcow2 {
        cmd.arg("-c");
    }
    if !options.is_empty() {
        cmd.arg("-o").arg(options);
    }
    cmd.arg(raw).arg(out_tmp);
    run(&mut cmd).with_context(|| format!("cannot convert the disk to {}", format.as_str()))?;
    match (format, reproducible) {
        (Format::Vhd, Some((seed, epoch))) => super::stamps::vhd(out_tmp, seed, epoch),
        (Format::Vmdk, Some((seed, _))) => super::stamps::vmdk(out_tmp, seed),
        _ => Ok(()),
    }
}

/// `compat=0.10` asks for qcow2 version 2, which has no compression type field.
fn qcow2_v2(user: &str) -> bool {
    user.split(',')
        .map(str::trim)
        .any(|o| matches!(o, "compat=0.10" | "compat=v2"))
}

/// Our defaults, minus any key the user sets: qemu-img rejects a repeated option.
fn merge_options(defaults: &[&str], user: &str) -> String {
    let user: Vec<&str> = user
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let key = |o: &str| o.split('=').next().unwrap_or("").to_string();
    let mut all: Vec<String> = defaults
        .iter()
        .filter(|d| !user.iter().any(|u| key(u) == key(d)))
        .map(|d| d.to_string())
        .collect();
    all.extend(user.iter().map(|u| u.to_string()));
    all.join(",")
}

/// Archives the tree: tar (numeric owners, all xattrs so file capabilities survive,
/// sorted by name so the archive does not depend on the filesystem's directory
/// order, which differs between tmpfs and disk), gzip'd tar, or squashfs.
///
/// `owners` (a build without subordinate ids) gives each file its recorded
/// owner: written into the tar headers afterwards (tar_owners), or handed to
/// mksquashfs as pseudo definitions. The attribute that records them is never
/// archived.
pub fn tree_archive(
    tree: &Path,
    format: Format,
    out: &Path,
    owners: Option<&Recorded>,
) -> Result<()> {
    let owners = owners.filter(|o| !o.is_empty());
    match format {
        Format::Tar | Format::Tgz => {
            let mut c = Command::new("tar");
            c.args([
                "--numeric-owner",
                "--sort=name",
                "--xattrs",
                "--xattrs-include=*",
            ])
            .arg(format!("--xattrs-exclude={}", XATTR.to_string_lossy()))
            .arg("-C")
            .arg(tree)
            // The pax headers xattrs need would otherwise carry tar's process id
            // and each file's atime and ctime: the same tree would never give the
            // same bytes.
            .arg("--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime");
            let Some(owners) = owners else {
                if format == Format::Tgz {
                    // gzip -n: no name or time in gzip's own header.
                    c.args(["--use-compress-program", "gzip -n"]);
                }
                c.arg("-cf").arg(out).arg(".");
                return run(&mut c)
                    .map(drop)
                    .with_context(|| format!("cannot write {}", out.display()));
            };
            // The headers are edited in place, so a tgz's tar is written whole first.
            let tar = match format {
                Format::Tgz => with_suffix(out, ".kiln-tar"),
                _ => out.to_path_buf(),
            };
            c.arg("-cf").arg(&tar).arg(".");
            let written = run(&mut c)
                .with_context(|| format!("cannot write {}", out.display()))
                .and_then(|_| super::tar_owners::apply(&tar, owners))
                .and_then(|_| match format {
                    Format::Tgz => gzip(&tar, out),
                    _ => Ok(()),
                });
            if format == Format::Tgz {
                let _ = std::fs::remove_file(&tar);
            }
            written
        }
        Format::Squashfs => {
            let mut c = Command::new("mksquashfs");
            c.arg(tree)
                .arg(out)
                .args(["-noappend", "-comp", "xz", "-no-progress"]);
            if mksquashfs_excludes_xattrs() {
                // From squashfs-tools 4.6; for older ones the build strips the
                // attribute from the tree (tree::owners::strip).
                c.arg("-xattrs-exclude")
                    .arg(format!("^{}$", XATTR.to_string_lossy().replace('.', "\\.")));
            }
            let pseudo = with_suffix(out, ".kiln-pseudo");
            if let Some(root) = owners.and_then(|o| o.get(Path::new(""))) {
                // A pseudo definition cannot modify the root directory.
                c.arg("-root-uid")
                    .arg(root.uid.to_string())
                    .arg("-root-gid")
                    .arg(root.gid.to_string());
            }
            if let Some(owners) = owners {
                let mut f = create_output(&pseudo, 0o600)?;
                f.write_all(squashfs_pseudo(owners)?.as_bytes())
                    .with_context(|| format!("cannot write {}", pseudo.display()))?;
                c.arg("-pf").arg(&pseudo);
            }
            let made = run(&mut c).with_context(|| format!("cannot write {}", out.display()));
            if owners.is_some() {
                let _ = std::fs::remove_file(&pseudo);
            }
            made.map(drop)
        }
        _ => bail!("{} is a disk format: use convert", format.as_str()),
    }
}

/// `gzip -n` (no name or time in gzip's own header) of `tar` into a new `out`.
fn gzip(tar: &Path, out: &Path) -> Result<()> {
    let dst = create_output(out, 0o666)?;
    let src = File::open(tar).with_context(|| format!("cannot open {}", tar.display()))?;
    let mut cmd = Command::new("gzip");
    cmd.args(["-n", "-c"]).stdin(src).stdout(dst);
    let line = super::tool::command_line(&cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} < {} failed ({status})", tar.display());
    }
    Ok(())
}

/// One mksquashfs pseudo definition per recorded file: `"PATH" m MODE UID GID`
/// ("modify": the file itself comes from the tree). The mode is the file's own.
fn squashfs_pseudo(owners: &Recorded) -> Result<String> {
    let mut text = String::new();
    for (path, f) in owners.iter() {
        let Some(p) = path.to_str() else {
            bail!(
                "the image's /{} has a recorded owner but its name is not UTF-8, which mksquashfs pseudo definitions cannot name: rename it",
                path.display()
            );
        };
        if p.contains(['\n', '"', '\\']) {
            bail!(
                "the image's {:?} has a recorded owner but its name holds a newline, a quote or a backslash, which mksquashfs pseudo definitions cannot name: rename it",
                format!("/{p}")
            );
        }
        if p.is_empty() {
            continue;
        }
        let _ = writeln!(
            text,
            "\"{p}\" m {:o} {} {}",
            f.perm, f.owner.uid, f.owner.gid
        );
    }
    Ok(text)
}

/// mksquashfs -xattrs-exclude exists (squashfs-tools 4.6 and later).
fn mksquashfs_excludes_xattrs() -> bool {
    Command::new("mksquashfs")
        .arg("-help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("-xattrs-exclude")
                || String::from_utf8_lossy(&o.stderr).contains("-xattrs-exclude")
        })
        .unwrap_or(false)
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A checksum file kiln can write beside an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    Sha256,
    Md5,
}

impl Checksum {
    /// The file name extension, which is also the value DIB_CHECKSUM names.
    pub fn extension(self) -> &'static str {
        match self {
            Checksum::Sha256 => "sha256",
            Checksum::Md5 => "md5",
        }
    }
}

/// Writes `PATH.sha256` and `PATH.md5` (new files) in `sha256sum`/`md5sum` format,
/// naming the file by its base name so `sha256sum -c` works next to it.
pub fn write_checksums(path: &Path) -> Result<()> {
    write_checksum(path, Checksum::Sha256)?;
    write_checksum(path, Checksum::Md5)
}

/// Writes `PATH.<digest>` (a new file) as `sha256sum`/`md5sum` would.
pub fn write_checksum(path: &Path, digest: Checksum) -> Result<()> {
    let base = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if digest == Checksum::Md5 {
        // md5 only for compatibility with diskimage-builder's outputs: the tool is enough.
        let out = run(Command::new("md5sum").arg("--").arg(base).current_dir(&dir))?;
        return write_beside(path, "md5", &out.stdout);
    }
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let line = format!("{hex}  {}\n", base.to_string_lossy());
    write_beside(path, "sha256", line.as_bytes())
}

fn write_beside(path: &Path, ext: &str, data: &[u8]) -> Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{ext}"));
    let target = PathBuf::from(name);
    create_output(&target, 0o666)?
        .write_all(data)
        .with_context(|| format!("cannot write {}", target.display()))
}

/// Creates an output file that did not exist, never through a link (`O_EXCL`,
/// `O_NOFOLLOW`): whatever sits at `path` was not made by this build, so it is
/// refused rather than written into.
pub fn create_output(path: &Path, mode: u32) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_their_names_only() {
        for f in Format::ALL {
            assert_eq!(Format::parse(f.as_str()).unwrap(), f);
        }
        let err = Format::parse("vpc").unwrap_err().to_string();
        assert!(
            err.contains("`vpc`") && err.contains("qcow2, raw, vhd, vmdk, tar, tgz, squashfs"),
            "{err}"
        );
        assert!(Format::Vmdk.is_disk() && !Format::Squashfs.is_disk());
    }

    #[test]
    fn qcow2_version_2_is_recognised() {
        assert!(qcow2_v2("cluster_size=2M, compat=0.10"));
        assert!(!qcow2_v2("compat=1.1"));
        assert!(!qcow2_v2(""));
    }

    #[test]
    fn user_options_replace_defaults() {
        assert_eq!(
            merge_options(&["subformat=streamOptimized"], ""),
            "subformat=streamOptimized"
        );
        assert_eq!(
            merge_options(&["subformat=streamOptimized"], "subformat=monolithicSparse"),
            "subformat=monolithicSparse"
        );
        assert_eq!(
            merge_options(&[], "compat=0.10, cluster_size=2M"),
            "compat=0.10,cluster_size=2M"
        );
    }

    #[test]
    fn checksums_in_sha256sum_format() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("image.qcow2");
        std::fs::write(&f, b"abc").unwrap();
        write_checksums(&f).unwrap();
        let sha = std::fs::read_to_string(dir.path().join("image.qcow2.sha256")).unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  image.qcow2\n"
        );
        let md5 = std::fs::read_to_string(dir.path().join("image.qcow2.md5")).unwrap();
        assert_eq!(md5, "900150983cd24fb0d6963f7d28e17f72  image.qcow2\n");
    }

    #[test]
    fn outputs_are_never_created_through_links_or_over_files() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        std::fs::write(&canary, b"canary").unwrap();
        std::os::unix::fs::symlink(&canary, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("absent"), dir.path().join("dangling")).unwrap();
        for p in ["link", "dangling", "canary"] {
            let e = create_output(&dir.path().join(p), 0o644).unwrap_err();
            assert!(format!("{e:#}").contains(p), "{e:#}");
        }
        assert_eq!(std::fs::read(&canary).unwrap(), b"canary");
        assert!(!dir.path().join("absent").exists());
        // The checksum files too: planted links beside the image stay links.
        std::fs::write(dir.path().join("image.raw"), b"abc").unwrap();
        std::os::unix::fs::symlink(&canary, dir.path().join("image.raw.sha256")).unwrap();
        assert!(write_checksums(&dir.path().join("image.raw")).is_err());
        assert_eq!(std::fs::read(&canary).unwrap(), b"canary");
    }

    fn qemu_img_info(image: &Path) -> serde_json::Value {
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(image)
            .output()
            .unwrap();
        serde_json::from_slice(&info.stdout).unwrap()
    }

    #[test]
    fn raw_copy_and_qcow2_convert() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"kiln", 4 << 20).unwrap();
        let out = dir.path().join("copy.raw");
        convert(&raw, Format::Raw, &out, true, "", None).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&raw).unwrap());
        if !crate::test_tools::have("qemu-img") {
            return;
        }
        let q = dir.path().join("disk.qcow2");
        let qinfo = |options: &str, compress: bool| {
            let _ = std::fs::remove_file(&q);
            convert(&raw, Format::Qcow2, &q, compress, options, None).unwrap();
            let v = qemu_img_info(&q);
            assert_eq!(v["format"], "qcow2");
            assert_eq!(v["virtual-size"], 8 << 20);
            v["format-specific"]["data"].clone()
        };
        // zstd clusters by default; the user's options can ask for zlib or for v2.
        assert_eq!(qinfo("compat=1.1", true)["compression-type"], "zstd");
        assert_eq!(qinfo("", true)["compression-type"], "zstd");
        assert_eq!(
            qinfo("compression_type=zlib", true)["compression-type"],
            "zlib"
        );
        assert_eq!(qinfo("compat=0.10", true)["compat"], "0.10");
        // Uncompressed: no zstd header bit that old readers would refuse for nothing.
        assert_eq!(qinfo("", false)["compression-type"], "zlib");
        assert!(convert(&raw, Format::Tar, &q, true, "", None).is_err());

        for (format, name) in [(Format::Vhd, "vpc"), (Format::Vmdk, "vmdk")] {
            let out = dir.path().join(format!("disk.{}", format.as_str()));
            convert(&raw, format, &out, true, "", None).unwrap();
            let v = qemu_img_info(&out);
            assert_eq!(v["format"], name);
            // force_size keeps the VHD's virtual size exact.
            assert_eq!(v["virtual-size"], 8 << 20, "{format:?}");
        }
    }

    #[test]
    fn tree_archives_keep_numeric_owners() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), b"kiln\n").unwrap();
        let tar = dir.path().join("t.tar");
        tree_archive(&tree, Format::Tar, &tar, None).unwrap();
        let list = Command::new("tar")
            .args(["-tvf"])
            .arg(&tar)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&list.stdout).contains("./etc/hostname"));
        let tgz = dir.path().join("t.tgz");
        tree_archive(&tree, Format::Tgz, &tgz, None).unwrap();
        assert_eq!(&std::fs::read(&tgz).unwrap()[..2], &[0x1f, 0x8b]);
        if which::which("mksquashfs").is_ok() {
            let sq = dir.path().join("t.squashfs");
            tree_archive(&tree, Format::Squashfs, &sq, None).unwrap();
            assert_eq!(&std::fs::read(&sq).unwrap()[..4], b"hsqs");
        }
        assert!(tree_archive(&tree, Format::Qcow2, &tar, None).is_err());
    }
}
