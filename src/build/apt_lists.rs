//! The image's apt package lists as evidence (docs/architecture.md §10.6): which archive file
//! names have which SHA-256, according to Packages lists whose hashes an InRelease
//! signed by a trusted key gives. The image is untrusted, so its lists are read
//! through `crate::tree` as regular files only, copied to kiln's own
//! files, and only the text gpgv says is signed is believed.

use crate::tree::{ImageTree, Kind};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Where apt keeps its lists inside the image.
const LISTS: &str = "var/lib/apt/lists";
/// Keyrings apt itself trusts on a Debian host, when DIB_APT_KEYRING is not set.
const HOST_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const HOST_TRUSTED_PARTS: &str = "/etc/apt/trusted.gpg.d";
/// Far above any real InRelease (Debian's is ~150 KiB) or Packages (~50 MiB).
const MAX_RELEASE: u64 = 16 << 20;
const MAX_PACKAGES: u64 = 1 << 30;

/// Why no digest could be trusted.
pub enum Unverifiable {
    /// Nothing to verify against (the image has no lists): not worth a warning.
    Quietly,
    Because(String),
}

impl From<anyhow::Error> for Unverifiable {
    fn from(e: anyhow::Error) -> Unverifiable {
        Unverifiable::Because(format!("{e:#}"))
    }
}

/// For each `wanted` archive file name, the SHA-256 and size that a package list of
/// the image gives, counting only lists whose hash an InRelease signed by a trusted
/// key vouches for.
pub fn trusted_digests(
    root: &Path,
    wanted: &HashSet<&str>,
    keyring: Option<&Path>,
    scratch: &Path,
) -> Result<HashMap<String, (String, u64)>, Unverifiable> {
    let tree = ImageTree::open(root).map_err(|_| Unverifiable::Quietly)?;
    let names: Vec<String> = match tree.list(Path::new(LISTS)) {
        Ok(n) => n.into_iter().filter_map(|n| n.into_string().ok()).collect(),
        Err(_) => return Err(Unverifiable::Quietly),
    };
    let releases: Vec<&String> = names.iter().filter(|n| n.ends_with("_InRelease")).collect();
    let packages: Vec<&String> = names.iter().filter(|n| n.ends_with("_Packages")).collect();
    if releases.is_empty() || packages.is_empty() {
        return Err(Unverifiable::Quietly);
    }
    let gpgv = which::which("gpgv").map_err(|_| {
        Unverifiable::Because("gpgv is not installed (apt-get install gpgv)".into())
    })?;
    let keyrings = keyrings(keyring)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(scratch)
        .with_context(|| format!("creating {}", scratch.display()))?;
    let mut vouched: HashSet<(String, u64)> = HashSet::new();
    for (i, name) in releases.iter().enumerate() {
        // A list the image planted as something else proves nothing; the others still may.
        let Ok(bytes) = tree.read_at_most(&Path::new(LISTS).join(name), MAX_RELEASE) else {
            continue;
        };
        if let Some(text) = signed_text(&gpgv, &keyrings, scratch, i, &bytes)? {
            for (sha, size, path) in release_sha256(&text) {
                if path.ends_with("/Packages") {
                    vouched.insert((sha, size));
                }
            }
        }
    }
    if vouched.is_empty() {
        return Err(Unverifiable::Because(format!(
            "no package list in the image is signed by a trusted key ({})",
            keyrings
                .iter()
                .map(|k| k.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut out = HashMap::new();
    for name in packages {
        let Ok(bytes) = tree.read_at_most(&Path::new(LISTS).join(name), MAX_PACKAGES) else {
            continue;
        };
        let sha = hex(&Sha256::digest(&bytes));
        if !vouched.contains(&(sha, bytes.len() as u64)) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        out.extend(packages_digests(text, wanted));
    }
    Ok(out)
}

/// DIB_APT_KEYRING (a keyring file, or a directory of them) replaces the host's
/// Debian keyrings, as it does for the bootstrap.
fn keyrings(configured: Option<&Path>) -> Result<Vec<PathBuf>, Unverifiable> {
    let mut out = Vec::new();
    let gpg_files = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "gpg") && p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    match configured {
        Some(k) if k.is_dir() => out.extend(gpg_files(k)),
        Some(k) if k.is_file() => out.push(k.to_path_buf()),
        Some(k) => {
            return Err(Unverifiable::Because(format!(
                "DIB_APT_KEYRING {} does not exist",
                k.display()
            )))
        }
        None => {
            let host = Path::new(HOST_KEYRING);
            if host.is_file() {
                out.push(host.to_path_buf());
            }
            out.extend(gpg_files(Path::new(HOST_TRUSTED_PARTS)));
        }
    }
    if out.is_empty() {
        return Err(Unverifiable::Because(match configured {
            Some(k) => format!("DIB_APT_KEYRING {} holds no *.gpg keyring", k.display()),
            None => format!("no trusted keyring: {HOST_KEYRING} is missing (apt-get install debian-archive-keyring)"),
        }));
    }
    Ok(out)
}

/// The text an InRelease signs, if a trusted key signed it and no signature is bad
/// (as apt: signatures by unknown keys are ignored). Only gpgv's output is used,
/// never the file's unsigned parts.
fn signed_text(
    gpgv: &Path,
    keyrings: &[PathBuf],
    scratch: &Path,
    n: usize,
    bytes: &[u8],
) -> Result<Option<String>> {
    let input = scratch.join(format!("InRelease.{n}"));
    let output = scratch.join(format!("signed.{n}"));
    std::fs::write(&input, bytes).with_context(|| format!("writing {}", input.display()))?;
    let mut cmd = std::process::Command::new(gpgv);
    cmd.arg("--homedir")
        .arg(scratch)
        .args(["--status-fd", "1", "--output"])
        .arg(&output);
    for k in keyrings {
        cmd.arg("--keyring").arg(k);
    }
    let out = cmd
        .arg(&input)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", gpgv.display()))?;
    let status = String::from_utf8_lossy(&out.stdout);
    let has = |word: &str| {
        status
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(word))
    };
    if !has("GOODSIG") || has("BADSIG") {
        return Ok(None);
    }
    let text = std::fs::read(&output).with_context(|| format!("reading {}", output.display()))?;
    Ok(String::from_utf8(text).ok())
}

/// The SHA256 section of a Release file: (hex digest, size, path).
pub fn release_sha256(text: &str) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            inside = line.trim_end() == "SHA256:";
            continue;
        }
        if !inside {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [sha, size, path] = f[..] {
            if let Ok(size) = size.parse() {
                if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push((sha.to_ascii_lowercase(), size, path.to_string()));
                }
            }
        }
    }
    out
}

