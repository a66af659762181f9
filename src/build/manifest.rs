//! `NAME.manifest.json`, written beside the outputs: what went into the image
//! and what came out — kiln's version, the flavours (where each came from and a
//! hash of its files), the options and `DIB_*` variables, the base tree's cache
//! key, every installed package, each output's size and SHA-256 — and, apart
//! in `timings`, how long each step took. Everything but `timings` depends
//! only on the inputs and outputs, so two manifests compare with
//! `jq 'del(.timings)'`.

use super::config::Config;
use super::plan::Plan;
use crate::flavour::Resolved;
use crate::tree::ImageTree;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// dpkg's status file is a few MiB on a large image.
const STATUS_LIMIT: u64 = 256 << 20;

/// Variable names whose values stay out of the manifest (it sits beside the image,
/// often published with it).
const SECRET_PARTS: [&str; 4] = ["PASSWORD", "SECRET", "TOKEN", "PRIVATE"];

#[derive(Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// The packages dpkg records as installed, sorted by name and architecture.
pub fn installed_packages(tree: &ImageTree) -> Result<Vec<Package>> {
    let status = Path::new("var/lib/dpkg/status");
    if !tree.is_file(status) {
        return Ok(Vec::new());
    }
    let text = tree.read_at_most(status, STATUS_LIMIT)?;
    Ok(parse_status(&String::from_utf8_lossy(&text)))
}

