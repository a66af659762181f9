//! Levels 2 to 4 of DIB's graph: the filesystems made on the disk or its partitions,
//! where they are mounted and their fstab entries, and the settings kiln refuses on
//! them.

use super::graph::{field, Entry, Plugin};
use super::values::{plain_options, scalar};
use super::{refuse, R};
use crate::yaml::Node;
use std::collections::{HashMap, HashSet};

/// A filesystem with where it is mounted and its fstab entry.
pub(super) struct Fs<'a> {
    pub(super) mkfs: &'a Entry,
    pub(super) mount: Option<&'a Entry>,
    pub(super) fstab: Option<&'a Entry>,
}

impl Fs<'_> {
    pub(super) fn mount_point(&self) -> Option<&str> {
        self.mount
            .and_then(|m| field(&m.fields, "mount_point"))
            .and_then(Node::text)
            .map(str::trim)
    }

    pub(super) fn field(&self, key: &str) -> Option<&Node> {
        field(&self.mkfs.fields, key)
    }
}

/// The filesystems by the device (disk or partition) they are made on.
pub(super) type Filesystems<'a> = HashMap<&'a str, Fs<'a>>;

/// Every mkfs on one of `devices`, with its mount and fstab entry; each at most once.
pub(super) fn link<'a>(entries: &'a [Entry], devices: &[&'a str]) -> R<Filesystems<'a>> {
    let of = |plugin| entries.iter().filter(move |e: &&Entry| e.plugin == plugin);
    let mut filesystems = made_on(of(Plugin::Mkfs), devices)?;
    attach_mounts(&mut filesystems, of(Plugin::Mount))?;
    attach_fstabs(&mut filesystems, of(Plugin::Fstab))?;
    Ok(filesystems)
}

fn made_on<'a>(mkfs: impl Iterator<Item = &'a Entry>, devices: &[&'a str]) -> R<Filesystems<'a>> {
    let mut filesystems = HashMap::new();
    for m in mkfs {
        let Some(base) = m.base.as_deref() else {
            return refuse(m.line, format!("mkfs `{}` has no `base`", m.name));
        };
        if !devices.contains(&base) {
            return refuse(
                m.line,
                format!(
                    "mkfs `{}` is on `{base}`, which is not a disk or partition",
                    m.name
                ),
            );
        }
        if filesystems.contains_key(base) {
            return refuse(m.line, format!("a second filesystem on `{base}`"));
        }
        filesystems.insert(
            base,
            Fs {
                mkfs: m,
                mount: None,
                fstab: None,
            },
        );
    }
    Ok(filesystems)
}

fn attach_mounts<'a>(
    filesystems: &mut Filesystems<'a>,
    mounts: impl Iterator<Item = &'a Entry>,
) -> R<()> {
    let mut mount_points = HashSet::new();
    for m in mounts {
        let fs = m
            .base
            .as_deref()
            .and_then(|b| filesystems.values_mut().find(|f| f.mkfs.name == b));
        let Some(fs) = fs else {
            return refuse(
                m.line,
                format!(
                    "mount `{}` is on `{}`, which is not a mkfs",
                    m.name,
                    m.base.as_deref().unwrap_or("nothing")
                ),
            );
        };
        let Some(point) = field(&m.fields, "mount_point") else {
            return refuse(m.line, format!("mount `{}` has no `mount_point`", m.name));
        };
        let point = scalar(&format!("mount `{}`", m.name), "mount_point", point)?;
        if !mount_points.insert(point.to_string()) {
            return refuse(m.line, format!("mount point {point} is mounted twice"));
        }
        if fs.mount.is_some() {
            return refuse(
                m.line,
                format!("filesystem `{}` is mounted twice", fs.mkfs.name),
            );
        }
        fs.mount = Some(m);
    }
    Ok(())
}

fn attach_fstabs<'a>(
    filesystems: &mut Filesystems<'a>,
    fstabs: impl Iterator<Item = &'a Entry>,
) -> R<()> {
    for f in fstabs {
        let fs = f.base.as_deref().and_then(|b| {
            filesystems
                .values_mut()
                .find(|fs| fs.mount.is_some_and(|m| m.name == b))
        });
        let Some(fs) = fs else {
            return refuse(
                f.line,
                format!(
                    "fstab `{}` is on `{}`, which is not a mount",
                    f.name,
                    f.base.as_deref().unwrap_or("nothing")
                ),
            );
        };
        if fs.fstab.is_some() {
            return refuse(
                f.line,
                format!("a second fstab entry for `{}`", fs.mkfs.name),
            );
        }
        fs.fstab = Some(f);
    }
    Ok(())
}

/// mkfs, mount and fstab settings kiln cannot honour, for the root (`/`) or the ESP
/// (`/boot/efi`).
pub(super) fn check_fs(fs: &Fs, point: &str) -> R<()> {
    let what = format!("mkfs `{}`", fs.mkfs.name);
    if let Some(opts) = fs.field("opts") {
        let o = opts.text().unwrap_or("");
        let hint = if point == "/" {
            "pass them with --mkfs-options (MKFS_OPTS) instead"
        } else {
            "kiln makes the ESP with its own options"
        };
        return refuse(
            opts.line,
            format!("`opts: {o}` on {what} ({point}): {hint}"),
        );
    }
    if let Some(uuid) = fs.field("uuid") {
        return refuse(
            uuid.line,
            format!(
                "`uuid` on {what} ({point}): kiln chooses the filesystem UUIDs itself \
                 (exported to hooks as KILN_ROOT_UUID / KILN_ESP_UUID)"
            ),
        );
    }
    if let Some(f) = fs.fstab {
        let fwhat = format!("fstab `{}`", f.name);
        if let Some(o) = field(&f.fields, "options") {
            let o = scalar(&fwhat, "options", o)?;
            if !plain_options(o, point != "/") {
                return refuse(
                    f.line,
                    format!(
                        "fstab options `{o}` for {point}: kiln's fstab mounts / with `defaults` \
                         and /boot/efi with `umask=0077`"
                    ),
                );
            }
        }
        for key in ["dump-freq", "fsck-passno"] {
            if let Some(v) = field(&f.fields, key) {
                let s = scalar(&fwhat, key, v)?;
                if s.parse::<u32>().is_err() {
                    return refuse(v.line, format!("`{key}: {s}` of {fwhat} is not a number"));
                }
            }
        }
    }
    Ok(())
}
