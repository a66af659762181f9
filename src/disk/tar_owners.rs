//! Recorded owners written into a finished tar archive. GNU tar takes each
//! entry's owner from the file and has no per-file override, so the archive is
//! edited afterwards: every header whose name has a recorded owner gets that
//! uid and gid, and its checksum again. Only header bytes change, in place, so
//! the same archive and owners give the same bytes.
//!
//! Names come from the ustar header (`prefix/name`), a pax `x` header's `path=`
//! record, or a GNU `L` header, whichever precedes the entry; sizes from the
//! header or a pax `size=` record, to step over the data.

use crate::tree::owners::Recorded;
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

const BLOCK: u64 = 512;
const UID: std::ops::Range<usize> = 108..116;
const GID: std::ops::Range<usize> = 116..124;
const SIZE: std::ops::Range<usize> = 124..136;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const MAGIC: std::ops::Range<usize> = 257..263;
const PREFIX: std::ops::Range<usize> = 345..500;

/// Gives every entry of the tar archive at `path` its recorded owner; returns
/// how many headers changed.
pub fn apply(path: &Path, owners: &Recorded) -> Result<u64> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    let at = |offset: u64| format!("{} at byte {offset}", path.display());
    let mut offset = 0u64;
    let mut changed = 0;
    // From a pax `x` or GNU `L` header, for the next entry only.
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax_size: Option<u64> = None;
    let mut header = [0u8; BLOCK as usize];
    while offset + BLOCK <= len {
        file.read_exact_at(&mut header, offset)
            .with_context(|| format!("cannot read {}", at(offset)))?;
        if header.iter().all(|&b| b == 0) {
            return Ok(changed);
        }
        if checksum(&header) != octal(&header[CHKSUM]).with_context(|| at(offset))? {
            bail!("{}: not a tar header (bad checksum)", at(offset));
        }
        let size = match pax_size.take() {
            Some(s) => s,
            None => number(&header[SIZE]).with_context(|| at(offset))?,
        };
        let data = offset + BLOCK;
        let next = data + size.div_ceil(BLOCK) * BLOCK;
        if next > len {
            bail!("{}: the entry runs past the end of the archive", at(offset));
        }
        match header[TYPEFLAG] {
            b'x' | b'L' => {
                let mut body = vec![0u8; size as usize];
                file.read_exact_at(&mut body, data)
                    .with_context(|| format!("cannot read {}", at(data)))?;
                if header[TYPEFLAG] == b'L' {
                    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    body.truncate(end);
                    long_name = Some(body);
                } else {
                    for (k, v) in pax_records(&body).with_context(|| at(data))? {
                        match k {
                            b"path" => long_name = Some(v.to_vec()),
                            b"size" => {
                                pax_size = Some(
                                    std::str::from_utf8(v)
                                        .ok()
                                        .and_then(|s| s.parse().ok())
                                        .with_context(|| format!("{}: bad pax size", at(data)))?,
                                )
                            }
                            _ => {}
                        }
                    }
                }
                offset = next;
                continue;
            }
            // Global pax headers, GNU long link names and volume labels name no file.
            b'g' | b'K' | b'V' => {
                offset = next;
                continue;
            }
            _ => {}
        }
        let name = long_name.take().unwrap_or_else(|| ustar_name(&header));
        if let Some(owner) = owners.get(Path::new(OsStr::from_bytes(&name))) {
            put_id(&mut header[UID], owner.uid);
            put_id(&mut header[GID], owner.gid);
            put_checksum(&mut header);
            file.write_all_at(&header, offset)
                .with_context(|| format!("cannot write {}", at(offset)))?;
            changed += 1;
        }
        offset = next;
    }
    bail!("{}: no end-of-archive blocks", path.display())
}

/// `prefix/name` of a POSIX ustar header; the name alone otherwise (GNU
/// headers use the prefix bytes for other fields).
fn ustar_name(h: &[u8]) -> Vec<u8> {
    let field = |b: &[u8]| b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())].to_vec();
    let name = field(&h[..100]);
    if &h[MAGIC] == b"ustar\0" && h[PREFIX.start] != 0 {
        let mut full = field(&h[PREFIX]);
        full.push(b'/');
        full.extend_from_slice(&name);
        return full;
    }
    name
}

