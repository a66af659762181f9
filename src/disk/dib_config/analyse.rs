//! From DIB's graph to the layout kiln builds: the checks on the whole graph and on
//! the disk, and the root filesystem's settings; a partition table is
//! [`partitioned`]'s.

use super::filesystems::{check_fs, link, Filesystems, Fs};
use super::graph::{field, read, Entry, Plugin, PARTITION_OPTIONS};
use super::partitioned::partitioned;
use super::values::{check_keys, parse_abs_size, scalar};
use super::{refuse, DibLayout, DIB_DEFAULT_ROOT_LABEL, R, SUPPORTED};
use std::collections::HashSet;

pub(super) fn analyse(text: &str) -> R<DibLayout> {
    let entries = read(text)?;
    check_graph(&entries)?;
    let disk = the_disk(&entries)?;
    let table = the_table(&entries)?;

    let mut devices: Vec<&str> = vec![disk.name.as_str()];
    if let Some(t) = table {
        devices.extend(t.partitions.iter().map(|p| p.name.as_str()));
    }
    let filesystems = link(&entries, &devices)?;

    let first_mkfs = entries.iter().find(|e| e.plugin == Plugin::Mkfs);
    let layout = match table {
        None => {
            bare(disk, &filesystems, first_mkfs)?;
            "none"
        }
        Some(t) => partitioned(t, disk, &filesystems, first_mkfs.is_none())?,
    };

    let root_device = match table {
        None => Some(disk.name.as_str()),
        Some(_) => filesystems
            .iter()
            .find(|(_, fs)| fs.mount_point() == Some("/"))
            .map(|(d, _)| *d),
    };
    let mut out = DibLayout {
        layout,
        fs_type: None,
        root_label: None,
    };
    if let Some(fs) = root_device.and_then(|d| filesystems.get(d)) {
        check_fs(fs, "/")?;
        (out.fs_type, out.root_label) = root_settings(fs)?;
    }
    Ok(out)
}

/// What holds for every entry: no LVM, unique names, known keys, one base each.
fn check_graph(entries: &[Entry]) -> R<()> {
    if let Some(lvm) = entries.iter().find(|e| e.plugin == Plugin::Lvm) {
        return refuse(
            lvm.line,
            format!("`lvm` is not supported by kiln (no root, no device-mapper); {SUPPORTED}"),
        );
    }

    // Every entry (a partitioning's partitions, not itself) is a node of DIB's graph,
    // and node names are unique.
    let mut names = HashSet::new();
    for (name, line) in entries
        .iter()
        .filter(|e| e.plugin != Plugin::Partitioning)
        .map(|e| (&e.name, e.line))
        .chain(
            entries
                .iter()
                .flat_map(|e| e.partitions.iter().map(|p| (&p.name, p.line))),
        )
    {
        if !names.insert(name.as_str()) {
            return refuse(line, format!("the name `{name}` is used twice"));
        }
    }

    for e in entries {
        let what = format!("{} `{}`", e.plugin.key(), e.name);
        check_keys(&what, &e.fields, e.plugin.options())?;
        if e.base_list {
            return refuse(e.line, format!("the `base` of {what} must be one name"));
        }
        for p in &e.partitions {
            check_keys(
                &format!("partition `{}`", p.name),
                &p.fields,
                &PARTITION_OPTIONS,
            )?;
        }
    }
    Ok(())
}

/// Level 0: exactly one disk image.
fn the_disk(entries: &[Entry]) -> R<&Entry> {
    let loops: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.plugin == Plugin::LocalLoop)
        .collect();
    let disk = match loops.as_slice() {
        [] => {
            return refuse(
                entries.first().map_or(0, |e| e.line),
                format!(
                    "no `local_loop`: kiln builds one disk image, declared as \
                     `- local_loop: {{name: image0}}`; {SUPPORTED}"
                ),
            )
        }
        [one] => *one,
        [_, second, ..] => {
            return refuse(
                second.line,
                format!(
                    "a second `local_loop` (`{}`): kiln builds exactly one disk image; {SUPPORTED}",
                    second.name
                ),
            )
        }
    };
    check_loop(disk)?;
    Ok(disk)
}

