//! A `newc` ("070701") cpio writer: the only format the kernel unpacks as an
//! initramfs. Deterministic by construction — entries sorted by path bytes,
//! inode numbers assigned in that order, directory link counts computed from
//! the archive itself, mtimes clamped to `SOURCE_DATE_EPOCH` — so the same tree
//! gives the same bytes on any filesystem and machine.
//!
//! Hard links follow GNU cpio's convention, which both `cpio -i` and the kernel
//! understand: every name of the file carries the same inode number and the
//! number of names *in the archive* as its link count; only the last name (in
//! archive order) carries the data, the earlier ones have size 0.
//!
//! Synthetic entries ([`Extra`]) add what an unprivileged build cannot create
//! in the tree, chiefly `/dev/console`: the kernel opens it for PID 1's stdio
//! before `/init` can mount devtmpfs.

use crate::tree::owners::Recorded;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"070701";
const TRAILER: &[u8] = b"TRAILER!!!";
const S_IFMT: u32 = libc::S_IFMT;
const S_IFDIR: u32 = libc::S_IFDIR;
const S_IFREG: u32 = libc::S_IFREG;
const S_IFLNK: u32 = libc::S_IFLNK;
const S_IFCHR: u32 = libc::S_IFCHR;
const S_IFBLK: u32 = libc::S_IFBLK;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Later modification times are written as this one (reproducible builds).
    pub source_date_epoch: Option<u64>,
    /// Owners recorded for the tree's files, by path relative to the archive's
    /// root; the others keep the owner the file has.
    pub owners: Option<Recorded>,
}

/// An entry that is not in the tree. A path present in the tree keeps the tree's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    /// Relative to the archive root, without a leading `/` or `./`.
    pub path: String,
    pub kind: ExtraKind,
    /// Permission bits only.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraKind {
    Dir,
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub entries: usize,
    pub bytes: u64,
}

/// Where an entry's contents come from.
enum Source {
    Tree { path: PathBuf, meta: Metadata },
    Extra(Extra),
}

struct Entry {
    name: Vec<u8>,
    source: Source,
}

impl Entry {
    fn mode(&self) -> u32 {
        match &self.source {
            Source::Tree { meta, .. } => meta.mode(),
            Source::Extra(x) => {
                let kind = match x.kind {
                    ExtraKind::Dir => S_IFDIR,
                    ExtraKind::CharDev { .. } => S_IFCHR,
                    ExtraKind::BlockDev { .. } => S_IFBLK,
                };
                kind | (x.perm & 0o7777)
            }
        }
    }

    fn is_dir(&self) -> bool {
        self.mode() & S_IFMT == S_IFDIR
    }
}