/// The `LEN key=value\n` records of a pax extended header.
fn pax_records(mut body: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    while !body.is_empty() && body[0] != 0 {
        let space = body
            .iter()
            .position(|&b| b == b' ')
            .context("bad pax record")?;
        let n: usize = std::str::from_utf8(&body[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > space + 1 && n <= body.len() && body[n - 1] == b'\n')
            .context("bad pax record length")?;
        let record = &body[space + 1..n - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .context("pax record without =")?;
        out.push((&record[..eq], &record[eq + 1..]));
        body = &body[n..];
    }
    Ok(out)
}

/// An octal field (digits, then NUL or space padding).
fn octal(field: &[u8]) -> Result<u64> {
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if digits.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&digits).ok();
    s.and_then(|s| u64::from_str_radix(s, 8).ok())
        .with_context(|| format!("bad octal field {:?}", String::from_utf8_lossy(field)))
}

/// A numeric field: octal, or GNU's base-256 (high bit set) for large values.
fn number(field: &[u8]) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .context("base-256 field too large")?;
        }
        return Ok(v);
    }
    octal(field)
}

/// Seven octal digits and a NUL as tar writes them; an id above 0o7777777
/// (2097151) in GNU's base-256 form, which GNU tar and libarchive read in any
/// archive format.
fn put_id(field: &mut [u8], id: u32) {
    if id <= 0o7777777 {
        field.copy_from_slice(format!("{id:07o}\0").as_bytes());
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..].copy_from_slice(&id.to_be_bytes());
    }
}

/// The header's byte sum with the checksum field counted as spaces.
fn checksum(h: &[u8]) -> u64 {
    h.iter()
        .enumerate()
        .map(|(i, &b)| {
            if CHKSUM.contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum()
}

/// As GNU tar writes it: six octal digits, a NUL and a space.
fn put_checksum(h: &mut [u8]) {
    let sum = checksum(h);
    h[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_written_as_tar_writes_them() {
        let mut f = [0u8; 8];
        put_id(&mut f, 42);
        assert_eq!(&f, b"0000052\0");
        assert_eq!(number(&f).unwrap(), 42);
        put_id(&mut f, 4_000_000_000);
        assert_eq!(f[0], 0x80);
        assert_eq!(number(&f).unwrap(), 4_000_000_000);
    }

    #[test]
    fn pax_records_are_split() {
        let body = b"21 path=./etc/shadow\n11 size=42\n\0\0";
        let r = pax_records(body).unwrap();
        assert_eq!(r[0], (&b"path"[..], &b"./etc/shadow"[..]));
        assert_eq!(r[1], (&b"size"[..], &b"42"[..]));
        assert!(pax_records(b"99 path=x\n").is_err());
    }

    /// GNU (`L` long names) and ustar (`prefix/name`) archives, not only the pax
    /// ones kiln's tar writes.
    #[test]
    fn gnu_and_ustar_names_find_their_owners() {
        use crate::tree::owners::{Owner, RecordedFile};
        use std::path::PathBuf;
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        let deep = format!("{}/{}", "p".repeat(70), "q".repeat(40));
        std::fs::create_dir_all(t.join(&deep)).unwrap();
        std::fs::write(t.join(&deep).join("f"), b"x").unwrap();
        std::fs::hard_link(t.join(&deep).join("f"), t.join("g")).unwrap();
        let o = Owner { uid: 12, gid: 34 };
        let rec = Recorded::from_files([PathBuf::from(&deep).join("f"), PathBuf::from("g")].map(
            |p| {
                (
                    p,
                    RecordedFile {
                        owner: o,
                        perm: 0o644,
                    },
                )
            },
        ));
        for format in ["gnu", "ustar"] {
            let tar = dir.path().join(format!("{format}.tar"));
            let st = Command::new("tar")
                .args(["--numeric-owner", "--sort=name", "-C"])
                .arg(&t)
                .arg(format!("--format={format}"))
                .arg("-cf")
                .arg(&tar)
                .arg(".")
                .status()
                .unwrap();
            assert!(st.success());
            assert_eq!(apply(&tar, &rec).unwrap(), 2, "{format}");
            let out = Command::new("tar")
                .args(["--numeric-owner", "-tvf"])
                .arg(&tar)
                .output()
                .unwrap();
            assert!(out.status.success(), "{format}");
            let listing = String::from_utf8_lossy(&out.stdout);
            let with_owner = listing.lines().filter(|l| l.contains(" 12/34 ")).count();
            assert_eq!(with_owner, 2, "{format}:\n{listing}");
        }
    }
}