fn check_loop(disk: &Entry) -> R<()> {
    let what = format!("local_loop `{}`", disk.name);
    if let Some(size) = field(&disk.fields, "size") {
        let s = size.text().unwrap_or("");
        return refuse(
            size.line,
            format!(
                "`size: {s}` on {what}: kiln sizes the disk image itself; \
                 use --image-size (DIB_IMAGE_SIZE) instead"
            ),
        );
    }
    if let Some(bs) = field(&disk.fields, "block_size") {
        let s = scalar(&what, "block_size", bs)?;
        if parse_abs_size(s) != Some(512) {
            return refuse(
                bs.line,
                format!("`block_size: {s}` on {what}: kiln writes disks of 512-byte sectors"),
            );
        }
    }
    if let Some(dir) = field(&disk.fields, "directory") {
        scalar(&what, "directory", dir)?;
    }
    if let Some(base) = &disk.base {
        return refuse(
            disk.line,
            format!(
                "{what} is based on `{base}`: kiln's disk image is a file, not on another device"
            ),
        );
    }
    Ok(())
}

/// Level 1: at most one partition table.
fn the_table(entries: &[Entry]) -> R<Option<&Entry>> {
    let partitioning: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.plugin == Plugin::Partitioning)
        .collect();
    if let [_, second, ..] = partitioning.as_slice() {
        return refuse(
            second.line,
            format!(
                "a second `partitioning`: kiln writes one partition table on one disk; {SUPPORTED}"
            ),
        );
    }
    Ok(partitioning.first().copied())
}

/// A disk without a partition table: kiln's bare filesystem image, whose filesystem
/// is the root one.
fn bare(disk: &Entry, filesystems: &Filesystems, first_mkfs: Option<&Entry>) -> R<()> {
    match (filesystems.get(disk.name.as_str()), first_mkfs) {
        // Before DIB's mkfs plugin, disk-image-create made the root
        // filesystem itself on the image.
        (None, None) => {}
        (None, Some(mkfs)) => {
            return refuse(
                mkfs.line,
                format!(
                    "no filesystem on the disk `{}` is mounted at /; {SUPPORTED}",
                    disk.name
                ),
            )
        }
        (Some(fs), _) => {
            if fs.mount_point() != Some("/") {
                return refuse(
                    fs.mkfs.line,
                    format!(
                        "the filesystem on the disk is {}: kiln's bare filesystem image is \
                         the root filesystem, mounted at /; {SUPPORTED}",
                        match fs.mount_point() {
                            Some(p) => format!("mounted at {p}"),
                            None => "not mounted".to_string(),
                        }
                    ),
                );
            }
        }
    }
    Ok(())
}

/// The root filesystem's type and label, when the configuration sets them.
fn root_settings(fs: &Fs) -> R<(Option<String>, Option<String>)> {
    let fs_type = match fs.field("type") {
        Some(t) => Some(scalar(&format!("mkfs `{}`", fs.mkfs.name), "type", t)?.to_string()),
        None => None,
    };
    let label = match fs.field("label") {
        Some(l) => Some(scalar(&format!("mkfs `{}`", fs.mkfs.name), "label", l)?.to_string()),
        // DIB's mkfs labels a filesystem by its name, but gives `mkfs_root`
        // the root label (--root-label) instead.
        None if fs.mkfs.name != "mkfs_root" => Some(fs.mkfs.name.clone()),
        None => None,
    };
    let vfat = fs_type
        .as_deref()
        .is_some_and(|t| matches!(t, "vfat" | "fat"));
    let root_label = label
        .map(|l| if vfat { l.to_uppercase() } else { l })
        .filter(|l| l != DIB_DEFAULT_ROOT_LABEL && !l.is_empty());
    Ok((fs_type, root_label))
}
