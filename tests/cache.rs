//! The base-tree cache: keyed by everything that made the tree, verified on
//! read, safe under concurrent builds.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cache key the plan computes, from `--dry-run`; `extra` is options and flavours.
fn key(s: &Scratch, extra: &[&str], envs: &[(&str, &str)]) -> String {
    let out = s.join("x");
    let mut args = vec!["--dry-run", "-o", out.to_str().unwrap()];
    args.extend(extra);
    let mut cmd = kiln("disk-image-create", &args);
    cmd.env("ELEMENTS_PATH", s.path.join("flavours"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let o = run_ok(&mut cmd);
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("base-tree cache key: "))
        .expect("key in the plan")
        .to_string()
}

fn mirror_env() -> Vec<(&'static str, &'static str)> {
    vec![]
}

#[test]
fn changed_root_hook_misses_the_cache() {
    let s = Scratch::new("key-hook");
    s.flavour(
        "extra",
        &[
            ("README.md", "x\n", false),
            ("root.d/90-tweak", "#!/bin/sh\necho one\n", true),
        ],
    );
    let a = key(&s, &["debian", "extra"], &mirror_env());
    s.flavour(
        "extra",
        &[("root.d/90-tweak", "#!/bin/sh\necho two\n", true)],
    );
    let b = key(&s, &["debian", "extra"], &mirror_env());
    assert_ne!(a, b);
    assert_eq!(
        b,
        key(&s, &["debian", "extra"], &mirror_env()),
        "unchanged inputs give the same key"
    );
}

#[test]
fn changed_package_list_misses_the_cache() {
    let s = Scratch::new("key-pkgs");
    s.flavour(
        "extra",
        &[
            ("README.md", "x\n", false),
            ("package-installs.yaml", "less:\n", false),
        ],
    );
    let a = key(&s, &["debian", "extra"], &[]);
    s.flavour(
        "extra",
        &[("package-installs.yaml", "less:\nfile:\n", false)],
    );
    let b = key(&s, &["debian", "extra"], &[]);
    assert_ne!(a, b);
    // -p adds packages too: compared with the same flavours, files and variables
    // without it, which give the same key again.
    assert_eq!(
        b,
        key(&s, &["debian", "extra"], &[]),
        "unchanged inputs give the same key"
    );
    assert_ne!(
        b,
        key(&s, &["-p", "vim-tiny", "debian", "extra"], &[]),
        "-p vim-tiny did not change the key"
    );
}

#[test]
fn changed_mirror_misses_the_cache() {
    let s = Scratch::new("key-mirror");
    std::fs::create_dir_all(s.join("flavours")).unwrap();
    let a = key(
        &s,
        &["debian"],
        &[("DIB_DISTRIBUTION_MIRROR", "http://example.org/mirror-a")],
    );
    let b = key(
        &s,
        &["debian"],
        &[("DIB_DISTRIBUTION_MIRROR", "http://example.org/mirror-b")],
    );
    assert_ne!(a, b);
}

#[test]
fn changed_release_misses_the_cache() {
    let s = Scratch::new("key-release");
    std::fs::create_dir_all(s.join("flavours")).unwrap();
    let a = key(&s, &["debian"], &[("DIB_RELEASE", "bookworm")]);
    let b = key(&s, &["debian"], &[("DIB_RELEASE", "trixie")]);
    assert_ne!(a, b);
}

fn tar_build(s: &Scratch, name: &str, cache: Option<&Path>) -> Output {
    let out = s.join(name);
    let tmp = s.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    chown_tree_to_user(&tmp);
    let mut args = vec!["-t", "tar", "-o", out.to_str().unwrap()];
    let cache_s;
    if let Some(c) = cache {
        cache_s = c.display().to_string();
        args.extend(["--image-cache", cache_s.as_str()]);
    }
    args.extend(IMAGE_FLAVOURS);
    kiln("disk-image-create", &args)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap()
}

/// `mode owner name` of every entry: what must not change between two builds.
fn tree_listing(tar: &Path) -> Vec<String> {
    let o = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(tar)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[1], f[5..].join(" "))
        })
        .collect()
}

#[test]
fn unchanged_build_hits_the_cache_and_makes_the_same_tree() {
    let s = Scratch::new("hit");
    let first = tar_build(&s, "one", None);
    assert!(first.status.success(), "{}", output_text(&first));
    let second = tar_build(&s, "two", None);
    assert!(second.status.success(), "{}", output_text(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("root.d (cached)"),
        "{}",
        output_text(&second)
    );
    assert_eq!(
        tree_listing(&s.join("one.tar")),
        tree_listing(&s.join("two.tar"))
    );
}

/// A private cache seeded with the shared package downloads (and, if asked, the
/// shared base trees), so these tests don't disturb others.
fn private_cache(s: &Scratch, with_trees: bool) -> PathBuf {
    let first = tar_build(s, "seed", None);
    assert!(first.status.success(), "{}", output_text(&first));
    let _ = std::fs::remove_file(s.join("seed.tar"));
    let home = env()
        .user
        .as_ref()
        .map(|u| u.home.clone())
        .unwrap_or_else(|| std::env::var("HOME").unwrap().into());
    let shared = home.join(".cache/kiln");
    let cache = s.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut parts = vec!["apt"];
    if with_trees {
        parts.push("trees");
    }
    for p in parts {
        assert!(Command::new("cp")
            .arg("-a")
            .arg(shared.join(p))
            .arg(cache.join(p))
            .status()
            .unwrap()
            .success());
    }
    chown_tree_to_user(&cache);
    cache
}

#[test]
fn corrupted_cache_entry_is_detected_discarded_and_rebuilt() {
    let s = Scratch::new("corrupt");
    let cache = private_cache(&s, true);
    for e in std::fs::read_dir(cache.join("trees")).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".tar.zst") {
            let mut bytes = std::fs::read(e.path()).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(e.path(), bytes).unwrap();
        }
    }
    let o = tar_build(&s, "img", Some(&cache));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        err.contains("was corrupt") && err.contains("rebuilding"),
        "{err}"
    );
    assert!(err.contains("root.d (caching)"), "{err}");
    let again = tar_build(&s, "img2", Some(&cache));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("root.d (cached)"),
        "{}",
        output_text(&again)
    );
}

#[test]
fn two_builds_started_at_once_with_the_same_key_both_succeed() {
    let s = Scratch::new("concurrent");
    let cache = private_cache(&s, false);
    let spawn = |name: &str| {
        let out = s.join(name);
        let tmp = s.join(&format!("tmp-{name}"));
        std::fs::create_dir_all(&tmp).unwrap();
        chown_tree_to_user(&tmp);
        let mut args = vec![
            "-t".to_string(),
            "tar".into(),
            "-o".into(),
            out.display().to_string(),
            "--image-cache".into(),
            cache.display().to_string(),
        ];
        args.extend(IMAGE_FLAVOURS.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kiln("disk-image-create", &args)
            .env("TMPDIR", &tmp)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", output_text(&a));
    assert!(b.status.success(), "{}", output_text(&b));
    let built = [&a, &b]
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("root.d (caching)"))
        .count();
    assert_eq!(
        built, 1,
        "exactly one build bootstraps; the other waits and reuses it"
    );
    assert_eq!(
        tree_listing(&s.join("a.tar")),
        tree_listing(&s.join("b.tar"))
    );
}
