//! A disk with a partition table: which of kiln's layouts its partitions make, and
//! refusals of partitions kiln does not make.

use super::filesystems::{check_fs, Filesystems, Fs};
use super::graph::{field, Entry, Part};
use super::values::{parse_abs_size, percent, scalar};
use super::{refuse, R, SUPPORTED};
use crate::disk::layout::{GPT_TYPE_BIOS_BOOT, GPT_TYPE_ESP, GPT_TYPE_ROOT_X86_64, MIB};
use crate::yaml::{Node, Value};

/// GPT type of a generic Linux filesystem partition (sgdisk 8300).
const GPT_TYPE_LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// What a partition is for, from its table type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Esp,
    BiosBoot,
    Linux,
    Other(String),
}

fn gpt_role(ty: &str) -> Role {
    let t = ty.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let lower = t.to_ascii_lowercase();
    match lower.as_str() {
        "ef00" => Role::Esp,
        "ef02" => Role::BiosBoot,
        "8300" | "8304" => Role::Linux,
        g if g == GPT_TYPE_ESP => Role::Esp,
        g if g == GPT_TYPE_BIOS_BOOT => Role::BiosBoot,
        g if g == GPT_TYPE_LINUX_FS || g == GPT_TYPE_ROOT_X86_64 => Role::Linux,
        _ => Role::Other(ty.trim().to_string()),
    }
}

fn mbr_role(ty: &str) -> Role {
    let t = ty.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    match u64::from_str_radix(hex, 16) {
        Ok(0x83) => Role::Linux,
        _ => Role::Other(t.to_string()),
    }
}

/// A partition's settings, read and checked.
struct Partition<'a> {
    /// `partition `NAME``, for messages.
    what: String,
    role: Role,
    ty: Option<&'a str>,
    size: &'a str,
}

/// The layout (`"gpt"`, `"efi"` or `"mbr"`) of the partition table `t` on `disk`.
/// `legacy`: the configuration has no mkfs at all (DIB before its mkfs plugin).
pub(super) fn partitioned(
    t: &Entry,
    disk: &Entry,
    filesystems: &Filesystems,
    legacy: bool,
) -> R<&'static str> {
    let what = format!("partitioning `{}`", t.name);
    let gpt = check_table(t, disk, filesystems, &what)?;
    let root = find_root(t, filesystems, legacy, &what)?;

    let mut esp = None;
    let mut bios = None;
    let mut root_check = None;
    for p in &t.partitions {
        let part = read_partition(p, gpt)?;
        let fs = filesystems.get(p.name.as_str());
        if std::ptr::eq(p, root) {
            // Checked once every other partition is known to be one kiln makes.
            root_check = Some(part);
            continue;
        }
        match part.role {
            Role::Esp if gpt => check_esp(p, &part.what, fs, &mut esp)?,
            Role::BiosBoot if gpt => check_bios_boot(p, &part.what, fs, &mut bios)?,
            _ => return refuse_partition(p, &part, fs),
        }
    }
    if let Some(part) = root_check {
        check_root(root, &part, gpt)?;
    }

    Ok(match (gpt, esp.is_some(), bios.is_some()) {
        (false, ..) => "mbr",
        (true, true, true) => "gpt",
        (true, true, false) => "efi",
        // diskimage-builder's block-device-gpt (BIOS boot + root): kiln's gpt is the
        // same disk plus an ESP, as kiln's own block-device-gpt flavour documents.
        (true, false, true) => "gpt",
        (true, false, false) => {
            return refuse(
                t.line,
                format!(
                    "{what} has no ESP (EF00) and no BIOS boot partition (EF02), so nothing \
                     could boot it; {SUPPORTED}"
                ),
            )
        }
    })
}

/// The table's own settings; whether it is a GPT (else MBR).
fn check_table(t: &Entry, disk: &Entry, filesystems: &Filesystems, what: &str) -> R<bool> {
    if t.base.as_deref() != Some(disk.name.as_str()) {
        return refuse(
            t.line,
            format!(
                "{what} is on `{}`, not on the disk `{}`; {SUPPORTED}",
                t.base.as_deref().unwrap_or("nothing"),
                disk.name
            ),
        );
    }
    if let Some(fs) = filesystems.get(disk.name.as_str()) {
        return refuse(
            fs.mkfs.line,
            format!(
                "mkfs `{}` is on the whole disk `{}`, which also has a partition table",
                fs.mkfs.name, disk.name
            ),
        );
    }
    let gpt = match field(&t.fields, "label") {
        None => return refuse(t.line, format!("{what} has no `label` (mbr or gpt)")),
        Some(l) => match scalar(what, "label", l)? {
            "gpt" => true,
            "mbr" => false,
            other => {
                return refuse(
                    l.line,
                    format!("`label: {other}` of {what}: a partition table is mbr or gpt"),
                )
            }
        },
    };
    if let Some(a) = field(&t.fields, "align") {
        let s = scalar(what, "align", a)?;
        match parse_abs_size(s) {
            // kiln aligns to 1 MiB, which is aligned to every divisor of 1 MiB too.
            Some(n) if n > 0 && MIB.is_multiple_of(n) => {}
            Some(_) => {
                return refuse(
                    a.line,
                    format!("`align: {s}` of {what}: kiln aligns partitions to 1 MiB"),
                )
            }
            None => return refuse(a.line, format!("`align: {s}` of {what} is not a size")),
        }
    }
    if t.partitions.is_empty() {
        return refuse(t.line, format!("{what} has no partitions"));
    }
    Ok(gpt)
}

