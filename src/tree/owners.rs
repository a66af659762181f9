//! Owners recorded for a build without subordinate ids (docs/architecture.md §4).
//!
//! With a single id mapping every file really belongs to root of kiln's
//! namespace, and chown to any other id fails. The job supervisor
//! (`sandbox::owners`) answers a hook's chown instead: it records the owner the
//! hook asked for in an extended attribute of the inode itself, and answers
//! `stat` with it. Output writers then give each file its recorded owner.
//!
//! An attribute on the inode, not a table on the side, because it follows the
//! inode through renames and hard links, disappears with it (no stale entry for a
//! reused inode number), and survives kiln's tree cache (tar `--xattrs`).
//! `user.` attributes exist only on regular files and directories: a symlink or
//! special file keeps root as its owner (the supervisor says so when asked for
//! another).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The attribute's name. Never copied into an output: writers exclude it.
pub const XATTR: &CStr = c"user.kiln.owner";

/// A uid and gid as the image sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };

    /// `UID:GID` in decimal, the attribute's whole value.
    pub fn encode(self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    /// The strict inverse of [`encode`](Owner::encode): anything else (a hook
    /// may write the attribute itself) is refused, not guessed at. `u32::MAX`
    /// is chown's "unchanged", never an owner.
    pub fn parse(value: &[u8]) -> Option<Owner> {
        let text = std::str::from_utf8(value).ok()?;
        let (u, g) = text.split_once(':')?;
        let id = |s: &str| -> Option<u32> {
            if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u32>().ok().filter(|&v| v != u32::MAX)
        };
        Some(Owner {
            uid: id(u)?,
            gid: id(g)?,
        })
    }
}

/// The owner recorded on an open regular file or directory: `None` when there
/// is none (the file belongs to root), an `InvalidData` error when the value is
/// not one kiln wrote.
pub fn recorded(fd: BorrowedFd) -> io::Result<Option<Owner>> {
    let mut buf = [0u8; 32];
    // SAFETY: the buffer outlives the call and its length is passed.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            Some(libc::ERANGE) => Err(invalid(&buf)),
            _ => Err(e),
        };
    }
    let value = &buf[..n as usize];
    Owner::parse(value).map(Some).ok_or_else(|| invalid(value))
}

fn invalid(value: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is {:?}, not UID:GID",
            XATTR.to_string_lossy(),
            String::from_utf8_lossy(value)
        ),
    )
}

/// Records `owner` on an open regular file or directory; root is recorded by
/// removing the attribute, so an image built without a range carries no
/// attribute where a range build would have a root-owned file.
pub fn record(fd: BorrowedFd, owner: Owner) -> io::Result<()> {
    // SAFETY: plain xattr calls with valid pointers and lengths.
    let r = if owner == Owner::ROOT {
        let r = unsafe { libc::fremovexattr(fd.as_raw_fd(), XATTR.as_ptr()) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENODATA) {
            0
        } else {
            r
        }
    } else {
        let value = owner.encode();
        unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                XATTR.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn parse_is_the_strict_inverse_of_encode() {
        for o in [
            Owner::ROOT,
            Owner { uid: 0, gid: 42 },
            Owner {
                uid: 65534,
                gid: 65534,
            },
            Owner {
                uid: 4_000_000_000,
                gid: 1,
            },
        ] {
            assert_eq!(Owner::parse(o.encode().as_bytes()), Some(o));
        }
        for bad in [
            "",
            ":",
            "1:",
            ":1",
            "1:2:3",
            "-1:0",
            "+1:0",
            " 1:0",
            "1:0\n",
            "4294967295:0",
            "99999999999:0",
            "a:b",
            "0x1:0",
        ] {
            assert_eq!(Owner::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn record_then_read_back_and_root_removes_the_attribute() {
        // The crate's own directory: tmpfs (a common /tmp) has no user.* attributes
        // before Linux 6.6.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert_eq!(recorded(f.as_fd()).unwrap(), None);
        let shadow = Owner { uid: 0, gid: 42 };
        record(f.as_fd(), shadow).unwrap();
        assert_eq!(recorded(f.as_fd()).unwrap(), Some(shadow));
        record(f.as_fd(), Owner::ROOT).unwrap();
        assert_eq!(recorded(f.as_fd()).unwrap(), None);
        // Removing an absent attribute is not an error: chown to root twice.
        record(f.as_fd(), Owner::ROOT).unwrap();
    }

    #[test]
    fn a_value_kiln_did_not_write_is_an_error_not_root() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let bogus = b"root:shadow";
        // SAFETY: valid pointers and lengths.
        let r = unsafe {
            libc::fsetxattr(
                f.as_raw_fd(),
                XATTR.as_ptr(),
                bogus.as_ptr().cast(),
                bogus.len(),
                0,
            )
        };
        assert_eq!(r, 0);
        let e = recorded(f.as_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("root:shadow"), "{e}");
    }
}
