//! docs/architecture.md §10.6: the package cache is bound writable into the image, and nothing a
//! hook leaves there is trusted by a later build without verification.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Leaves in the bound cache what a malicious hook would: setuid and setgid
/// shells, a FIFO, a link to a host file, a directory, an unknown package, and a
/// cached package rewritten with other bytes of the same size (apt checks only
/// the size of a file already there). Records the archive's digests in the image.
const POISON: &str = r#"#!/bin/bash
set -eu
a=/var/cache/apt/archives
apt-get -q update
apt-get -q -y install --reinstall --download-only hostname mawk
apt-cache show --no-all-versions hostname mawk | grep -E '^(Filename|SHA256):' > /root/expected
deb=$(ls "$a"/hostname_*.deb)
size=$(stat -c %s "$deb")
head -c "$size" /dev/zero | tr '\0' x > "$deb"
cp /bin/sh "$a/evil"; chmod 4755 "$a/evil"
cp /bin/sh "$a/evil-gid"; chmod 2755 "$a/evil-gid"
mkfifo "$a/fifo"
ln -s "${DIB_HOST_FILE:?}" "$a/link_1_all.deb"
mkdir -p "$a/sub"; cp /bin/sh "$a/sub/nested"; chmod 4755 "$a/sub/nested"
cp "$a"/mawk_*.deb "$a/planted_1.0_all.deb"
chmod 4777 "$a"
"#;