/// From a Packages list: archive file name → (SHA-256, size), for names in `wanted`.
pub fn packages_digests(text: &str, wanted: &HashSet<&str>) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    for stanza in text.split("\n\n") {
        let (mut pkg, mut ver, mut arch, mut file, mut size, mut sha) =
            (None, None, None, None, None, None);
        for line in stanza.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let v = v.trim();
            match k {
                "Package" => pkg = Some(v),
                "Version" => ver = Some(v),
                "Architecture" => arch = Some(v),
                "Filename" => file = Some(v),
                "Size" => size = v.parse::<u64>().ok(),
                "SHA256" => sha = Some(v),
                _ => {}
            }
        }
        if let (Some(p), Some(v), Some(a), Some(f), Some(s), Some(h)) =
            (pkg, ver, arch, file, size, sha)
        {
            let name = archive_name(p, v, a, f);
            if wanted.contains(name.as_str()) {
                out.insert(name, (h.to_ascii_lowercase(), s));
            }
        }
    }
    out
}

/// The name apt stores a downloaded package under: `PKG_VERSION_ARCH.EXT`, each
/// part escaped as apt's QuoteString does (`:` in an epoch becomes `%3a`).
pub fn archive_name(package: &str, version: &str, arch: &str, filename: &str) -> String {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e)
        .unwrap_or(filename);
    format!(
        "{}_{}_{}.{ext}",
        quote(package, "_:"),
        quote(version, "_:"),
        quote(arch, "_:.")
    )
}

