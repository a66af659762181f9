//! Reproducible images: with the same inputs and SOURCE_DATE_EPOCH, two builds
//! of `debian vm` give the same bytes in every format — also when the second
//! one has another output name, another working directory and a flavour whose
//! files were touched; another epoch gives other disk ids and boots all the
//! same; the manifest says what is inside and what came out.

mod common;

use common::qemu::{Boot, BootOptions, Firmware};
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const EPOCH: &str = "1700000000";
const FORMATS: [&str; 6] = ["tar", "raw", "qcow2", "vhd", "vmdk", "squashfs"];
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The test flavour's hook writes a file during the build (the wall clock is its
/// mtime); its static/ file is copied in with the flavour's own times, which
/// the second build changes by touching every file.
const INSTALL_HOOK: &str =
    "#!/bin/bash\nset -eu\necho written-by-install.d > /etc/kiln-repro-written\n";

struct Build {
    scratch: Scratch,
    out: PathBuf,
    log: String,
}

impl Build {
    fn file(&self, ext: &str) -> PathBuf {
        PathBuf::from(format!("{}.{ext}", self.out.display()))
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.file("manifest.json")).unwrap()).unwrap()
    }
}

fn repro_flavour(scratch: &Scratch) -> PathBuf {
    scratch.flavour(
        "repro",
        &[
            (
                "README.md",
                "test flavour: files copied with their mtime\n",
                false,
            ),
            (
                "static/etc/kiln-repro-data",
                "data from the flavour\n",
                false,
            ),
            ("install.d/50-repro", INSTALL_HOOK, true),
        ],
    )
}

