//! Copying byte ranges between files without filling holes.

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const CHUNK: usize = 1 << 20;

/// Copies the data regions of `src` (from offset 0, `len` bytes) into `dst` at
/// `dst_offset`. The destination range is punched first, so the holes of `src` read
/// back as zeros there, and stay holes.
pub(crate) fn copy_range(src: &File, dst: &File, dst_offset: u64, len: u64) -> Result<()> {
    punch(dst, dst_offset, len)?;
    let mut pos = 0u64;
    while pos < len {
        let Some(data) = seek(src, pos, Whence::SeekData)? else {
            break;
        };
        if data >= len {
            break;
        }
        let end = seek(src, data, Whence::SeekHole)?.unwrap_or(len).min(len);
        copy_extent(src, dst, data, dst_offset + data, end - data)?;
        pos = end;
    }
    Ok(())
}

/// Copies all of `src` into a new file's worth of `dst` (same apparent size, holes kept).
pub(crate) fn copy_file(src: &File, dst: &File) -> Result<()> {
    let len = src.metadata().context("cannot stat the source")?.len();
    dst.set_len(len).context("cannot size the destination")?;
    copy_range(src, dst, 0, len)
}

fn seek(f: &File, from: u64, whence: Whence) -> Result<Option<u64>> {
    match lseek(f.as_raw_fd(), from as i64, whence) {
        Ok(p) => Ok(Some(p as u64)),
        // ENXIO: no data (or hole) at or after `from`.
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e).context("lseek(SEEK_DATA/SEEK_HOLE)"),
    }
}

fn punch(f: &File, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(f.as_raw_fd(), flags, offset as i64, len as i64) {
        Ok(()) => Ok(()),
        // Filesystems without hole punching: the caller's range is freshly created and
        // therefore already zero in every use kiln makes of this.
        Err(Errno::EOPNOTSUPP) | Err(Errno::ENOSYS) => Ok(()),
        Err(e) => Err(e).context("fallocate(PUNCH_HOLE)"),
    }
}

/// Reads and writes in chunks, skipping all-zero chunks so the result stays sparse even
/// when the source's filesystem reports coarse extents.
fn copy_extent(src: &File, dst: &File, from: u64, to: u64, len: u64) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = CHUNK.min((len - done) as usize);
        src.read_exact_at(&mut buf[..n], from + done)
            .context("cannot read the source")?;
        if buf[..n].iter().any(|b| *b != 0) {
            dst.write_all_at(&buf[..n], to + done)
                .context("cannot write the destination")?;
        }
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("s"))
            .unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"start", 0).unwrap();
        src.write_all_at(b"middle", 32 << 20).unwrap();
        src.write_all_at(b"end", (64 << 20) - 3).unwrap();
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("d"))
            .unwrap();
        dst.set_len(80 << 20).unwrap();
        dst.write_all_at(b"garbage", (8 << 20) + 100).unwrap();
        copy_range(&src, &dst, 8 << 20, 64 << 20).unwrap();

        let mut b = [0u8; 7];
        dst.read_exact_at(&mut b[..5], 8 << 20).unwrap();
        assert_eq!(&b[..5], b"start");
        dst.read_exact_at(&mut b, (8 << 20) + 100).unwrap();
        assert_eq!(b, [0; 7], "old data in a hole of the source must be gone");
        dst.read_exact_at(&mut b[..6], 40 << 20).unwrap();
        assert_eq!(&b[..6], b"middle");
        dst.read_exact_at(&mut b[..3], (72 << 20) - 3).unwrap();
        assert_eq!(&b[..3], b"end");
        assert!(
            dst.metadata().unwrap().blocks() * 512 < 8 << 20,
            "the copy is not sparse"
        );

        let whole = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("w"))
            .unwrap();
        copy_file(&src, &whole).unwrap();
        assert_eq!(whole.metadata().unwrap().len(), 64 << 20);
    }
}
