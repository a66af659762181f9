//! Which kernel and initrd: the newest `vmlinuz-VERSION` by Debian version order and
//! the initrd built for that VERSION, or whatever the DIB_BAREMETAL_*_PATTERN globs pick.

use anyhow::{bail, Result};
use std::cmp::Ordering;
use std::ffi::CString;

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct Patterns {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
}

const KERNEL_PREFIX: &[u8] = b"vmlinuz-";

/// `names` are the regular files of one directory; `dir` only words the error.
/// None when no kernel is there; an error when there is a kernel but no initrd.
pub fn choose(names: &[Vec<u8>], patterns: &Patterns, dir: &str) -> Result<Option<Choice>> {
    let kernel = match &patterns.kernel {
        Some(p) => newest(names.iter().filter(|n| glob(p, n))),
        None => newest(
            names
                .iter()
                .filter(|n| n.starts_with(KERNEL_PREFIX) && n.len() > KERNEL_PREFIX.len()),
        ),
    };
    let Some(kernel) = kernel else {
        return Ok(None);
    };
    let shown = String::from_utf8_lossy(kernel);
    let initrd = match &patterns.initrd {
        Some(p) => match newest(names.iter().filter(|n| glob(p, n))) {
            Some(i) => i,
            None => bail!("found kernel {dir}{shown}, but no file in {dir} matches DIB_BAREMETAL_INITRD_PATTERN={p:?}"),
        },
        None => {
            let version = kernel_version(kernel);
            let wanted = initrd_names(version);
            match wanted.iter().find_map(|w| names.iter().find(|n| *n == w)) {
                Some(i) => i,
                None => {
                    let looked: Vec<_> = wanted.iter().map(|w| String::from_utf8_lossy(w).into_owned()).collect();
                    bail!(
                        "found kernel {dir}{shown}, but no initrd for it (looked for {}); \
                         name one with DIB_BAREMETAL_INITRD_PATTERN",
                        looked.join(", ")
                    )
                }
            }
        }
    };
    Ok(Some(Choice {
        kernel: kernel.clone(),
        initrd: initrd.clone(),
    }))
}

/// Whether a directory entry could be chosen, so only those need their inode read.
pub fn relevant(name: &[u8], patterns: &Patterns) -> bool {
    let by = |p: &Option<String>, default: &[&[u8]]| match p {
        Some(p) => glob(p, name),
        None => default.iter().any(|d| name.starts_with(d)),
    };
    by(&patterns.kernel, &[KERNEL_PREFIX]) || by(&patterns.initrd, &[b"initr"])
}

fn newest<'a>(names: impl Iterator<Item = &'a Vec<u8>>) -> Option<&'a Vec<u8>> {
    names.max_by(|a, b| version_cmp(a, b).then_with(|| a.cmp(b)))
}

/// VERSION of vmlinuz-VERSION (or of any NAME-VERSION a pattern picked).
fn kernel_version(name: &[u8]) -> Option<&[u8]> {
    name.iter().position(|&c| c == b'-').map(|i| &name[i + 1..])
}

/// Debian and Ubuntu, Fedora and RHEL, SUSE and older Red Hat, in that order; an
/// unversioned kernel (SUSE's vmlinuz symlink) goes with an unversioned initrd.
fn initrd_names(version: Option<&[u8]>) -> Vec<Vec<u8>> {
    let Some(version) = version else {
        return vec![
            b"initrd.img".to_vec(),
            b"initrd".to_vec(),
            b"initramfs.img".to_vec(),
        ];
    };
    let v = |pre: &str, post: &str| [pre.as_bytes(), version, post.as_bytes()].concat();
    vec![
        v("initrd.img-", ""),
        v("initramfs-", ".img"),
        v("initrd-", ""),
        v("initrd-", ".img"),
    ]
}

/// Shell glob on a file name, with the shell's own matcher (fnmatch(3)).
pub fn glob(pattern: &str, name: &[u8]) -> bool {
    let (Ok(p), Ok(n)) = (CString::new(pattern), CString::new(name)) else {
        return false;
    };
    // SAFETY: both are NUL-terminated strings that outlive the call.
    unsafe { libc::fnmatch(p.as_ptr(), n.as_ptr(), 0) == 0 }
}

