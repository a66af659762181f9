//! A device's partitions: what its table says, and making the kernel agree.
//! The kernel may have no partition parsers at all, so the helper reads the
//! table itself and adds each partition with BLKPG.

use super::hardening::Privileged;
use super::loopdev;
use crate::helper::protocol::{PartLine, MAX_PARTITIONS};
use crate::partition::Device;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use std::ffi::{c_int, c_void};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// The kernel numbers partitions below DISK_MAX_PARTS (256).
const MAX_NUMBER: u32 = 255;
const SECTOR: u64 = 512;

/// The table on `dev`, validated: at most MAX_PARTITIONS partitions, each
/// inside the device, sector-aligned, not overlapping another.
pub fn read_table(dev: BorrowedFd, size: u64) -> Result<Vec<PartLine>> {
    let found = crate::partition::read(&mut Device::new(dev, size))
        .context("the partition table cannot be read")?;
    let mut parts: Vec<PartLine> = found
        .map(|table| {
            table
                .partitions
                .into_iter()
                .map(|p| PartLine {
                    number: p.number,
                    start: p.start,
                    size: p.len,
                })
                .collect()
        })
        .unwrap_or_default();
    // As the kernel's own parsers do: an entry without sectors is no partition.
    parts.retain(|p| p.size > 0);
    validate(&mut parts, size)?;
    Ok(parts)
}

fn validate(parts: &mut [PartLine], size: u64) -> Result<()> {
    if parts.len() > MAX_PARTITIONS {
        bail!("the partition table lists {} partitions; kiln-helper attaches at most {MAX_PARTITIONS}", parts.len());
    }
    for p in parts.iter() {
        let n = p.number;
        if n == 0 || n > MAX_NUMBER {
            bail!(
                "the partition table numbers a partition {n}; the kernel allows 1 to {MAX_NUMBER}"
            );
        }
        if p.start % SECTOR != 0 || p.size % SECTOR != 0 {
            bail!("partition {n} is not aligned to {SECTOR}-byte sectors");
        }
        if p.start.checked_add(p.size).is_none_or(|end| end > size) {
            bail!(
                "partition {n} (bytes {}..+{}) lies past the end of the device ({size} bytes)",
                p.start,
                p.size
            );
        }
    }
    parts.sort_by_key(|p| (p.start, p.number));
    for w in parts.windows(2) {
        if w[0].start + w[0].size > w[1].start {
            bail!("partitions {} and {} overlap", w[0].number, w[1].number);
        }
    }
    parts.sort_by_key(|p| p.number);
    if let Some(w) = parts.windows(2).find(|w| w[0].number == w[1].number) {
        bail!("the partition table lists partition {} twice", w[0].number);
    }
    Ok(())
}

/// Makes the kernel's partitions of `name` exactly `want`: removes those gone or
/// changed (refusing one that is open), then adds the new ones.
pub fn sync(p: &Privileged, dev: BorrowedFd, name: &str, want: &[PartLine]) -> Result<()> {
    let mut have = kernel_partitions(name)?;
    have.sort_by_key(|h| h.number);
    let mut busy = Vec::new();
    for h in have.iter().filter(|h| !want.contains(h)) {
        match remove(p, dev, h) {
            Ok(()) => {}
            Err(Errno::EBUSY) => busy.push(h.number.to_string()),
            Err(e) => bail!("removing partition {} of {name}: {}", h.number, e.desc()),
        }
    }
    match &busy[..] {
        [] => {}
        [one] => bail!("partition {one} is in use: close what holds it open, then rescan"),
        [many @ .., last] => bail!(
            "partitions {} and {last} are in use: close what holds them open, then rescan",
            many.join(", ")
        ),
    }
    for w in want.iter().filter(|w| !have.contains(w)) {
        blkpg(p, dev, BLKPG_ADD_PARTITION, w).map_err(|e| {
            anyhow::anyhow!("adding partition {} to {name}: {}", w.number, e.desc())
        })?;
    }
    Ok(())
}

/// EBUSY may be a prober (udev's blkid) holding the partition for a moment:
/// only one still open after a second counts as in use.
fn remove(p: &Privileged, dev: BorrowedFd, part: &PartLine) -> nix::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match blkpg(p, dev, BLKPG_DEL_PARTITION, part) {
            Err(Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

/// One open descriptor per partition, in `want`'s order.
pub fn open_all(name: &str, want: &[PartLine]) -> Result<Vec<File>> {
    want.iter()
        .map(|w| loopdev::open_node(&format!("{name}p{}", w.number)))
        .collect()
}

/// What the kernel has now, from /sys/block/NAME/NAMEpK.
fn kernel_partitions(name: &str) -> Result<Vec<PartLine>> {
    let dir = format!("/sys/block/{name}");
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(k) = file.strip_prefix(name).and_then(|s| s.strip_prefix('p')) else {
            continue;
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let read = |attr: &str| -> Result<u64> {
            let path = entry.path().join(attr);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            text.trim()
                .parse()
                .with_context(|| format!("{} is not a number", path.display()))
        };
        parts.push(PartLine {
            number: read("partition")? as u32,
            start: read("start")? * SECTOR,
            size: read("size")? * SECTOR,
        });
        if parts.len() > MAX_NUMBER as usize {
            bail!("{dir} lists more partitions than the kernel allows");
        }
    }
    Ok(parts)
}

const BLKPG_ADD_PARTITION: c_int = 1;
const BLKPG_DEL_PARTITION: c_int = 2;

/// struct blkpg_partition (linux/blkpg.h).
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// struct blkpg_ioctl_arg (linux/blkpg.h).
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

nix::ioctl_write_ptr_bad!(
    blkpg_ioctl,
    nix::request_code_none!(0x12, 105),
    BlkpgIoctlArg
);

fn blkpg(_: &Privileged, dev: BorrowedFd, op: c_int, part: &PartLine) -> nix::Result<()> {
    // validate() keeps start and size inside the device: far below i64::MAX.
    let mut data = BlkpgPartition {
        start: part.start as i64,
        length: part.size as i64,
        pno: part.number as c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&mut data as *mut BlkpgPartition).cast(),
    };
    // SAFETY: arg and data outlive the call.
    unsafe { blkpg_ioctl(dev.as_raw_fd(), &arg) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(number: u32, start: u64, size: u64) -> PartLine {
        PartLine {
            number,
            start,
            size,
        }
    }

    #[test]
    fn tables_are_bounded_and_checked() {
        let mib = 1 << 20;
        let mut ok = vec![p(2, 9 * mib, mib), p(1, mib, 8 * mib)];
        validate(&mut ok, 16 * mib).unwrap();
        assert_eq!(ok[0].number, 1);
        for (mut bad, says) in [
            (vec![p(1, mib, 300 * mib)], "past the end"),
            (vec![p(1, u64::MAX - 511, 512)], "past the end"),
            (vec![p(1, mib, 8 * mib), p(2, 8 * mib, mib)], "overlap"),
            (vec![p(1, 513, 512)], "aligned"),
            (vec![p(0, mib, mib)], "numbers a partition 0"),
            (vec![p(300, mib, mib)], "numbers a partition 300"),
            (vec![p(1, mib, mib), p(1, 2 * mib, mib)], "twice"),
            (
                (0..129)
                    .map(|i| p(i + 1, (i as u64 + 1) * mib, mib))
                    .collect(),
                "at most 128",
            ),
        ] {
            let e = validate(&mut bad, 256 * mib).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