/// Writes `root`'s contents (not `root` itself) and `extras` as one archive.
pub fn write_tree<W: Write>(
    root: &Path,
    extras: &[Extra],
    opts: &Options,
    out: W,
) -> Result<Summary> {
    let mut entries = Vec::new();
    walk(root, &mut Vec::new(), &mut entries)?;
    let mut seen: std::collections::HashSet<Vec<u8>> =
        entries.iter().map(|e| e.name.clone()).collect();
    for x in extras {
        let name = x
            .path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .as_bytes()
            .to_vec();
        if name.is_empty()
            || name
                .split(|b| *b == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            bail!(
                "synthetic cpio entry {:?}: not a clean relative path",
                x.path
            );
        }
        if seen.insert(name.clone()) {
            entries.push(Entry {
                name,
                source: Source::Extra(x.clone()),
            });
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    write_entries(&entries, opts, out)
}

/// Collects every entry below `dir`; `rel` is `dir`'s name in the archive.
fn walk(dir: &Path, rel: &mut Vec<u8>, out: &mut Vec<Entry>) -> Result<()> {
    let rd =
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    for e in rd {
        let e = e.with_context(|| format!("reading directory {}", dir.display()))?;
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("lstat {}", path.display()))?;
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(e.file_name().as_bytes());
        let name = rel.clone();
        let is_dir = meta.is_dir();
        out.push(Entry {
            name,
            source: Source::Tree {
                path: path.clone(),
                meta,
            },
        });
        if is_dir {
            walk(&path, rel, out)?;
        }
        rel.truncate(len);
    }
    Ok(())
}

/// Per-entry facts that depend on the whole archive.
struct Layout {
    ino: Vec<u32>,
    nlink: Vec<u32>,
    /// Whether this entry writes the file's data (false for earlier hard-link names).
    carries_data: Vec<bool>,
}

fn layout(entries: &[Entry]) -> Result<Layout> {
    let n = entries.len();
    let mut ino = vec![0u32; n];
    let mut nlink = vec![1u32; n];
    let mut carries_data = vec![true; n];
    // Hard-link groups: regular files sharing (st_dev, st_ino), in archive order.
    let mut groups: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Source::Tree { meta, .. } = &e.source {
            if meta.is_file() && meta.nlink() > 1 {
                groups.entry((meta.dev(), meta.ino())).or_default().push(i);
            }
        }
    }
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    for members in groups.values() {
        if let Some(&first) = members.first() {
            for &m in members {
                group_of.insert(m, first);
            }
        }
    }
    let mut next: u32 = 1;
    for i in 0..n {
        match group_of.get(&i) {
            Some(&first) if first != i => ino[i] = ino[first],
            _ => {
                ino[i] = next;
                next = next.checked_add(1).context("too many cpio entries")?;
            }
        }
    }
    for members in groups.values() {
        let count = u32::try_from(members.len()).context("too many hard links")?;
        for (k, &m) in members.iter().enumerate() {
            nlink[m] = count;
            carries_data[m] = k + 1 == members.len();
        }
    }
    // Directories: 2 plus one per subdirectory, as a filesystem would count them.
    let index: BTreeMap<&[u8], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_slice(), i))
        .collect();
    for (i, e) in entries.iter().enumerate() {
        if e.is_dir() {
            nlink[i] = nlink[i].max(2);
            if let Some(slash) = e.name.iter().rposition(|b| *b == b'/') {
                if let Some(&p) = index.get(&e.name[..slash]) {
                    nlink[p] = nlink[p].max(2) + 1;
                }
            }
        }
    }
    Ok(Layout {
        ino,
        nlink,
        carries_data,
    })
}

/// Counts bytes so padding can be computed without seeking.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Counting<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rmajor: u32,
    rminor: u32,
}

