//! The image as a byte-addressable disk. Raw files are read in place and qcow2 through
//! its cluster tables, so only the bytes the filesystem walk asks for are touched.

use super::qcow2::Qcow2;
use anyhow::{bail, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// An image: its guest-visible bytes (size, read_at) and what format holds them.
pub trait Disk: crate::partition::Disk {
    fn format(&self) -> &'static str;
}

/// An io::Error as words: "(os error 13)" tells a user nothing.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

pub fn open(path: &Path) -> Result<Box<dyn Disk>> {
    let shown = path.display();
    let (file, meta) = open_input(path)?;
    let size = if meta.file_type().is_file() {
        meta.len()
    } else {
        device_size(&file, path)?
    };
    let mut head = [0u8; 512];
    let n = read_prefix(&file, &mut head)
        .map_err(|e| anyhow::anyhow!("cannot read image {shown}: {}", io_reason(&e)))?;
    let head = &head[..n];
    if head.starts_with(b"QFI\xfb") {
        return Ok(Box::new(Qcow2::open(file, size)?));
    }
    if head.get(257..262) == Some(b"ustar") {
        bail!("{shown} is a tar archive, not a disk image: its kernel is in ./boot, for tar to extract");
    }
    if let Some(name) = foreign_format(head) {
        bail!(
            "{shown} is a {name} image, which disk-image-get-kernel cannot read (only raw and qcow2); \
             convert it first: qemu-img convert -O qcow2 {shown} image.qcow2"
        );
    }
    Ok(Box::new(Raw { file, size }))
}

/// The image, opened only if it is a regular file or a block device. Anything
/// else is named and refused, before open() when stat can tell: a FIFO's open
/// waits for a writer that may never come, and opening a device can act (a
/// tape rewinds, a terminal becomes the controlling one). O_NONBLOCK and
/// O_NOCTTY cover what is swapped in between the stat and the open, which the
/// fstat after it then refuses.
fn open_input(path: &Path) -> Result<(File, std::fs::Metadata)> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) => readable_kind(&m, path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("image {shown} does not exist"),
        Err(e) => bail!("cannot open image {shown}: {}", io_reason(&e)),
    }
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("image {shown} does not exist"),
        Err(e) => bail!("cannot open image {shown}: {}", io_reason(&e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| anyhow::anyhow!("cannot read image {shown}: {}", io_reason(&e)))?;
    readable_kind(&meta, path)?;
    // Back to blocking reads: only what opens is meant to be non-blocking.
    let flags = OFlag::from_bits_truncate(
        fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)
            .map_err(|e| anyhow::anyhow!("cannot read image {shown}: {}", e.desc()))?,
    );
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK),
    )
    .map_err(|e| anyhow::anyhow!("cannot read image {shown}: {}", e.desc()))?;
    Ok((file, meta))
}

fn readable_kind(meta: &std::fs::Metadata, path: &Path) -> Result<()> {
    let t = meta.file_type();
    let what = if t.is_file() || t.is_block_device() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "neither a regular file nor a block device"
    };
    bail!(
        "{} is {what}, not a disk image: give a raw or qcow2 image file, or a block device",
        path.display()
    )
}

fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn device_size(file: &File, path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .map_err(|e| anyhow::anyhow!("cannot read {}: {}", path.display(), io_reason(&e)))
}

/// Container formats qemu-img knows that we do not read: naming them beats
/// "no partition table found" for a file that is a perfectly good image.
fn foreign_format(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") || at(0, b"COWD") {
        Some("VMDK")
    } else if at(0, b"conectix") {
        Some("VHD (dynamic)")
    } else if at(0, b"vhdxfile") {
        Some("VHDX")
    } else if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        Some("VDI")
    } else if at(0, b"QED\0") {
        Some("QED")
    } else if at(0, b"LUKS\xba\xbe") {
        Some("LUKS-encrypted")
    } else {
        None
    }
}

pub struct Raw {
    file: File,
    size: u64,
}

impl crate::partition::Disk for Raw {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size);
        if end.is_none() {
            bail!(
                "the image is truncated or its tables are corrupt: needed bytes {offset}..+{} but the image ends at {}",
                buf.len(),
                self.size
            );
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| anyhow::anyhow!("reading the image at byte {offset}: {}", io_reason(&e)))
    }
}

impl Disk for Raw {
    fn format(&self) -> &'static str {
        "raw"
    }
}

/// One partition (or the whole disk) as its own address space.
pub struct Volume<'d> {
    disk: &'d mut dyn Disk,
    start: u64,
    len: u64,
}

impl<'d> Volume<'d> {
    pub fn new(disk: &'d mut dyn Disk, start: u64, len: u64) -> Volume<'d> {
        Volume { disk, start, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(e) if e <= self.len => {}
            _ => bail!("read past the end of the partition (byte {offset} of {}): the filesystem is corrupt", self.len),
        }
        if self.start.saturating_add(self.len) > self.disk.size() {
            bail!("the partition extends past the end of the image ({} bytes): is the image truncated?", self.disk.size());
        }
        self.disk.read_at(self.start + offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_formats_are_named() {
        assert_eq!(foreign_format(b"KDMV\x01\0\0\0"), Some("VMDK"));
        assert_eq!(foreign_format(b"vhdxfile...."), Some("VHDX"));
        assert_eq!(foreign_format(&[0u8; 512]), None);
    }

    #[test]
    fn raw_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r");
        let mut bytes = vec![7u8; 4096];
        bytes[1024 + 0x38..1024 + 0x3a].copy_from_slice(&[0x53, 0xef]);
        std::fs::write(&p, bytes).unwrap();
        let mut d = open(&p).unwrap();
        let mut b = [0u8; 16];
        d.read_at(4080, &mut b).unwrap();
        assert_eq!(b, [7u8; 16]);
        let e = d.read_at(4090, &mut b).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut v = Volume::new(d.as_mut(), 1024, 1024);
        assert!(v.read_at(1020, &mut b).is_err());
        // A magic past the partition or the image does not match, and is not read.
        let fs = |d: &mut Box<dyn Disk>, start, len| {
            crate::partition::filesystem_at(d.as_mut(), start, len).unwrap()
        };
        assert_eq!(fs(&mut d, 0, 4096), Some("ext"));
        assert_eq!(fs(&mut d, 0, 1024 + 0x39), None);
        assert_eq!(fs(&mut d, 3072, 1 << 20), None);
    }
}