/// `debian vm` + the test flavour, built as `name` in a working directory of
/// its own (`cwd`, relative `-o`), with `extra` environment.
fn build(tag: &str, name: &str, formats: &[&str], extra: &[(&str, &str)], touch: bool) -> Build {
    let scratch = Scratch::new(tag);
    let flavours = repro_flavour(&scratch);
    if touch {
        let st = Command::new("find")
            .arg(&flavours)
            .args(["-exec", "touch", "{}", "+"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let cwd = scratch.join("work");
    let tmp = scratch.join("tmp");
    for d in [&cwd, &tmp] {
        std::fs::create_dir_all(d).unwrap();
        chown_to_user(d);
    }
    let types = formats.join(",");
    let mut args = vec!["-t", &types, "-o", name];
    args.extend(IMAGE_FLAVOURS);
    args.push("repro");
    let mut cmd = kiln("disk-image-create", &args);
    cmd.current_dir(&cwd)
        .env("ELEMENTS_PATH", test_flavours_path(&[&flavours]))
        .env("TMPDIR", &tmp);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let o = run_ok(&mut cmd);
    let expected: Vec<String> = formats.iter().map(|f| format!("{name}.{f}")).collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_no_leftovers(&tmp, &cwd, &expected);
    Build {
        out: cwd.join(name),
        scratch,
        log: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(o.status.success(), "sha256sum {}", p.display());
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

/// The first build, shared by the tests here.
fn first() -> &'static Build {
    static B: OnceLock<Build> = OnceLock::new();
    B.get_or_init(|| {
        build(
            "repro-a",
            "first",
            &FORMATS,
            &[("SOURCE_DATE_EPOCH", EPOCH)],
            false,
        )
    })
}

#[test]
fn two_builds_give_the_same_bytes_in_every_format() {
    let a = first();
    let b = build(
        "repro-b",
        "second",
        &FORMATS,
        &[("SOURCE_DATE_EPOCH", EPOCH)],
        true,
    );
    assert!(
        a.log
            .contains("times clamped to SOURCE_DATE_EPOCH=1700000000"),
        "{}",
        a.log
    );
    // The manifests first (they show which input differed), apart from the
    // timings and where the flavours are.
    let strip = |mut m: serde_json::Value| {
        let top = m.as_object_mut().unwrap();
        top.remove("timings");
        // The outputs are compared below, file by file.
        top.remove("outputs");
        m["variables"]
            .as_object_mut()
            .unwrap()
            .remove("ELEMENTS_PATH");
        for f in m["flavours"].as_array_mut().unwrap() {
            f.as_object_mut().unwrap().remove("dir");
        }
        m
    };
    assert_eq!(strip(a.manifest()), strip(b.manifest()));
    let mut differ = Vec::new();
    for f in FORMATS {
        let (x, y) = (sha256(&a.file(f)), sha256(&b.file(f)));
        eprintln!("{f}: {x} {y}");
        if x != y {
            differ.push(f);
        }
    }
    assert!(differ.is_empty(), "these outputs differ: {differ:?}");
    assert_eq!(a.manifest()["seed_origin"], "inputs");
}

/// Partition and filesystem ids as the disk itself records them.
fn disk_ids(raw: &Path) -> BTreeMap<String, String> {
    let o = Command::new("sfdisk")
        .arg("--json")
        .arg(raw)
        .output()
        .unwrap();
    assert!(o.status.success(), "sfdisk --json {}", raw.display());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &j["partitiontable"];
    let mut ids = BTreeMap::new();
    ids.insert("disk".to_string(), t["id"].as_str().unwrap().to_string());
    for p in t["partitions"].as_array().unwrap() {
        ids.insert(
            p["node"]
                .as_str()
                .unwrap()
                .rsplit('.')
                .next()
                .unwrap()
                .to_string(),
            p["uuid"].as_str().unwrap().to_string(),
        );
    }
    ids
}

#[test]
fn another_epoch_or_seed_gives_other_ids_and_boots_all_the_same() {
    let a = first();
    let c = build(
        "repro-c",
        "other",
        &["raw", "qcow2"],
        &[("SOURCE_DATE_EPOCH", "1700000001")],
        false,
    );
    let (ia, ic) = (disk_ids(&a.file("raw")), disk_ids(&c.file("raw")));
    assert_eq!(ia.len(), 4, "{ia:?}");
    for (k, v) in &ia {
        assert_ne!(Some(v), ic.get(k), "{k} kept its id with another epoch");
    }
    let (sa, sc) = (a.manifest()["seed"].clone(), c.manifest()["seed"].clone());
    assert_ne!(sa, sc);
    // --seed with the first build's seed gives its ids back, whatever the epoch.
    let d = build(
        "repro-d",
        "seeded",
        &["raw"],
        &[
            ("SOURCE_DATE_EPOCH", "1700000001"),
            ("DIB_IMAGE_SEED", sa.as_str().unwrap()),
        ],
        false,
    );
    assert_eq!(disk_ids(&d.file("raw")), ia);
    assert_eq!(d.manifest()["seed_origin"], "given");
    boot(&c.file("qcow2"), Firmware::Uefi);
}

#[test]
fn a_reproducible_image_boots_to_a_login_prompt() {
    boot(&first().file("qcow2"), Firmware::Bios);
}

fn boot(image: &Path, firmware: Firmware) {
    let mut g = Boot::start(image, &BootOptions::new(firmware, "qcow2")).unwrap();
    let t = g
        .wait_for("login:", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "{} ({firmware:?}): login after {:.1}s",
        image.display(),
        t.as_secs_f64()
    );
}

#[test]
fn the_manifest_matches_the_image_and_the_files() {
    let a = first();
    let m = a.manifest();
    // dpkg's own answer, from the database inside the tar.
    let admin = a.scratch.join("dpkg-admin");
    std::fs::create_dir_all(&admin).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&admin)
        .arg("-xf")
        .arg(a.file("tar"))
        .args(["--strip-components=4", "./var/lib/dpkg/status"])
        .status()
        .unwrap();
    assert!(st.success());
    let q = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f", "${Package} ${Version}\\n", "linux-image-*"])
        .output()
        .unwrap();
    let installed: Vec<(String, String)> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, v)| !v.is_empty())
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect();
    let kernel = installed
        .iter()
        .find(|(p, _)| p.starts_with("linux-image-") && p.chars().any(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no kernel package in the image: {installed:?}"));
    let listed = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == kernel.0.as_str())
        .unwrap_or_else(|| panic!("the manifest does not list {}", kernel.0));
    assert_eq!(listed["version"], kernel.1.as_str());
    assert_eq!(listed["architecture"], "amd64");
    let outputs = m["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), FORMATS.len());
    for o in outputs {
        let name = o["name"].as_str().unwrap();
        let path = a.out.with_file_name(name);
        assert_eq!(o["sha256"], sha256(&path).as_str(), "{name}");
        assert_eq!(o["size"], std::fs::metadata(&path).unwrap().len(), "{name}");
    }
    assert_eq!(m["source_date_epoch"], 1_700_000_000);
    // The bootstrap copied the build host's name in; the image must not keep it.
    let hostname = Command::new("tar")
        .arg("-xOf")
        .arg(a.file("tar"))
        .arg("./etc/hostname")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout), "localhost\n");
    assert!(m["timings"].as_array().is_some_and(|t| !t.is_empty()));
}