fn quote(s: &str, bad: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if bad.as_bytes().contains(&b) || b == b'%' || b <= 0x20 || b >= 0x7f {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Unlinks the files in the image's lists directory (not `lock`, not the
/// directories): each name itself, never what a link there points at.
pub fn drop_lists(root: &Path) -> Result<()> {
    let tree = ImageTree::open(root)?;
    let Ok(names) = tree.list(Path::new(LISTS)) else {
        return Ok(());
    };
    for name in names.iter().filter(|n| n.as_bytes() != b"lock") {
        let rel = Path::new(LISTS).join(name);
        if tree.kind(&rel) != Some(Kind::Dir) {
            tree.remove_file(&rel)?;
        }
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Debian\nCodename: bookworm\nMD5Sum:\n 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 contrib/Contents-all\n\
SHA256:\n 515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f 50060337 main/binary-amd64/Packages\n \
9E0B5AABB2465B3D2E7A7FE27F9913846277833F7A2826E7767ACCCFF5B588C5  8790396 main/binary-amd64/Packages.xz\n \
nothex 12 main/x\nSHA512:\n aa 1 main/binary-amd64/Packages\n";

    #[test]
    fn release_sha256_section_only_with_lowercase_digests() {
        let got = release_sha256(RELEASE);
        assert_eq!(
            got,
            vec![
                (
                    "515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f".to_string(),
                    50060337,
                    "main/binary-amd64/Packages".to_string()
                ),
                (
                    "9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5".to_string(),
                    8790396,
                    "main/binary-amd64/Packages.xz".to_string()
                ),
            ]
        );
        assert!(release_sha256("Origin: x\n").is_empty());
    }

    const PACKAGES: &str = "Package: bsdutils\nSource: util-linux (2.38.1-5+deb12u3)\nVersion: 1:2.38.1-5+deb12u3\nArchitecture: amd64\n\
Description: basic utilities\n Filename: pool/fake_1_amd64.deb\nFilename: pool/main/u/util-linux/bsdutils_2.38.1-5+deb12u3_amd64.deb\n\
Size: 94412\nSHA256: ABCDEF0123\n\nPackage: adduser\nVersion: 3.134\nArchitecture: all\nFilename: pool/main/a/adduser/adduser_3.134_all.deb\n\
Size: 183272\nSHA256: 0011\n\nPackage: nosize\nVersion: 1\nArchitecture: all\nFilename: pool/n.deb\nSHA256: 22\n";

    #[test]
    fn packages_stanzas_give_apt_names_and_digests() {
        let wanted: HashSet<&str> = [
            "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb",
            "adduser_3.134_all.deb",
            "nosize_1_all.deb",
        ]
        .into();
        let got = packages_digests(PACKAGES, &wanted);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got["bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb"],
            ("abcdef0123".to_string(), 94412)
        );
        assert_eq!(got["adduser_3.134_all.deb"], ("0011".to_string(), 183272));
        let none: HashSet<&str> = ["other_1_all.deb"].into();
        assert!(packages_digests(PACKAGES, &none).is_empty());
    }

    #[test]
    fn archive_names_are_quoted_as_apt_quotes_them() {
        assert_eq!(
            archive_name(
                "zlib1g",
                "1:1.2.13.dfsg-1",
                "amd64",
                "pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_amd64.deb"
            ),
            "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb"
        );
        assert_eq!(
            archive_name("a_b", "1.0 x%", "i.386", "p/a.udeb"),
            "a%5fb_1.0%20x%25_i%2e386.udeb"
        );
        assert_eq!(
            archive_name(
                "tzdata",
                "2026b-0+deb12u1",
                "all",
                "tzdata_2026b-0+deb12u1_all.deb"
            ),
            "tzdata_2026b-0+deb12u1_all.deb"
        );
    }

    #[test]
    fn lists_are_read_and_dropped_inside_the_image_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join(LISTS)).unwrap();
        let outside = d.path().join("secret");
        std::fs::write(&outside, b"host file").unwrap();
        std::fs::write(root.join(LISTS).join("a_InRelease"), b"inside").unwrap();
        std::os::unix::fs::symlink(&outside, root.join(LISTS).join("b_InRelease")).unwrap();
        let tree = ImageTree::open(&root).unwrap();
        let list = |n: &str| Path::new(LISTS).join(n);
        assert_eq!(
            tree.read_at_most(&list("a_InRelease"), 100).unwrap(),
            b"inside"
        );
        assert!(
            tree.read_at_most(&list("b_InRelease"), 100).is_err(),
            "a list linked to a host file is refused"
        );
        assert!(
            tree.read_at_most(&list("a_InRelease"), 3).is_err(),
            "over the limit"
        );
        assert!(
            tree.read_at_most(Path::new(LISTS), 100).is_err(),
            "a directory is not a list"
        );
        drop_lists(&root).unwrap();
        assert!(std::fs::read_dir(root.join(LISTS))
            .unwrap()
            .next()
            .is_none());
        assert!(outside.exists(), "unlinking a symlink leaves its target");
        // A link in a directory component resolves inside the image.
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/x_InRelease"), b"image's own").unwrap();
        std::fs::remove_dir(root.join(LISTS)).unwrap();
        std::os::unix::fs::symlink("/etc", root.join(LISTS)).unwrap();
        assert_eq!(
            tree.read_at_most(&list("x_InRelease"), 100).unwrap(),
            b"image's own"
        );
    }
}
