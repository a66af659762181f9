//! What `qemu-img convert` stamps into VHD and VMDK files that does not come
//! from the disk: VHD's creation time and UUID, VMDK's content id and the
//! file's own name. For reproducible outputs (SOURCE_DATE_EPOCH) kiln replaces
//! them with values from the build's seed and epoch.

use super::ids::Seed;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Seconds from 1970 to VHD's epoch, 2000-01-01 00:00:00 UTC.
const VHD_EPOCH: i64 = 946_684_800;
const VHD_FOOTER: usize = 512;

/// Sets the timestamp and UUID of both copies of a VHD footer (a dynamic VHD
/// has one at the start and one at the end) and their checksums.
pub(crate) fn vhd(path: &Path, seed: &Seed, epoch: i64) -> Result<()> {
    let f = open(path)?;
    let len = f.metadata()?.len();
    if len < VHD_FOOTER as u64 {
        bail!("{}: too short for a VHD", path.display());
    }
    let uuid = super::tool::parse_uuid(&seed.uuid("vhd"))?;
    let stamp = u32::try_from((epoch - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    let mut patched = 0;
    for offset in [0, len - VHD_FOOTER as u64] {
        let mut footer = [0u8; VHD_FOOTER];
        f.read_exact_at(&mut footer, offset)?;
        if &footer[..8] != b"conectix" {
            continue;
        }
        footer[24..28].copy_from_slice(&stamp.to_be_bytes());
        footer[68..84].copy_from_slice(&uuid);
        footer[64..68].fill(0);
        let sum = footer
            .iter()
            .fold(0u32, |s, b| s.wrapping_add(u32::from(*b)));
        footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
        f.write_all_at(&footer, offset)?;
        patched += 1;
    }
    if patched == 0 {
        bail!("{}: no VHD footer found", path.display());
    }
    Ok(())
}

/// The name every reproducible VMDK's descriptor gives its (only) extent:
/// qemu-img writes the output file's name, which would make the bytes depend
/// on `-o`. A monolithic VMDK's extent is the file itself whatever its name.
pub(crate) const VMDK_EXTENT_NAME: &str = "image.vmdk";

/// Rewrites the embedded descriptor's `CID=` and extent file name in place.
pub(crate) fn vmdk(path: &Path, seed: &Seed) -> Result<()> {
    let f = open(path)?;
    let mut header = [0u8; 512];
    f.read_exact_at(&mut header, 0)?;
    if &header[..4] != b"KDMV" {
        bail!("{}: not a sparse VMDK (no KDMV header)", path.display());
    }
    let sectors = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    let (offset, size) = (sectors(28) * 512, sectors(36) * 512);
    if offset == 0 || size == 0 || size > 1 << 20 {
        bail!("{}: the VMDK has no embedded descriptor", path.display());
    }
    let mut area = vec![0u8; size as usize];
    f.read_exact_at(&mut area, offset)?;
    let used = area.iter().position(|b| *b == 0).unwrap_or(area.len());
    let text = std::str::from_utf8(&area[..used])
        .with_context(|| format!("{}: the VMDK descriptor is not text", path.display()))?;
    let cid = &seed.uuid("vmdk content id")[..8];
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("CID=") {
            out.push_str(&format!("CID={cid}"));
        } else if let Some((head, _)) = extent_line(line) {
            out.push_str(&format!("{head}\"{VMDK_EXTENT_NAME}\""));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if out.len() > area.len() {
        bail!(
            "{}: the rewritten VMDK descriptor does not fit",
            path.display()
        );
    }
    let mut new = out.into_bytes();
    new.resize(area.len(), 0);
    f.write_all_at(&new, offset)?;
    Ok(())
}

/// `RW 409600 SPARSE "name.vmdk"` → (`RW 409600 SPARSE `, `name.vmdk`).
fn extent_line(line: &str) -> Option<(&str, &str)> {
    let access = ["RW ", "RDONLY ", "NOACCESS "];
    if !access.iter().any(|a| line.starts_with(a)) {
        return None;
    }
    let open = line.find('"')?;
    let close = line[open + 1..].find('"')? + open + 1;
    Some((&line[..open], &line[open + 1..close]))
}

fn open(path: &Path) -> Result<File> {
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn convert(raw: &Path, fmt: &str, opts: &str, out: &Path) {
        let st = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", fmt, "-o", opts])
            .arg(raw)
            .arg(out)
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn two_conversions_become_identical_and_stay_readable() {
        if !crate::test_tools::have("qemu-img") {
            return;
        }
        let t = tempfile::TempDir::new().unwrap();
        let raw = t.path().join("d.raw");
        std::fs::write(&raw, vec![7u8; 4 << 20]).unwrap();
        let seed = Seed::given("s").unwrap();
        for (fmt, opts, ext) in [
            ("vpc", "force_size=on", "vhd"),
            ("vpc", "force_size=on,subformat=fixed", "vhd"),
            ("vmdk", "subformat=streamOptimized", "vmdk"),
        ] {
            let a = t.path().join(format!("a.{ext}"));
            let b = t.path().join(format!("bb.{ext}"));
            convert(&raw, fmt, opts, &a);
            std::thread::sleep(std::time::Duration::from_millis(1100));
            convert(&raw, fmt, opts, &b);
            let digest = |p: &Path| {
                use sha2::Digest;
                sha2::Sha256::digest(std::fs::read(p).unwrap()).to_vec()
            };
            assert_ne!(
                digest(&a),
                digest(&b),
                "{opts}: qemu-img stamps no time or id?"
            );
            for p in [&a, &b] {
                if ext == "vhd" {
                    vhd(p, &seed, 1_700_000_000).unwrap();
                } else {
                    vmdk(p, &seed).unwrap();
                }
            }
            assert_eq!(digest(&a), digest(&b), "{opts}");
            // qemu-img still reads it, and the content is the disk's.
            let back = t.path().join("back.raw");
            let st = Command::new("qemu-img")
                .args(["convert", "-f", fmt, "-O", "raw"])
                .arg(&b)
                .arg(&back)
                .status()
                .unwrap();
            assert!(st.success());
            assert_eq!(digest(&back), digest(&raw), "{opts}: content changed");
            let check = Command::new("qemu-img")
                .args(["check", "-f", fmt])
                .arg(&b)
                .output()
                .unwrap();
            assert!(
                check.status.success() || ext == "vhd",
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
}