fn put_header<W: Write>(w: &mut Counting<W>, h: &Header, name: &[u8]) -> io::Result<()> {
    let namesize = name.len() as u32 + 1;
    // dev major/minor 0 for all: inode numbers are unique across the whole archive.
    let fields = [
        h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size, 0, 0, h.rmajor, h.rminor, namesize,
        0,
    ];
    let mut buf = Vec::with_capacity(110 + name.len() + 4);
    buf.extend_from_slice(MAGIC);
    for f in fields {
        buf.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    buf.extend_from_slice(name);
    buf.push(0);
    w.put(&buf)?;
    w.pad4()
}

fn clamp_mtime(mtime: i64, epoch: Option<u64>) -> u32 {
    let t = u64::try_from(mtime).unwrap_or(0);
    let t = match epoch {
        Some(e) => t.min(e),
        None => t,
    };
    u32::try_from(t).unwrap_or(u32::MAX)
}

fn write_entries<W: Write>(entries: &[Entry], opts: &Options, out: W) -> Result<Summary> {
    let lay = layout(entries)?;
    let mut w = Counting {
        inner: out,
        written: 0,
    };
    let extra_mtime = clamp_mtime(0, opts.source_date_epoch);
    for (i, e) in entries.iter().enumerate() {
        let shown = String::from_utf8_lossy(&e.name);
        let mut h = Header {
            ino: lay.ino[i],
            mode: e.mode(),
            uid: 0,
            gid: 0,
            nlink: lay.nlink[i],
            mtime: extra_mtime,
            size: 0,
            rmajor: 0,
            rminor: 0,
        };
        match &e.source {
            Source::Extra(x) => {
                h.uid = x.uid;
                h.gid = x.gid;
                if let ExtraKind::CharDev { major, minor } | ExtraKind::BlockDev { major, minor } =
                    x.kind
                {
                    h.rmajor = major;
                    h.rminor = minor;
                }
                put_header(&mut w, &h, &e.name)?;
            }
            Source::Tree { path, meta } => {
                let recorded = opts
                    .owners
                    .as_ref()
                    .and_then(|o| o.get(Path::new(std::ffi::OsStr::from_bytes(&e.name))));
                (h.uid, h.gid) = match recorded {
                    Some(o) => (o.uid, o.gid),
                    None => (meta.uid(), meta.gid()),
                };
                h.mtime = clamp_mtime(meta.mtime(), opts.source_date_epoch);
                let kind = meta.mode() & S_IFMT;
                if kind == S_IFCHR || kind == S_IFBLK {
                    h.rmajor = u32::try_from(nix::sys::stat::major(meta.rdev()))
                        .with_context(|| format!("{shown}: device number too large"))?;
                    h.rminor = u32::try_from(nix::sys::stat::minor(meta.rdev()))
                        .with_context(|| format!("{shown}: device number too large"))?;
                }
                if kind == S_IFLNK {
                    let target = std::fs::read_link(path)
                        .with_context(|| format!("readlink {}", path.display()))?;
                    let t = target.as_os_str().as_bytes();
                    h.size = u32::try_from(t.len()).context("symlink target too long")?;
                    put_header(&mut w, &h, &e.name)?;
                    w.put(t)?;
                    w.pad4()?;
                } else if kind == S_IFREG && lay.carries_data[i] {
                    h.size = u32::try_from(meta.len()).with_context(|| {
                        format!("{shown}: newc cpio cannot hold files of 4 GiB or more")
                    })?;
                    put_header(&mut w, &h, &e.name)?;
                    copy_exact(path, meta.len(), &mut w)?;
                    w.pad4()?;
                } else {
                    put_header(&mut w, &h, &e.name)?;
                }
            }
        }
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
        rmajor: 0,
        rminor: 0,
    };
    put_header(&mut w, &trailer, TRAILER)?;
    w.inner.flush()?;
    Ok(Summary {
        entries: entries.len(),
        bytes: w.written,
    })
}

/// Copies exactly `len` bytes: a file that changes size while being archived
/// would otherwise corrupt every entry after it.
fn copy_exact<W: Write>(path: &Path, len: u64, w: &mut Counting<W>) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = f.take(len);
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        w.put(&buf[..n])?;
        done += n as u64;
    }
    if done != len {
        bail!(
            "{} shrank while it was archived ({done} of {len} bytes)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::{Command, Stdio};
    use tempfile::TempDir;

    fn sample() -> TempDir {
        let t = TempDir::new().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("a-b")).unwrap();
        std::fs::create_dir_all(r.join("a/deep/er")).unwrap();
        std::fs::write(r.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(r.join("bin/tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(r.join("a/deep/er/odd"), b"12345").unwrap();
        std::fs::write(r.join("empty"), b"").unwrap();
        std::fs::write(r.join("linked"), b"same data").unwrap();
        std::fs::hard_link(r.join("linked"), r.join("a/linked2")).unwrap();
        symlink("bin/tool", r.join("sym")).unwrap();
        symlink("/nowhere/at/all", r.join("a-b/dangling")).unwrap();
        t
    }

    fn archive(root: &Path, extras: &[Extra], epoch: Option<u64>) -> Vec<u8> {
        let mut v = Vec::new();
        let s = write_tree(
            root,
            extras,
            &Options {
                source_date_epoch: epoch,
                owners: None,
            },
            &mut v,
        )
        .unwrap();
        assert_eq!(s.bytes, v.len() as u64);
        v
    }

    fn cpio(args: &[&str], input: &[u8], dir: &Path) -> String {
        let mut c = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio is installed");
        c.stdin.take().unwrap().write_all(input).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "cpio {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// (name, mtime) of every entry, read straight from the headers.
    fn headers(bytes: &[u8]) -> Vec<(String, u32)> {
        let mut names = Vec::new();
        let mut at = 0usize;
        while at + 110 <= bytes.len() {
            assert_eq!(&bytes[at..at + 6], MAGIC);
            let field = |k: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&bytes[at + 6 + 8 * k..at + 14 + 8 * k]).unwrap(),
                    16,
                )
                .unwrap() as usize
            };
            let (mtime, size, namesize) = (field(5), field(6), field(11));
            let name =
                String::from_utf8(bytes[at + 110..at + 110 + namesize - 1].to_vec()).unwrap();
            at = (at + 110 + namesize + 3) & !3;
            at = (at + size + 3) & !3;
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len());
                break;
            }
            names.push((name, mtime as u32));
        }
        names
    }

    fn names_in_order(bytes: &[u8]) -> Vec<String> {
        headers(bytes).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn gnu_cpio_extracts_the_same_tree() {
        let src = sample();
        let bytes = archive(src.path(), &[], None);
        assert_eq!(bytes.len() % 4, 0);
        let out = TempDir::new().unwrap();
        cpio(&["-idm", "--quiet"], &bytes, out.path());
        let o = out.path();
        assert_eq!(
            std::fs::read(o.join("bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::metadata(o.join("bin/tool")).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(std::fs::read(o.join("a/deep/er/odd")).unwrap(), b"12345");
        assert_eq!(std::fs::read(o.join("empty")).unwrap(), b"");
        assert_eq!(
            std::fs::read_link(o.join("sym")).unwrap(),
            Path::new("bin/tool")
        );
        assert_eq!(
            std::fs::read_link(o.join("a-b/dangling")).unwrap(),
            Path::new("/nowhere/at/all")
        );
        // Both names, one inode, the data intact.
        let (m1, m2) = (
            std::fs::metadata(o.join("linked")).unwrap(),
            std::fs::metadata(o.join("a/linked2")).unwrap(),
        );
        assert_eq!(std::fs::read(o.join("linked")).unwrap(), b"same data");
        assert_eq!(m1.ino(), m2.ino());
        assert_eq!(m1.nlink(), 2);
        // -m keeps the archive's mtimes.
        let want = std::fs::metadata(src.path().join("a/deep/er/odd"))
            .unwrap()
            .mtime();
        assert_eq!(
            std::fs::metadata(o.join("a/deep/er/odd")).unwrap().mtime(),
            want
        );
    }

    #[test]
    fn listing_shows_every_entry_sorted_by_bytes() {
        let src = sample();
        let bytes = archive(src.path(), &[], None);
        let names = names_in_order(&bytes);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(
            names,
            [
                "a",
                "a-b",
                "a-b/dangling",
                "a/deep",
                "a/deep/er",
                "a/deep/er/odd",
                "a/linked2",
                "bin",
                "bin/tool",
                "empty",
                "linked",
                "sym"
            ]
        );
        let listing = cpio(&["-it", "--quiet"], &bytes, src.path());
        let listed: Vec<&str> = listing.lines().collect();
        assert_eq!(listed, names);
        let verbose = cpio(&["-itv", "--quiet"], &bytes, src.path());
        assert!(
            verbose
                .lines()
                .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("sym -> bin/tool")),
            "{verbose}"
        );
    }

    #[test]
    fn recorded_owners_replace_the_files_own() {
        use crate::tree::owners::{Owner, RecordedFile};
        let src = sample();
        let file = |uid, gid| RecordedFile {
            owner: Owner { uid, gid },
            perm: 0o755,
        };
        let owners = Recorded::from_files([
            (PathBuf::from("bin/tool"), file(0, 42)),
            (PathBuf::from("a/deep"), file(100, 101)),
            (PathBuf::from("linked"), file(7, 8)),
            (PathBuf::from("a/linked2"), file(7, 8)),
        ]);
        let mut bytes = Vec::new();
        write_tree(
            src.path(),
            &[],
            &Options {
                source_date_epoch: Some(1_000_000),
                owners: Some(owners),
            },
            &mut bytes,
        )
        .unwrap();
        let listing = cpio(
            &["-itv", "--numeric-uid-gid", "--quiet"],
            &bytes,
            src.path(),
        );
        let ids = |name: &str| {
            let l = listing
                .lines()
                .find(|l| l.ends_with(&format!(" {name}")))
                .unwrap_or_else(|| panic!("{name} not in\n{listing}"));
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{}:{}", f[2], f[3])
        };
        assert_eq!(ids("bin/tool"), "0:42", "{listing}");
        assert_eq!(ids("a/deep"), "100:101", "{listing}");
        assert_eq!(ids("linked"), "7:8", "{listing}");
        assert_eq!(ids("a/linked2"), "7:8", "{listing}");
        let me = format!(
            "{}:{}",
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw()
        );
        assert_eq!(ids("empty"), me, "{listing}");
    }

    #[test]
    fn hard_links_carry_data_once_on_the_last_name() {
        let src = sample();
        let bytes = archive(src.path(), &[], None);
        let count = bytes.windows(9).filter(|w| *w == b"same data").count();
        assert_eq!(count, 1);
    }

    #[test]
    fn same_tree_gives_identical_bytes() {
        let src = sample();
        let a = archive(src.path(), &[], Some(1_000_000));
        let b = archive(src.path(), &[], Some(1_000_000));
        assert_eq!(a, b);
        // A copy with other inode numbers and creation order gives the same bytes too.
        let copy = TempDir::new().unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.path().display()))
            .arg(copy.path())
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(archive(copy.path(), &[], Some(1_000_000)), a);
    }

    #[test]
    fn mtimes_are_clamped_to_source_date_epoch() {
        let src = sample();
        let epoch = 86_400 * 365;
        let bytes = archive(src.path(), &[], Some(epoch));
        let all = headers(&bytes);
        assert!(all.iter().all(|(_, t)| *t as u64 == epoch), "{all:?}");
        let out = TempDir::new().unwrap();
        cpio(&["-idm", "--quiet"], &bytes, out.path());
        for p in ["bin/tool", "a/deep/er/odd", "linked"] {
            assert_eq!(
                std::fs::metadata(out.path().join(p)).unwrap().mtime(),
                epoch as i64,
                "{p}"
            );
        }
        // An older file keeps its own time.
        let old = TempDir::new().unwrap();
        std::fs::write(old.path().join("f"), b"x").unwrap();
        let st = Command::new("touch")
            .args(["-d", "@1000"])
            .arg(old.path().join("f"))
            .status()
            .unwrap();
        assert!(st.success());
        let bytes = archive(old.path(), &[], Some(epoch));
        let out = TempDir::new().unwrap();
        cpio(&["-idm", "--quiet"], &bytes, out.path());
        assert_eq!(
            std::fs::metadata(out.path().join("f")).unwrap().mtime(),
            1000
        );
    }

    #[test]
    fn synthetic_device_nodes_are_listed_with_their_numbers() {
        let src = sample();
        let extras = [
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
            // Already in the tree: the tree's entry wins.
            Extra {
                path: "bin".into(),
                kind: ExtraKind::Dir,
                perm: 0o700,
                uid: 0,
                gid: 0,
            },
        ];
        let bytes = archive(src.path(), &extras, Some(5));
        let verbose = cpio(&["-itv", "--quiet"], &bytes, src.path());
        let console = verbose
            .lines()
            .find(|l| l.ends_with("dev/console"))
            .unwrap_or_else(|| panic!("{verbose}"));
        assert!(console.starts_with("crw-------"), "{console}");
        assert!(
            console.contains("5,") && console.contains(" 1 "),
            "{console}"
        );
        let bin = verbose.lines().find(|l| l.ends_with(" bin")).unwrap();
        assert!(bin.starts_with("drwx"), "{bin}");
        assert!(!bin.starts_with("drwx------"), "{bin}");
        let bad = Extra {
            path: "../x".into(),
            kind: ExtraKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
        };
        assert!(write_tree(src.path(), &[bad], &Options::default(), &mut Vec::new()).is_err());
    }

    #[test]
    fn device_nodes_in_the_tree_keep_their_numbers() {
        let src = TempDir::new().unwrap();
        let node = src.path().join("null");
        let made = nix::sys::stat::mknod(
            &node,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        );
        if made.is_err() {
            eprintln!("skipped: mknod needs privilege here");
            return;
        }
        let bytes = archive(src.path(), &[], None);
        let out = TempDir::new().unwrap();
        cpio(&["-idm", "--quiet"], &bytes, out.path());
        let m = std::fs::symlink_metadata(out.path().join("null")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &m.file_type()
        ));
        assert_eq!(
            (
                nix::sys::stat::major(m.rdev()),
                nix::sys::stat::minor(m.rdev())
            ),
            (1, 3)
        );
    }

    #[test]
    fn directory_link_counts_follow_the_archive() {
        let src = sample();
        let bytes = archive(src.path(), &[], None);
        let verbose = cpio(&["-itv", "--quiet"], &bytes, src.path());
        // `a` holds `deep`: 3 links; `a/deep/er` holds none: 2.
        let line = |n: &str| {
            verbose
                .lines()
                .find(|l| l.ends_with(&format!(" {n}")))
                .unwrap()
                .to_string()
        };
        assert!(
            line("a").split_whitespace().nth(1) == Some("3"),
            "{}",
            line("a")
        );
        assert!(
            line("a/deep/er").split_whitespace().nth(1) == Some("2"),
            "{}",
            line("a/deep/er")
        );
    }
}