/// dpkg's verrevcmp: runs of non-digits compare letters before other characters and
/// `~` before everything (even the end); runs of digits compare as numbers.
pub fn version_cmp(a: &[u8], b: &[u8]) -> Ordering {
    fn order(c: u8) -> i32 {
        match c {
            0 => 0,
            c if c.is_ascii_digit() => 0,
            c if c.is_ascii_alphabetic() => c as i32,
            b'~' => -1,
            c => c as i32 + 256,
        }
    }
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (at(a, i) != 0 && !at(a, i).is_ascii_digit())
            || (at(b, j) != 0 && !at(b, j).is_ascii_digit())
        {
            let (x, y) = (order(at(a, i)), order(at(b, j)));
            if x != y {
                return x.cmp(&y);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == b'0' {
            i += 1;
        }
        while at(b, j) == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while at(a, i).is_ascii_digit() && at(b, j).is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = at(a, i).cmp(&at(b, j));
            }
            i += 1;
            j += 1;
        }
        if at(a, i).is_ascii_digit() {
            return Ordering::Greater;
        }
        if at(b, j).is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    fn names(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn versions_order_like_dpkg() {
        for (a, b, want) in [
            ("6.1.0-50-cloud-amd64", "6.1.0-9-cloud-amd64", Greater),
            ("6.10.0", "6.9.12", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0a", Less),
            ("1.0a", "1.0+", Less),
            ("1.02", "1.2", Equal),
            ("5.10.0-28-amd64", "5.10.0-28-amd64", Equal),
            ("0-rescue-1234", "6.5.6-300.fc39.x86_64", Less),
            ("", "0", Equal),
            ("~", "", Less),
        ] {
            assert_eq!(version_cmp(a.as_bytes(), b.as_bytes()), want, "{a} vs {b}");
            assert_eq!(
                version_cmp(b.as_bytes(), a.as_bytes()),
                want.reverse(),
                "{b} vs {a}"
            );
        }
    }

    #[test]
    fn newest_kernel_and_its_initrd() {
        let n = names(&[
            "config-6.1.0-9-amd64",
            "vmlinuz-6.1.0-9-amd64",
            "initrd.img-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "initrd.img-6.1.0-10-amd64",
            "System.map-6.1.0-10-amd64",
        ]);
        let c = choose(&n, &Patterns::default(), "/boot/").unwrap().unwrap();
        assert_eq!(c.kernel, b"vmlinuz-6.1.0-10-amd64");
        assert_eq!(c.initrd, b"initrd.img-6.1.0-10-amd64");
    }

    #[test]
    fn fedora_names_and_the_rescue_kernel() {
        let n = names(&[
            "vmlinuz-0-rescue-abc",
            "initramfs-0-rescue-abc.img",
            "vmlinuz-6.5.6-300.fc39.x86_64",
            "initramfs-6.5.6-300.fc39.x86_64.img",
        ]);
        let c = choose(&n, &Patterns::default(), "/boot/").unwrap().unwrap();
        assert_eq!(c.initrd, b"initramfs-6.5.6-300.fc39.x86_64.img");
    }

    #[test]
    fn patterns_override_the_choice() {
        let n = names(&[
            "vmlinuz-6.1.0-10-amd64",
            "initrd.img-6.1.0-10-amd64",
            "vmlinuz-5.10.0-1-amd64",
            "initrd.img-5.10.0-1-amd64",
        ]);
        let p = Patterns {
            kernel: Some("vmlinuz-5.10*".into()),
            initrd: None,
        };
        let c = choose(&n, &p, "/boot/").unwrap().unwrap();
        assert_eq!(
            (c.kernel.as_slice(), c.initrd.as_slice()),
            (
                &b"vmlinuz-5.10.0-1-amd64"[..],
                &b"initrd.img-5.10.0-1-amd64"[..]
            )
        );
        let p = Patterns {
            kernel: None,
            initrd: Some("initrd.img-5.*".into()),
        };
        let c = choose(&n, &p, "/boot/").unwrap().unwrap();
        assert_eq!(c.kernel, b"vmlinuz-6.1.0-10-amd64");
        assert_eq!(c.initrd, b"initrd.img-5.10.0-1-amd64");
        let p = Patterns {
            kernel: Some("vmlinuz-[!6]*".into()),
            initrd: Some("nothing*".into()),
        };
        let e = choose(&n, &p, "/boot/").unwrap_err().to_string();
        assert!(
            e.contains("DIB_BAREMETAL_INITRD_PATTERN") && e.contains("vmlinuz-5.10.0-1-amd64"),
            "{e}"
        );
        let p = Patterns {
            kernel: Some("bzImage*".into()),
            initrd: None,
        };
        assert_eq!(choose(&n, &p, "/boot/").unwrap(), None);
    }

    #[test]
    fn a_kernel_without_initrd_is_an_error_naming_both() {
        let e = choose(
            &names(&["vmlinuz-6.1.0-10-amd64"]),
            &Patterns::default(),
            "/boot/",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/boot/vmlinuz-6.1.0-10-amd64") && e.contains("initrd.img-6.1.0-10-amd64"),
            "{e}"
        );
        assert_eq!(
            choose(&names(&["vmlinuz", "config-1"]), &Patterns::default(), "/").unwrap(),
            None
        );
    }

    #[test]
    fn glob_is_the_shells() {
        assert!(glob("vmlinuz-6.1*", b"vmlinuz-6.1.0-1-amd64"));
        assert!(!glob("vmlinuz-6.1*", b"vmlinuz-6.10.0"[..8].as_ref()));
        assert!(glob("vmlinu[xz]-?.*", b"vmlinux-6.1"));
        assert!(!glob("vmlinuz", b"vmlinuz-6"));
    }
}
