//! A block device (or any file) read through a borrowed descriptor, for the table
//! reader: kiln-helper reads the device it attached, kiln the image file.

use super::Disk;
use anyhow::{bail, Result};
use nix::errno::Errno;
use std::os::fd::BorrowedFd;

pub struct Device<'a> {
    fd: BorrowedFd<'a>,
    size: u64,
}

impl<'a> Device<'a> {
    /// `size` bytes are readable through `fd`; nothing past them is read.
    pub fn new(fd: BorrowedFd<'a>, size: u64) -> Device<'a> {
        Device { fd, size }
    }
}

impl Disk for Device<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            bail!("the partition table points past the end of the device (byte {offset})");
        }
        let mut done = 0;
        while done < buf.len() {
            match nix::sys::uio::pread(self.fd, &mut buf[done..], (offset + done as u64) as i64) {
                Ok(0) => bail!("the device ended early at byte {}", offset + done as u64),
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(e) => bail!(
                    "reading the device at byte {}: {}",
                    offset + done as u64,
                    e.desc()
                ),
            }
        }
        Ok(())
    }
}