/// The next build: what it finds in the cache is only genuine packages, on a
/// nosuid,nodev mount, and what it installs from the cache is what the archive
/// signed.
const RECHECK: &str = r#"#!/bin/bash
set -eu
a=/var/cache/apt/archives
fail() { echo "FAIL: $*"; exit 1; }
shopt -s nullglob
opts=$(awk -v m="$a" '$5 == m { print $6 }' /proc/self/mountinfo)
case ",$opts," in *,nosuid,*nodev,*|*,nodev,*nosuid,*) ;; *) fail "$a is mounted $opts, not nosuid,nodev" ;; esac
for f in "$a"/*; do
    if [ -L "$f" ] || [ ! -f "$f" ] || [ -u "$f" ] || [ -g "$f" ] || [ "${f%.deb}" = "$f" ]; then
        fail "the cache still holds $(ls -ld "$f")"
    fi
done
if ls "$a" | grep -q '^mawk_'; then fail "the mawk package changed since the last build is still cached"; fi
apt-get -q update
apt-get -q -y install --reinstall hostname mawk
for p in hostname mawk; do
    want=$(apt-cache show --no-all-versions "$p" | sed -n 's/^SHA256: //p')
    got=$(sha256sum "$a/$p"_*.deb | cut -d' ' -f1)
    [ "$want" = "$got" ] || fail "$p: the cached package has SHA-256 $got, the archive says $want"
done
echo "recheck: every package genuine"
"#;

/// Downloads one more package into the cache, as any install.d hook may.
const FETCH: &str = r#"#!/bin/bash
set -eu
apt-get -q update
apt-get -q -y install --reinstall --download-only sed
ls /var/cache/apt/archives/sed_*.deb
"#;

fn home() -> PathBuf {
    env()
        .user
        .as_ref()
        .map(|u| u.home.clone())
        .unwrap_or_else(|| std::env::var("HOME").unwrap().into())
}

fn build(s: &Scratch, name: &str, cache: Option<&Path>, extra: &[&str]) -> Output {
    build_with(s, name, cache, extra, &[])
}

fn build_with(
    s: &Scratch,
    name: &str,
    cache: Option<&Path>,
    extra: &[&str],
    envs: &[(&str, &Path)],
) -> Output {
    let out = s.join(name);
    let tmp = s.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    chown_tree_to_user(&tmp);
    let mut args: Vec<String> = vec![
        "-t".into(),
        "tar".into(),
        "-o".into(),
        out.display().to_string(),
    ];
    if let Some(c) = cache {
        args.extend(["--image-cache".into(), c.display().to_string()]);
    }
    args.extend(IMAGE_FLAVOURS.iter().chain(extra).map(|f| f.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = kiln("disk-image-create", &args);
    cmd.env("TMPDIR", &tmp)
        .env("ELEMENTS_PATH", s.path.join("flavours"));
    // A host file for the hook to link to (hooks inside the image get no host paths of their own).
    let home = env()
        .user
        .as_ref()
        .map(|u| u.home.clone())
        .unwrap_or_else(|| std::env::var("HOME").unwrap().into());
    cmd.env("DIB_HOST_FILE", home.join(".profile"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn tree_key(s: &Scratch) -> String {
    let out = s.join("x");
    let mut args = vec!["--dry-run", "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    let o = run_ok(kiln("disk-image-create", &args).env("ELEMENTS_PATH", s.path.join("flavours")));
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("base-tree cache key: "))
        .expect("key in the plan")
        .to_string()
}

/// A cache of the test's own (no other build shares its package directory) that
/// starts with the shared base tree, so no bootstrap is needed.
fn private_cache(s: &Scratch) -> PathBuf {
    let key = tree_key(s);
    let (from, cache) = (home().join(".cache/kiln/trees"), s.join("cache"));
    std::fs::create_dir_all(cache.join("trees")).unwrap();
    // The plan shows the key's first 16 digits.
    let names: Vec<_> = std::fs::read_dir(&from)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&key) && (n.ends_with(".tar.zst") || n.ends_with(".json")))
        .collect();
    assert_eq!(
        names.len(),
        2,
        "the shared base tree {key} in {}: {names:?}",
        from.display()
    );
    for name in names {
        let (src, dst) = (from.join(&name), cache.join("trees").join(&name));
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        }
    }
    chown_tree_to_user(&cache);
    cache
}

fn sha256(p: &Path) -> String {
    Sha256::digest(std::fs::read(p).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The package directory under `cache`/apt (the one bound into builds).
fn package_dir(cache: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("apt"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "one package directory in {}: {dirs:?}",
        cache.display()
    );
    dirs[0].clone()
}

/// Every entry under `dir` that is setuid or setgid.
fn setid_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let meta = e.metadata().unwrap();
        if meta.mode() & 0o6000 != 0 {
            out.push(e.path());
        }
        if meta.is_dir() {
            out.extend(setid_files(&e.path()));
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// archive file name → SHA-256, from the `apt-cache show` lines the poison hook kept.
fn expected_digests(tar: &Path) -> BTreeMap<String, String> {
    let o = Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg("./root/expected")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let mut out = BTreeMap::new();
    let mut file = None;
    for l in text.lines() {
        if let Some(f) = l.strip_prefix("Filename: ") {
            file = f.rsplit('/').next().map(str::to_string);
        } else if let (Some(sha), Some(f)) = (l.strip_prefix("SHA256: "), file.take()) {
            out.insert(f, sha.to_string());
        }
    }
    assert_eq!(out.len(), 2, "{text}");
    out
}

fn assert_only_genuine(dir: &Path, expected: &BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            meta.file_type().is_file() && name.ends_with(".deb"),
            "{name} is left in {}",
            dir.display()
        );
        assert_eq!(meta.mode() & 0o7777, 0o644, "{name}");
        if let Some(u) = &env().user {
            assert_eq!(
                (meta.uid(), meta.gid()),
                (u.uid, u.gid),
                "{name} belongs to the user"
            );
        }
        if let Some(want) = expected.get(&name) {
            assert_eq!(
                &sha256(&e.path()),
                want,
                "{name} in the cache is not the archive's package"
            );
        }
    }
}

#[test]
fn a_poisoned_package_cache_is_cleaned_and_the_next_build_installs_genuine_packages() {
    let s = Scratch::new("poison");
    s.flavour(
        "poison",
        &[
            ("README.md", "poisons the package cache\n", false),
            ("install.d/50-poison", POISON, true),
        ],
    );
    s.flavour(
        "recheck",
        &[
            ("README.md", "checks the package cache\n", false),
            ("install.d/50-recheck", RECHECK, true),
        ],
    );
    s.flavour(
        "fetch",
        &[
            ("README.md", "downloads a package\n", false),
            ("install.d/50-fetch", FETCH, true),
        ],
    );

    // The shared cache: the base tree for the private one, and private itself.
    let seed = build(&s, "seed", None, &[]);
    assert!(seed.status.success(), "{}", output_text(&seed));
    let shared = home().join(".cache/kiln");
    for d in [shared.clone(), shared.join("apt"), shared.join("trees")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(setid_files(&shared), Vec::<PathBuf>::new());

    let cache = private_cache(&s);
    let one = build(&s, "one", Some(&cache), &["poison"]);
    assert!(one.status.success(), "{}", output_text(&one));
    let err = String::from_utf8_lossy(&one.stderr);
    assert!(
        err.contains("root.d (cached)"),
        "the private cache reuses the shared base tree:\n{err}"
    );
    assert!(err.contains("package cache verified:"), "{err}");
    let expected = expected_digests(&s.join("one.tar"));
    let dir = package_dir(&cache);
    assert_eq!(
        setid_files(&cache),
        Vec::<PathBuf>::new(),
        "setuid or setgid files left in the cache"
    );
    assert_only_genuine(&dir, &expected);
    for gone in [
        "evil",
        "evil-gid",
        "fifo",
        "link_1_all.deb",
        "sub",
        "planted_1.0_all.deb",
        "partial",
        "lock",
    ] {
        assert!(
            std::fs::symlink_metadata(dir.join(gone)).is_err(),
            "{gone} is left in the cache"
        );
    }
    let mawk = expected.keys().find(|k| k.starts_with("mawk_")).unwrap();
    assert!(dir.join(mawk).exists(), "the genuine download is kept");
    for d in [cache.clone(), cache.join("apt"), cache.join("trees")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(
        mode(&dir),
        0o755,
        "the hook's chmod of the cache directory is undone"
    );

    // What a build that died before kiln could verify would leave: a package
    // rewritten in place (same size), and a setuid file.
    let size = std::fs::metadata(dir.join(mawk)).unwrap().len() as usize;
    std::fs::write(dir.join(mawk), vec![b'y'; size]).unwrap();
    std::fs::copy("/bin/sh", dir.join("evil2")).unwrap();
    std::fs::set_permissions(
        dir.join("evil2"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    chown_tree_to_user(&dir);

    let two = build(&s, "two", Some(&cache), &["recheck"]);
    assert!(two.status.success(), "{}", output_text(&two));
    assert!(
        String::from_utf8_lossy(&two.stderr).contains("recheck: every package genuine"),
        "{}",
        output_text(&two)
    );
    assert_eq!(setid_files(&cache), Vec::<PathBuf>::new());
    assert_only_genuine(&dir, &expected);
    for name in expected.keys() {
        assert!(dir.join(name).exists(), "{name} is cached again, genuine");
    }
    let index_path = dir.parent().unwrap().join(format!(
        "{}.verified.json",
        dir.file_name().unwrap().to_string_lossy()
    ));
    let index = std::fs::read_to_string(&index_path).unwrap();
    for (name, sha) in &expected {
        assert!(
            index.contains(name) && index.contains(sha),
            "the index records {name}"
        );
    }

    // A keyring that vouches for nothing: what was proven stays, nothing new is kept.
    let keyring = s.join("empty.gpg");
    std::fs::write(&keyring, b"").unwrap();
    let three = build_with(
        &s,
        "three",
        Some(&cache),
        &["fetch"],
        &[("DIB_APT_KEYRING", &keyring)],
    );
    assert!(three.status.success(), "{}", output_text(&three));
    let err = String::from_utf8_lossy(&three.stderr);
    assert!(
        err.contains("not kept: no package list in the image is signed by a trusted key"),
        "{err}"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("sed_")),
        "an unverifiable download is not kept: {names:?}"
    );
    for name in expected.keys() {
        assert!(names.contains(name), "{name} was proven before and stays");
    }
}
