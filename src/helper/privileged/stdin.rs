//! What the caller put on standard input and output. A descriptor shows what
//! the caller could open; a path would only show what root can open, so no path
//! is ever taken.

use crate::helper::protocol::is_loop_name;
use anyhow::{bail, Context, Result};
use nix::sys::stat::{fstat, major, minor, FileStat, SFlag};
use std::os::fd::{AsRawFd, BorrowedFd};

// SAFETY: Start::capture made sure 0-2 are open; nothing closes them.
pub const STDIN: BorrowedFd<'static> = unsafe { BorrowedFd::borrow_raw(0) };
pub const STDOUT: BorrowedFd<'static> = unsafe { BorrowedFd::borrow_raw(1) };

const LOOP_MAJOR: u64 = 7;

/// Standard output, if it is something a reply with descriptors can go to.
pub fn reply_socket() -> Result<BorrowedFd<'static>> {
    let st = fstat(STDOUT.as_raw_fd()).context("cannot inspect standard output")?;
    if kind(&st) != SFlag::S_IFSOCK {
        bail!("standard output is not a socket ({}): kiln-helper replies with descriptors over a Unix socket", describe(&st));
    }
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_DOMAIN fills one int.
    let r = unsafe {
        libc::getsockopt(
            1,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || domain != libc::AF_UNIX {
        bail!("standard output is not a Unix socket: descriptors can only travel over one");
    }
    Ok(STDOUT)
}

/// The image for `attach`: a regular file the caller owns, with one name, open
/// for reading and writing, on a filesystem that stores data (a loop device's
/// I/O runs in kernel threads: backed by a proc or sysfs file, its writes would
/// not be checked against the caller).
pub fn image(caller: u32) -> Result<BorrowedFd<'static>> {
    let st = fstat(STDIN.as_raw_fd()).context("cannot inspect standard input")?;
    if kind(&st) != SFlag::S_IFREG {
        bail!(
            "standard input is {}, not an image file: attach takes a regular file",
            describe(&st)
        );
    }
    let flags = nix::fcntl::fcntl(STDIN.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .context("cannot inspect standard input")?;
    if flags & libc::O_PATH != 0 {
        bail!(
            "the image on standard input was opened with O_PATH: open it for reading and writing"
        );
    }
    if flags & libc::O_ACCMODE != libc::O_RDWR {
        bail!("the image on standard input is opened read-only (or write-only): open it for reading and writing");
    }
    if flags & libc::O_APPEND != 0 {
        bail!("the image on standard input is opened with O_APPEND: a disk is written in place");
    }
    let fs = nix::sys::statfs::fstatfs(STDIN).context("cannot inspect the image's filesystem")?;
    let magic = fs.filesystem_type().0 as u64;
    if !DATA_FILESYSTEMS.iter().any(|&(m, _)| m == magic) {
        let known: Vec<&str> = DATA_FILESYSTEMS.iter().map(|&(_, n)| n).collect();
        bail!(
            "the image on standard input is on {}; kiln-helper attaches files on {} only",
            fs_name(magic),
            known.join(", ")
        );
    }
    if st.st_uid != caller {
        bail!("the image on standard input is owned by uid {}, not by you (uid {caller}): only your own files are attached", st.st_uid);
    }
    match st.st_nlink {
        1 => Ok(STDIN),
        0 => bail!("the image on standard input has no name (it was deleted): attach a file that has exactly one"),
        n => bail!("the image on standard input has {n} hard links: an image must have exactly one name"),
    }
}

/// A loop device on standard input (for rescan and detach), by its kernel name.
pub struct LoopRef {
    pub name: String,
    pub fd: BorrowedFd<'static>,
}

pub fn loop_device() -> Result<LoopRef> {
    let st = fstat(STDIN.as_raw_fd()).context("cannot inspect standard input")?;
    if kind(&st) != SFlag::S_IFBLK || major(st.st_rdev) != LOOP_MAJOR {
        bail!("standard input is {}, not a loop device", describe(&st));
    }
    let (maj, min) = (major(st.st_rdev), minor(st.st_rdev));
    let link = std::fs::read_link(format!("/sys/dev/block/{maj}:{min}"))
        .with_context(|| format!("block device {maj}:{min} is not in /sys"))?;
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !is_loop_name(&name) {
        bail!("standard input is {name:?}, not a whole loop device");
    }
    Ok(LoopRef { name, fd: STDIN })
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn describe(st: &FileStat) -> &'static str {
    match kind(st) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link (opened with O_PATH|O_NOFOLLOW)",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        _ => "of an unknown file type",
    }
}

/// statfs(2) magic numbers of filesystems that keep a file's bytes as data.
const DATA_FILESYSTEMS: &[(u64, &str)] = &[
    (0xef53, "ext2/3/4"),
    (0x5846_5342, "xfs"),
    (0x9123_683e, "btrfs"),
    (0xf2f5_2010, "f2fs"),
    (0xca45_1a4e, "bcachefs"),
    (0x2fc1_2fc1, "zfs"),
    (0x0102_1994, "tmpfs"),
    (0x794c_7630, "overlayfs"),
];

fn fs_name(magic: u64) -> String {
    let name = match magic {
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x6462_6720 => "debugfs",
        0x7472_6163 => "tracefs",
        0x7363_6673 => "securityfs",
        0x6367_7270 | 0x0027_e0eb => "cgroup",
        0xcafe_4a11 => "bpf",
        0x6573_5546 => "fuse",
        0x6969 => "nfs",
        _ => return format!("a filesystem of type {magic:#x}"),
    };
    name.to_string()
}
