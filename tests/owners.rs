//! Builds by a user with no subordinate ids (`kilnsolo`): kiln records the
//! owners hooks and packages ask for (sandbox::owners) and every output gives
//! them back, so the image matches one built with a range.

mod common;

use common::qemu::{Boot, BootOptions, Firmware};
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Owner, group and mode of every entry of a tar, by path.
fn listing(tar: &Path) -> BTreeMap<String, String> {
    let o = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "tar -tvf {}", tar.display());
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        // drwxr-xr-x 0/0   0 2026-01-01 00:00 ./etc -> target
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "unexpected tar listing line: {line}");
        let name = f[5..].join(" ");
        let name = name
            .split(" -> ")
            .next()
            .unwrap()
            .split(" link to ")
            .next()
            .unwrap();
        // Directories are listed with a trailing slash.
        let name = match name.trim_end_matches('/') {
            "." | "" => "./",
            n => n,
        };
        out.insert(name.to_string(), format!("{} {}", f[0], f[1]));
    }
    out
}

fn build(
    user: Option<&User>,
    scratch: &Scratch,
    name: &str,
    formats: &str,
    extra: &[&str],
) -> (PathBuf, String) {
    let out = scratch.join(name);
    let tmp = scratch.join(&format!("tmp-{name}"));
    std::fs::create_dir_all(&tmp).unwrap();
    if let Some(u) = user {
        nix::unistd::chown(
            &tmp,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .unwrap();
    }
    let mut args = vec!["-t", formats, "-o", out.to_str().unwrap()];
    args.extend(IMAGE_FLAVOURS);
    args.extend(extra);
    let o = run_ok(
        kiln_as(user, "disk-image-create", &args)
            .env("ELEMENTS_PATH", test_flavours_path(&[]))
            .env("TMPDIR", &tmp),
    );
    assert!(
        std::fs::read_dir(&tmp).unwrap().next().is_none(),
        "the build left files in its TMPDIR"
    );
    (out, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn without_subordinate_ids_the_tar_lists_the_owners_of_a_range_build_and_the_disk_boots() {
    let solo = solo_user();
    let scratch = Scratch::owned_by("owners", Some(&solo));
    let (out, log) = build(Some(&solo), &scratch, "solo", "tar,qcow2", &["boot-report"]);
    assert!(
        log.contains("no subordinate id range"),
        "the plan did not say the build runs without a range:\n{log}"
    );
    let range_scratch = Scratch::new("owners-range");
    let (range_out, _) = build(
        env().user.as_ref(),
        &range_scratch,
        "range",
        "tar",
        &["boot-report"],
    );

    let solo_tar = PathBuf::from(format!("{}.tar", out.display()));
    let mine = listing(&solo_tar);
    let theirs = listing(&PathBuf::from(format!("{}.tar", range_out.display())));
    let differ: Vec<String> = mine
        .keys()
        .chain(theirs.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| mine.get(*k) != theirs.get(*k))
        .map(|k| {
            format!(
                "{k}: without range {:?}, with range {:?}",
                mine.get(k),
                theirs.get(k)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} entries differ from the range build:\n{}",
        differ.len(),
        theirs.len(),
        differ.join("\n")
    );
    assert!(
        mine.len() > 5000,
        "suspiciously small image: {} entries",
        mine.len()
    );
    assert_eq!(
        mine.get("./etc/shadow").map(String::as_str),
        Some("-rw-r----- 0/42")
    );
    // Owners other than root exist at all (not two all-root listings).
    let others = mine.values().filter(|v| !v.ends_with(" 0/0")).count();
    assert!(others >= 5, "only {others} entries not owned by root:root");

    // The recording itself never reaches an output.
    let o = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-tvvf"])
        .arg(&solo_tar)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        !text.contains("user.kiln"),
        "the tar carries kiln's owner attribute"
    );

    // The disk boots, and apt's sandbox user can use apt's partial directories.
    let qcow2 = PathBuf::from(format!("{}.qcow2", out.display()));
    let mut g = Boot::start(&qcow2, &BootOptions::new(Firmware::Bios, "qcow2")).unwrap();
    g.wait_for("login:", Duration::from_secs(420))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.send_line("root").unwrap();
    g.wait_for("#", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.send_line(
        "apt-get check >/dev/null && /usr/lib/apt/apt-helper drop-privs -- test -w /var/lib/apt/lists/partial \
         && /usr/lib/apt/apt-helper drop-privs -- test -w /var/cache/apt/archives/partial \
         && stat -c 'KILN-%n-%u:%g:%a' /etc/shadow && echo KILN-APT-$((6*7))",
    )
    .unwrap();
    g.wait_for("KILN-APT-42", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("apt in the booted image: {e:#}\n{}", g.console()));
    assert!(
        g.console().contains("KILN-/etc/shadow-0:42:640"),
        "{}",
        g.console()
    );
}

/// The `OWNERS-PROBE name value` lines of the owners-probe flavour's hook.
fn probe_values(log: &str) -> BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| l.split_once("OWNERS-PROBE "))
        .filter_map(|(_, rest)| rest.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn hooks_without_subordinate_ids_see_the_owners_they_set() {
    let solo = solo_user();
    let scratch = Scratch::owned_by("owners-probe", Some(&solo));
    let (out, log) = build(Some(&solo), &scratch, "probe", "tar", &["owners-probe"]);
    let seen = probe_values(&log);
    // The same hook in a build with a subordinate range: the same answers,
    // but for the symlink.
    let range_scratch = Scratch::new("owners-probe-range");
    let (_, range_log) = build(
        env().user.as_ref(),
        &range_scratch,
        "probe",
        "tar",
        &["owners-probe"],
    );
    let mut with_range = probe_values(&range_log);
    assert_eq!(
        with_range.remove("link").as_deref(),
        Some("3:3"),
        "{range_log}"
    );
    let mut recorded = seen.clone();
    recorded.remove("link");
    assert_eq!(
        recorded, with_range,
        "without a range:\n{log}\nwith one:\n{range_log}"
    );
    // What a build with a subordinate range shows, check by check.
    let expected = [
        ("chown", "42:42"),
        ("chgrp-keeps-owner", "42:7"),
        ("chown-clears-setuid", "755"),
        ("ls", "1:1"),
        ("find", "/srv/owners-probe/f"),
        ("hardlink", "1:1"),
        ("moved", "1:1"),
        ("cp-a", "1:1"),
        ("dir", "100:101"),
        ("install", "5:8:640"),
        ("unmapped", "refused"),
        ("su", "65534:65534:"),
        ("apt-drop-privs", "42"),
        ("apt-partial", "writable"),
        ("shadow", "0:42:640"),
    ];
    for (k, v) in expected {
        assert_eq!(
            seen.get(k).map(String::as_str),
            Some(v),
            "check {k}:\n{log}"
        );
    }
    // The one thing a range build does differently, said where it happens:
    // a symlink cannot carry the record.
    assert_eq!(seen.get("link").map(String::as_str), Some("0:0"), "{log}");
    assert!(
        log.contains("/srv/owners-probe/link stays owned by root") && log.contains("(3:3 asked)"),
        "kiln did not say the symlink's owner was not recorded:\n{log}"
    );

    let tar = PathBuf::from(format!("{}.tar", out.display()));
    let l = listing(&tar);
    for (path, want) in [
        ("./srv/owners-probe/f", "-rwxr-xr-x 1/1"),
        ("./srv/owners-probe/moved", "hrwxr-xr-x 1/1"),
        ("./srv/owners-probe/copied", "-rwxr-xr-x 1/1"),
        ("./srv/owners-probe/dir", "drwxr-xr-x 100/101"),
        ("./srv/owners-probe/installed", "-rw-r----- 5/8"),
        ("./etc/shadow", "-rw-r----- 0/42"),
    ] {
        assert_eq!(
            l.get(path).map(String::as_str),
            Some(want),
            "{path} in the tar"
        );
    }
}