/// The root: the partition whose filesystem is mounted at /; in configurations from
/// before DIB's mkfs plugin, the partition named `root`.
fn find_root<'a>(t: &'a Entry, filesystems: &Filesystems, legacy: bool, what: &str) -> R<&'a Part> {
    let root = t
        .partitions
        .iter()
        .find(|p| {
            filesystems
                .get(p.name.as_str())
                .is_some_and(|fs| fs.mount_point() == Some("/"))
        })
        .or_else(|| {
            legacy
                .then(|| t.partitions.iter().find(|p| p.name == "root"))
                .flatten()
        });
    match root {
        Some(root) => Ok(root),
        None => refuse(
            t.line,
            format!("no partition of {what} has a filesystem mounted at /; {SUPPORTED}"),
        ),
    }
}

/// A partition's size, flags and type.
fn read_partition(p: &Part, gpt: bool) -> R<Partition<'_>> {
    let what = format!("partition `{}`", p.name);
    let size = match field(&p.fields, "size") {
        Some(s) => scalar(&what, "size", s)?,
        None => return refuse(p.line, format!("{what} has no `size`")),
    };
    if percent(size).is_none() && parse_abs_size(size).is_none() {
        return refuse(p.line, format!("`size: {size}` of {what} is not a size"));
    }
    if let Some(flags) = field(&p.fields, "flags") {
        check_flags(flags, &what, gpt)?;
    }
    let ty = match field(&p.fields, "type") {
        Some(ty) => Some(scalar(&what, "type", ty)?),
        None => None,
    };
    let role = match (gpt, ty) {
        (true, Some(ty)) => gpt_role(ty),
        (false, Some(ty)) => mbr_role(ty),
        (_, None) => Role::Linux,
    };
    Ok(Partition {
        what,
        role,
        ty,
        size,
    })
}

fn check_flags(flags: &Node, what: &str, gpt: bool) -> R<()> {
    let list: Vec<&Node> = match &flags.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        _ => vec![flags],
    };
    for f in list {
        match f.text().map(str::trim) {
            Some("boot") => {}
            Some("primary") if !gpt => {}
            Some("primary") => {
                return refuse(
                    f.line,
                    format!("flag `primary` of {what}: GPT partitions have no primary flag"),
                )
            }
            _ => {
                return refuse(
                    f.line,
                    format!("unknown flag of {what}: the flags are boot and primary"),
                )
            }
        }
    }
    Ok(())
}

/// The ESP: kiln's is vfat at /boot/efi, and there is one.
fn check_esp<'a>(p: &'a Part, what: &str, fs: Option<&Fs>, esp: &mut Option<&'a Part>) -> R<()> {
    if esp.replace(p).is_some() {
        return refuse(p.line, format!("a second ESP, {what}; {SUPPORTED}"));
    }
    let Some(fs) = fs else { return Ok(()) };
    let ty = fs.field("type").and_then(Node::text).map(str::trim);
    if !matches!(ty, None | Some("vfat" | "fat")) {
        return refuse(
            fs.mkfs.line,
            format!(
                "the ESP {what} has a {} filesystem: kiln's ESP is vfat",
                ty.unwrap_or("")
            ),
        );
    }
    if !matches!(fs.mount_point(), None | Some("/boot/efi")) {
        return refuse(
            fs.mount.map_or(fs.mkfs.line, |m| m.line),
            format!(
                "the ESP {what} is mounted at {}: kiln mounts the ESP at /boot/efi",
                fs.mount_point().unwrap_or("")
            ),
        );
    }
    check_fs(fs, "/boot/efi")
}

/// The BIOS boot partition: one, and raw.
fn check_bios_boot<'a>(
    p: &'a Part,
    what: &str,
    fs: Option<&Fs>,
    bios: &mut Option<&'a Part>,
) -> R<()> {
    if bios.replace(p).is_some() {
        return refuse(
            p.line,
            format!("a second BIOS boot partition, {what}; {SUPPORTED}"),
        );
    }
    if let Some(fs) = fs {
        return refuse(
            fs.mkfs.line,
            format!(
                "the BIOS boot {what} has a filesystem: GRUB's core image is written \
                 to it raw"
            ),
        );
    }
    Ok(())
}

/// Any other partition than the root and the boot ones: refused, saying what it is.
fn refuse_partition<T>(p: &Part, part: &Partition, fs: Option<&Fs>) -> R<T> {
    let use_ = match fs {
        None => "no filesystem".to_string(),
        Some(fs) => {
            let ty = fs.field("type").and_then(Node::text).map(str::trim);
            match fs.mount_point() {
                _ if ty == Some("swap") => "swap".to_string(),
                Some("none") => "swap".to_string(),
                Some(point) => format!("mounted at {point}"),
                None => "a filesystem that is not mounted".to_string(),
            }
        }
    };
    let kind = match &part.role {
        Role::Other(ty) => format!("type {ty}, "),
        _ => String::new(),
    };
    refuse(
        p.line,
        format!(
            "{} ({kind}{use_}) is not supported: kiln builds a single root \
             filesystem plus the boot partitions of its layouts; {SUPPORTED}",
            part.what
        ),
    )
}

/// The root partition is a Linux one that fills the disk.
fn check_root(root: &Part, part: &Partition, gpt: bool) -> R<()> {
    let Partition { what, size, .. } = part;
    if part.role != Role::Linux {
        let ty = part.ty.unwrap_or("");
        return refuse(
            root.line,
            format!(
                "the root {what} has type {ty}: kiln's root partition is a Linux one ({})",
                if gpt { "8300 or 8304" } else { "0x83" }
            ),
        );
    }
    if percent(size) != Some(100.0) {
        return refuse(
            root.line,
            format!(
                "the root {what} has `size: {size}`: kiln sizes root to fill the disk \
                 (size: 100%); set the disk's size with --image-size (DIB_IMAGE_SIZE) instead"
            ),
        );
    }
    Ok(())
}