fn parse_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k == name).then(|| v.trim().to_string())
            })
        };
        let installed = field("Status").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(name), Some(version)) = (installed, field("Package"), field("Version")) {
            out.push(Package {
                name,
                version,
                arch: field("Architecture").unwrap_or_default(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

/// A flavour's content: every file's path, kind, executable bit and bytes (a
/// link's target), in path order; mtimes and owners do not count.
pub fn flavour_hash(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    hash_dir(dir, Path::new(""), &mut h)?;
    Ok(super::apt_lists::hex(&h.finalize()))
}

fn hash_dir(root: &Path, rel: &Path, h: &mut Sha256) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        let tag = |kind: &str, h: &mut Sha256| {
            h.update(kind.as_bytes());
            h.update(rel.as_os_str().as_encoded_bytes());
            h.update([0]);
        };
        if meta.is_dir() {
            if name == "__pycache__" {
                continue;
            }
            tag("d", h);
            hash_dir(root, &rel, h)?;
        } else if meta.file_type().is_symlink() {
            tag("l", h);
            h.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            if rel.extension().is_some_and(|e| e == "pyc") {
                continue;
            }
            tag(
                if meta.permissions().mode() & 0o111 != 0 {
                    "x"
                } else {
                    "f"
                },
                h,
            );
            h.update(meta.len().to_le_bytes());
            h.update(file_sha256(&path)?.as_bytes());
        }
    }
    Ok(())
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    super::apt_cache::sha256_hex(&mut f)
}

/// What shaped the build, as the manifest records it: kiln's version, the
/// distribution, the flavours with where each came from and a hash of its
/// files, the options, the hooks' variables (secrets omitted), the base tree's
/// cache key and SOURCE_DATE_EPOCH.
pub fn inputs(
    c: &Config,
    resolved: &Resolved,
    layout: crate::disk::Layout,
    cache_key: &str,
    distro: &str,
) -> Result<Map<String, Value>> {
    let mut flavours = Vec::new();
    for f in &resolved.flavours {
        flavours.push(json!({
            "name": f.name,
            "dir": f.dir.display().to_string(),
            "sha256": flavour_hash(&f.dir)?,
            "stands_in_for": f.stands_in_for.as_ref().map(|d| d.display().to_string()),
        }));
    }
    let mut vars = Map::new();
    if !c.clear_env {
        for (k, v) in c.vars.for_hooks() {
            let secret = SECRET_PARTS.iter().any(|p| k.contains(p));
            vars.insert(
                k.to_string(),
                Value::String(if secret {
                    "(not recorded)".into()
                } else {
                    v.into()
                }),
            );
        }
    }
    let value = json!({
        "kiln_version": env!("CARGO_PKG_VERSION"),
        "distribution": {"name": distro, "release": c.release, "arch": c.arch, "mirror": c.mirror},
        "flavours": flavours,
        "options": {
            "formats": c.output_names(),
            "fs_type": c.fs_type.as_str(),
            "root_label": c.root_label,
            "image_size": c.image_size,
            "packages": c.packages,
            "compress": c.compress,
            "qemu_img_options": c.qemu_img_options,
            "mkfs_options": c.mkfs_options,
            "layout": layout.as_str(),
        },
        "variables": vars,
        "base_tree_cache_key": cache_key,
        "source_date_epoch": c.source_date_epoch,
    });
    let Value::Object(map) = value else {
        unreachable!("json! of an object literal is an object")
    };
    Ok(map)
}

/// Variables that say where the build ran or what its files are called, not
/// what it made (the flavours' content is hashed on its own).
const LOCATION_VARS: [&str; 10] = [
    "ELEMENTS_PATH",
    "IMAGE_NAME",
    "DIB_IMAGE_CACHE",
    "DIB_MANIFEST_SAVE_DIR",
    "DIB_MIN_TMPFS",
    "DIB_NO_TMPFS",
    "DIB_NO_TIMESTAMP",
    "DIB_DEBUG_TRACE",
    "DIB_QUIET",
    "TMP_DIR",
];

/// The digest a seed is made of when SOURCE_DATE_EPOCH asks for reproducible
/// outputs: the [`inputs`] without what only says where the build ran — the
/// flavours' directories, the output formats (each format is made from the
/// same disk), cache and scratch locations — so another user on another
/// machine with the same inputs gets the same identities.
pub fn seed_digest(inputs: &Map<String, Value>) -> Vec<u8> {
    let mut v = inputs.clone();
    if let Some(Value::Array(fl)) = v.get_mut("flavours") {
        for f in fl.iter_mut().filter_map(Value::as_object_mut) {
            f.remove("dir");
            f.remove("stands_in_for");
        }
    }
    if let Some(Value::Object(o)) = v.get_mut("options") {
        o.remove("formats");
    }
    if let Some(Value::Object(vars)) = v.get_mut("variables") {
        for k in LOCATION_VARS {
            vars.remove(k);
        }
    }
    // serde_json's maps are sorted by key: the text is canonical.
    Sha256::digest(Value::Object(v).to_string().as_bytes()).to_vec()
}

/// The manifest for `outputs` (staged files, each under its final base name).
pub fn build(
    plan: &Plan,
    tree: &ImageTree,
    outputs: &[std::path::PathBuf],
    timings: &[(String, Duration)],
) -> Result<Value> {
    let c = &plan.config;
    let mut m = inputs(
        c,
        &plan.resolved,
        plan.layout,
        &plan.cache_key,
        &plan.distro,
    )?;
    m.insert("seed".into(), plan.seed.as_str().into());
    m.insert("seed_origin".into(), plan.seed.origin().as_str().into());
    let packages: Vec<Value> = installed_packages(tree)?
        .into_iter()
        .map(|p| json!({"name": p.name, "version": p.version, "architecture": p.arch}))
        .collect();
    m.insert("packages".into(), packages.into());
    let mut files = Vec::new();
    for o in outputs {
        let meta = std::fs::metadata(o).with_context(|| format!("reading {}", o.display()))?;
        files.push(json!({
            "name": o.file_name().map(|n| n.to_string_lossy().into_owned()),
            "size": meta.len(),
            "sha256": file_sha256(o)?,
        }));
    }
    m.insert("outputs".into(), files.into());
    let steps: Vec<Value> = timings
        .iter()
        .map(|(name, d)| json!({"step": name, "seconds": (d.as_secs_f64() * 1000.0).round() / 1000.0}))
        .collect();
    m.insert("timings".into(), steps.into());
    Ok(Value::Object(m))
}

/// Writes the manifest as `file` (a new file in the staging directory).
pub fn write(value: &Value, file: &Path) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_installed_packages_only_sorted() {
        let text = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13\n\n\
                    Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
                    Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4\n";
        let p = parse_status(text);
        assert_eq!(
            p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["base-files", "zlib1g"]
        );
        assert_eq!(p[1].version, "1:1.2.13");
    }

    #[test]
    fn the_seed_digest_ignores_locations_and_names_but_not_inputs() {
        let inputs = |dir: &str, elements: &str, formats: &str, epoch: i64| {
            let v = json!({
                "flavours": [{"name": "vm", "dir": dir, "sha256": "ab", "stands_in_for": null}],
                "options": {"formats": [formats], "fs_type": "ext4"},
                "variables": {"ELEMENTS_PATH": elements, "IMAGE_NAME": dir, "DIB_RELEASE": "bookworm"},
                "source_date_epoch": epoch,
            });
            let Value::Object(m) = v else { unreachable!() };
            m
        };
        let a = seed_digest(&inputs("/a/vm", "/a", "tar", 1));
        assert_eq!(a, seed_digest(&inputs("/b/vm", "/b", "raw", 1)));
        assert_ne!(a, seed_digest(&inputs("/a/vm", "/a", "tar", 2)));
        let mut other = inputs("/a/vm", "/a", "tar", 1);
        other["variables"]["DIB_RELEASE"] = "trixie".into();
        assert_ne!(a, seed_digest(&other));
    }

    #[test]
    fn flavour_hash_follows_content_not_mtime() {
        let t = tempfile::TempDir::new().unwrap();
        std::fs::create_dir_all(t.path().join("install.d")).unwrap();
        std::fs::write(t.path().join("install.d/10-x"), "echo x\n").unwrap();
        let a = flavour_hash(t.path()).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(t.path().join("install.d/10-x"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(flavour_hash(t.path()).unwrap(), a);
        std::fs::write(t.path().join("install.d/10-x"), "echo y\n").unwrap();
        assert_ne!(flavour_hash(t.path()).unwrap(), a);
    }
}
