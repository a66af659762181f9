//! Loop devices: binding an image to a free one, and the few ioctls on it.

use super::hardening::Privileged;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{fstat, major, minor, SFlag};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// struct loop_info64 (linux/loop.h).
#[repr(C)]
pub struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// struct loop_config (linux/loop.h).
#[repr(C)]
pub struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_PARTSCAN: u32 = 8;

nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);
nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_read_bad!(
    blk_getsize64,
    nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()),
    u64
);
nix::ioctl_read!(blk_getdiskseq, 0x12, 128, u64);
nix::ioctl_none!(blk_flsbuf, 0x12, 97);

/// Tries at a free device before giving up: each EBUSY is someone else (losetup,
/// another helper) binding the device /dev/loop-control just offered.
const ATTEMPTS: u32 = 20;
/// How long a lock may be waited for: a stopped helper must not stop everyone.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// devtmpfs creates nodes asynchronously after the kernel adds a device.
const NODE_WAIT: Duration = Duration::from_secs(5);

/// A loop device bound to the image, with autoclear: closing the last
/// descriptor of it (or of its partitions) detaches it.
pub struct Bound {
    pub name: String,
    pub dev: File,
}

/// Binds `image` to a free loop device. /dev/loop-control is locked from asking
/// for a free device until it is bound, so two helpers are not offered the same.
pub fn bind(image: BorrowedFd) -> Result<Bound> {
    let control = open_rw("/dev/loop-control").context("opening /dev/loop-control")?;
    let st = fstat(control.as_raw_fd()).context("inspecting /dev/loop-control")?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFCHR.bits()
        || (major(st.st_rdev), minor(st.st_rdev)) != (10, 237)
    {
        bail!("/dev/loop-control is not the loop control device");
    }
    lock(control.as_fd(), "/dev/loop-control")?;
    for attempt in 0..ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(|e| anyhow::anyhow!("no free loop device: {}", e.desc()))?;
        let name = format!("loop{n}");
        let dev = open_node(&name)?;
        // SAFETY: all-zero is a valid loop_config.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = image.as_raw_fd() as u32;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: config outlives the call; the kernel only reads it.
        match unsafe { loop_configure(dev.as_raw_fd(), &config) } {
            Ok(_) => return Ok(Bound { name, dev }),
            Err(Errno::EBUSY) => std::thread::sleep(Duration::from_millis(2 << attempt.min(6))),
            Err(e) => bail!("binding the image to /dev/{name}: {}", e.desc()),
        }
    }
    bail!("every free loop device was taken by another program before it could be bound ({ATTEMPTS} tries)");
}

/// Switched on after binding (docs/architecture.md §6), so that the scan sees the finished
/// device. Kernels with partition parsers add what they find now; without the
/// flag, partitions added by hand would outlive the binding.
pub fn enable_partscan(dev: BorrowedFd) -> Result<()> {
    // SAFETY: all-zero is a valid loop_info64; the kernel fills it.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: info is large enough for LOOP_GET_STATUS64.
    unsafe { loop_get_status64(dev.as_raw_fd(), &mut info) }
        .map_err(|e| anyhow::anyhow!("reading the loop device's status: {}", e.desc()))?;
    info.lo_flags |= LO_FLAGS_PARTSCAN;
    // SAFETY: the kernel only reads info.
    unsafe { loop_set_status64(dev.as_raw_fd(), &info) }
        .map_err(|e| anyhow::anyhow!("enabling the partition scan: {}", e.desc()))?;
    Ok(())
}

/// Detaches now, or, while anything else holds the device open, when the last
/// holder closes it. A device already detached is not an error.
pub fn clear(dev: BorrowedFd) -> Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    match unsafe { loop_clr_fd(dev.as_raw_fd()) } {
        Ok(_) | Err(Errno::ENXIO) => Ok(()),
        Err(e) => bail!("detaching the loop device: {}", e.desc()),
    }
}

/// The kernel's number for this binding of the device: it changes at every
/// LOOP_CONFIGURE, so a reused device number is never taken for an old binding.
pub fn diskseq(dev: BorrowedFd) -> Result<u64> {
    let mut seq = 0u64;
    // SAFETY: BLKGETDISKSEQ writes one u64.
    unsafe { blk_getdiskseq(dev.as_raw_fd(), &mut seq) }
        .map_err(|e| anyhow::anyhow!("reading the device's disk sequence number: {}", e.desc()))?;
    Ok(seq)
}

pub fn size(dev: BorrowedFd) -> Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64.
    unsafe { blk_getsize64(dev.as_raw_fd(), &mut size) }
        .map_err(|e| anyhow::anyhow!("reading the device's size: {}", e.desc()))?;
    Ok(size)
}

/// Drops the device's cached blocks, so that a table just written to the
/// backing file (not through the device) is what is read next.
pub fn flush(_: &Privileged, dev: BorrowedFd) -> Result<()> {
    // SAFETY: BLKFLSBUF takes no argument.
    unsafe { blk_flsbuf(dev.as_raw_fd()) }
        .map_err(|e| anyhow::anyhow!("flushing the device's cache: {}", e.desc()))?;
    Ok(())
}

/// The device's LO_FLAGS_*; ENXIO when nothing is bound to it.
pub fn flags(dev: BorrowedFd) -> nix::Result<u32> {
    // SAFETY: all-zero is a valid loop_info64; the kernel fills it.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: info is large enough for LOOP_GET_STATUS64.
    unsafe { loop_get_status64(dev.as_raw_fd(), &mut info) }?;
    Ok(info.lo_flags)
}

pub fn autoclear(flags: u32) -> bool {
    flags & LO_FLAGS_AUTOCLEAR != 0
}

/// Opens /dev/NAME once devtmpfs has made it, and only if it is the device the
/// kernel calls NAME now (a node of an earlier device by that name may linger).
pub fn open_node(name: &str) -> Result<File> {
    open_node_as(name, true)
}

/// Read-only, for ioctls that need no more: closing it then is no write,
/// which udev would answer with a probe of the device.
pub fn open_node_to_inspect(name: &str) -> Result<File> {
    open_node_as(name, false)
}

fn open_node_as(name: &str, write: bool) -> Result<File> {
    let path = format!("/dev/{name}");
    let deadline = Instant::now() + NODE_WAIT;
    loop {
        let want = sysfs_dev(name)?;
        let opened = if write {
            open_rw(&path)
        } else {
            File::options()
                .read(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
        };
        match opened {
            Ok(f) => {
                let st = fstat(f.as_raw_fd()).with_context(|| format!("inspecting {path}"))?;
                if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFBLK.bits()
                    && (major(st.st_rdev), minor(st.st_rdev)) == want
                {
                    return Ok(f);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("opening {path}: {e}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "{path} did not appear as device {}:{} within {} s (is devtmpfs mounted on /dev?)",
                want.0,
                want.1,
                NODE_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sysfs_dev(name: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
        .with_context(|| format!("the kernel does not list {name}"))?;
    let parsed = text
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    parsed.with_context(|| format!("/sys/class/block/{name}/dev is not MAJOR:MINOR: {text:?}"))
}

fn open_rw(path: &str) -> std::io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// An exclusive flock on `fd`, waited for at most LOCK_WAIT; held until every
/// descriptor of that open file is closed.
pub fn lock(fd: BorrowedFd, what: &str) -> Result<()> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we hold.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EWOULDBLOCK if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Errno::EWOULDBLOCK => bail!(
                "{what} stayed locked by another program for {} s",
                LOCK_WAIT.as_secs()
            ),
            Errno::EINTR => {}
            e => bail!("locking {what}: {}", e.desc()),
        }
    }
}
