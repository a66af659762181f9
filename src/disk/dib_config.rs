//! diskimage-builder's `DIB_BLOCK_DEVICE_CONFIG`: the YAML configuration of DIB's
//! block-device library, mapped onto the layouts kiln builds without root.
//!
//! DIB's configuration is a list of plugin entries (`local_loop`, `partitioning`,
//! `lvm`, `mkfs`, `mount`, `fstab`), each either written out as a graph (every entry
//! names its `base`) or nested as a tree (a `mkfs` inside a partition, a `mount` inside
//! the `mkfs`, ...); both are read here the way DIB's `config_tree_to_graph` reads
//! them. The older dict form (a mapping from plugin to options, or from plugin to
//! named instances: `local_loop: {image0: }`, `partitioning: {image0: {label: ..}}`)
//! and the `[plugin, options]` pairs of DIB's first block-device spec are read too.
//!
//! kiln builds one disk with one root filesystem and, per layout, the partitions the
//! bootloader needs; whatever else a configuration asks for (LVM, a separate `/var`,
//! swap, a fixed disk size, a fixed filesystem UUID, a second image, ...) is refused
//! with an error that says what is unsupported and what kiln supports, rather than
//! built differently from what was asked.

use super::layout::{GPT_TYPE_BIOS_BOOT, GPT_TYPE_ESP, GPT_TYPE_ROOT_X86_64, MIB};
use crate::yaml::{Node, Value};
use anyhow::{anyhow, Result};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// What kiln can build; appended to refusals of a layout.
const SUPPORTED: &str =
    "supported: gpt (bios boot + ESP + root), efi (ESP + root), mbr (root), or a bare filesystem";

/// The label diskimage-builder gives the root filesystem when none is configured.
const DIB_DEFAULT_ROOT_LABEL: &str = "cloudimg-rootfs";

/// GPT type of a generic Linux filesystem partition (sgdisk 8300).
const GPT_TYPE_LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// The layout a `DIB_BLOCK_DEVICE_CONFIG` describes, in kiln's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DibLayout {
    /// `"gpt"`, `"efi"`, `"mbr"` or `"none"`, as `Layout::parse` reads them.
    pub layout: &'static str,
    /// The root filesystem's `mkfs` `type`, when the configuration names one
    /// (DIB then ignores `FS_TYPE` for it).
    pub fs_type: Option<String>,
    /// The root filesystem's label, when the configuration sets one other than DIB's
    /// default `cloudimg-rootfs` (DIB labels a filesystem by its node name when it has
    /// no `label`, except `mkfs_root`, which takes `--root-label`).
    pub root_label: Option<String>,
}

/// Parses DIB_BLOCK_DEVICE_CONFIG text; `origin` names it in errors
/// ("DIB_BLOCK_DEVICE_CONFIG").
pub fn parse(text: &str, origin: &str) -> Result<DibLayout> {
    analyse(text).map_err(|e| anyhow!("{origin}{e}"))
}

// ---- errors ------------------------------------------------------------------

/// A refusal, with the line of the YAML it is about when there is one. Displays as
/// the part of the message after the origin.
#[derive(Debug)]
struct Refusal {
    line: Option<usize>,
    msg: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, ", line {line}: {}", self.msg),
            None => write!(f, ": {}", self.msg),
        }
    }
}

fn refuse<T>(line: usize, msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        line: (line > 0).then_some(line),
        msg: msg.into(),
    })
}

type R<T> = Result<T, Refusal>;

// ---- YAML tree ---------------------------------------------------------------

fn load(text: &str) -> R<Node> {
    let mut docs = crate::yaml::load(text).or_else(|e| match e.column {
        Some(col) => refuse(
            0,
            format!(
                "invalid YAML at line {} column {col}: {}",
                e.line, e.message
            ),
        ),
        None => refuse(e.line, e.message.replace("the YAML", "the configuration")),
    })?;
    if docs.len() > 1 {
        return refuse(
            docs[1].line,
            "more than one YAML document: the block-device configuration is one list",
        );
    }
    Ok(docs.pop().unwrap_or(Node {
        value: Value::Null,
        line: 0,
    }))
}

// ---- DIB's configuration graph -------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plugin {
    LocalLoop,
    Partitioning,
    Lvm,
    Mkfs,
    Mount,
    Fstab,
}

impl Plugin {
    fn parse(s: &str) -> Option<Plugin> {
        Some(match s {
            "local_loop" => Plugin::LocalLoop,
            "partitioning" => Plugin::Partitioning,
            "lvm" => Plugin::Lvm,
            "mkfs" => Plugin::Mkfs,
            "mount" => Plugin::Mount,
            "fstab" => Plugin::Fstab,
            _ => return None,
        })
    }

    fn key(self) -> &'static str {
        match self {
            Plugin::LocalLoop => "local_loop",
            Plugin::Partitioning => "partitioning",
            Plugin::Lvm => "lvm",
            Plugin::Mkfs => "mkfs",
            Plugin::Mount => "mount",
            Plugin::Fstab => "fstab",
        }
    }

    /// The option keys (besides `name` and `base`) kiln reads for this plugin.
    fn options(self) -> &'static [&'static str] {
        match self {
            Plugin::LocalLoop => &["size", "directory", "block_size"],
            Plugin::Partitioning => &["label", "align", "partitions"],
            Plugin::Lvm => &["pvs", "vgs", "lvs"],
            Plugin::Mkfs => &["type", "label", "opts", "uuid"],
            Plugin::Mount => &["mount_point"],
            Plugin::Fstab => &["options", "dump-freq", "fsck-passno"],
        }
    }
}

const PARTITION_OPTIONS: [&str; 4] = ["flags", "size", "type", "base"];

/// One node of the flattened graph (DIB's `config_tree_to_graph` output).
#[derive(Debug)]
struct Entry {
    plugin: Plugin,
    name: String,
    base: Option<String>,
    /// A `base` that is not a single name (LVM's lists).
    base_list: bool,
    fields: Vec<(String, Node)>,
    partitions: Vec<Part>,
    line: usize,
}

#[derive(Debug)]
struct Part {
    name: String,
    fields: Vec<(String, Node)>,
    line: usize,
}

fn field<'a>(fields: &'a [(String, Node)], key: &str) -> Option<&'a Node> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn key_text(k: &Node) -> R<&str> {
    k.text()
        .ok_or(())
        .or_else(|_| refuse(k.line, format!("a key is {}, not a name", k.describe())))
}

fn plugin_of(k: &Node) -> R<Plugin> {
    let key = key_text(k)?;
    match Plugin::parse(key) {
        Some(p) => Ok(p),
        None => refuse(
            k.line,
            format!(
                "`{key}` is not a diskimage-builder block-device plugin (local_loop, \
                 partitioning, lvm, mkfs, mount, fstab), so kiln cannot build it; {SUPPORTED}"
            ),
        ),
    }
}

/// The option pairs of a plugin's value: a mapping, or nothing (no options).
fn options_of(plugin: &str, v: &Node) -> R<Vec<(Node, Node)>> {
    match &v.value {
        Value::Map(pairs) => Ok(pairs.clone()),
        Value::Null => Ok(Vec::new()),
        _ => refuse(
            v.line,
            format!(
                "`{plugin}` must be a mapping of its options, not {}",
                v.describe()
            ),
        ),
    }
}

/// The top level: DIB's list of single-plugin entries, the older dict form, or the
/// spec's `[plugin, options]` pairs.
fn flatten(doc: &Node) -> R<Vec<Entry>> {
    let mut out = Vec::new();
    match &doc.value {
        Value::Null => return refuse(doc.line, format!("the configuration is empty; {SUPPORTED}")),
        Value::Scalar(_) => {
            return refuse(
                doc.line,
                "the configuration must be a YAML list of block-device plugins \
                 (`- local_loop: ...`), not a single value",
            )
        }
        Value::Seq(items) => {
            for item in items {
                match &item.value {
                    Value::Map(pairs) if pairs.len() == 1 => {
                        let (k, v) = &pairs[0];
                        let plugin = plugin_of(k)?;
                        let opts = options_of(plugin.key(), v)?;
                        recurse(plugin, &opts, None, None, k.line, &mut out)?;
                    }
                    Value::Map(pairs) => {
                        let keys: Vec<&str> = pairs.iter().filter_map(|(k, _)| k.text()).collect();
                        return refuse(
                            item.line,
                            format!(
                                "each list entry must hold exactly one plugin, this one has {} \
                                 ({}): indent the nested plugins under their parent",
                                pairs.len(),
                                keys.join(", ")
                            ),
                        );
                    }
                    Value::Seq(pair) if pair.len() == 2 => {
                        let plugin = plugin_of(&pair[0])?;
                        dict_entry(plugin, &pair[1], pair[0].line, &mut out)?;
                    }
                    _ => {
                        return refuse(
                            item.line,
                            format!(
                                "list entries must be plugins (`- local_loop: ...`), not {}",
                                item.describe()
                            ),
                        )
                    }
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                let plugin = plugin_of(k)?;
                dict_entry(plugin, v, k.line, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// One plugin of the dict form. `local_loop` and `partitioning` may map instance
/// names to options (the disk's name: the image's for `local_loop`, the base's for
/// `partitioning`); otherwise the value is the plugin's own options.
fn dict_entry(plugin: Plugin, v: &Node, line: usize, out: &mut Vec<Entry>) -> R<()> {
    let opts = options_of(plugin.key(), v)?;
    let keyed = matches!(plugin, Plugin::LocalLoop | Plugin::Partitioning)
        && !opts.is_empty()
        && opts.iter().all(|(k, v)| {
            k.text().is_some_and(|k| {
                k != "name"
                    && k != "base"
                    && !plugin.options().contains(&k)
                    && Plugin::parse(k).is_none()
            }) && matches!(v.value, Value::Map(_) | Value::Null)
        });
    if !keyed {
        return recurse(plugin, &opts, None, None, line, out);
    }
    for (k, inner) in &opts {
        let instance = key_text(k)?.to_string();
        let inner_opts = options_of(plugin.key(), inner)?;
        let (name, base) = match plugin {
            Plugin::LocalLoop => (Some(instance), None),
            _ => (None, Some(instance)),
        };
        recurse(plugin, &inner_opts, base, name, k.line, out)?;
    }
    Ok(())
}

/// DIB's `recurse_config`: one entry, whose nested plugins become entries of their
/// own based on it (a partition's on the partition).
fn recurse(
    plugin: Plugin,
    pairs: &[(Node, Node)],
    parent_base: Option<String>,
    name_override: Option<String>,
    line: usize,
    out: &mut Vec<Entry>,
) -> R<()> {
    let mut base = parent_base;
    let mut base_list = false;
    let mut name = name_override;
    for (k, v) in pairs {
        match key_text(k)? {
            "base" => match &v.value {
                Value::Scalar(s) => base = Some(s.clone()),
                _ => {
                    base = None;
                    base_list = true;
                }
            },
            "name" => match v.text() {
                Some(s) => name = Some(s.to_string()),
                None => {
                    return refuse(
                        v.line,
                        format!("the `name` of a {} must be a name", plugin.key()),
                    )
                }
            },
            _ => {}
        }
    }
    let name =
        name.unwrap_or_else(|| format!("{}_{}", plugin.key(), base.as_deref().unwrap_or("None")));

    let mut fields = Vec::new();
    let mut partitions = Vec::new();
    for (k, v) in pairs {
        let key = key_text(k)?;
        if key == "name" || key == "base" {
            continue;
        }
        if key == "partitions" && plugin == Plugin::Partitioning {
            let Value::Seq(items) = &v.value else {
                return refuse(
                    v.line,
                    format!("`partitions` must be a list, not {}", v.describe()),
                );
            };
            for item in items {
                partitions.push(partition(item, out)?);
            }
            continue;
        }
        if let Some(child) = Plugin::parse(key) {
            let opts = options_of(key, v)?;
            recurse(child, &opts, Some(name.clone()), None, k.line, out)?;
            continue;
        }
        fields.push((key.to_string(), v.clone()));
    }
    out.push(Entry {
        plugin,
        name,
        base,
        base_list,
        fields,
        partitions,
        line,
    });
    Ok(())
}

fn partition(item: &Node, out: &mut Vec<Entry>) -> R<Part> {
    let Value::Map(pairs) = &item.value else {
        return refuse(
            item.line,
            format!("a partition must be a mapping, not {}", item.describe()),
        );
    };
    let mut name = None;
    for (k, v) in pairs {
        if key_text(k)? == "name" {
            name = v.text().map(str::to_string);
        }
    }
    let Some(name) = name else {
        return refuse(item.line, "a partition has no `name`");
    };
    let mut fields = Vec::new();
    for (k, v) in pairs {
        let key = key_text(k)?;
        if key == "name" {
            continue;
        }
        if let Some(child) = Plugin::parse(key) {
            let opts = options_of(key, v)?;
            recurse(child, &opts, Some(name.clone()), None, k.line, out)?;
            continue;
        }
        fields.push((key.to_string(), v.clone()));
    }
    Ok(Part {
        name,
        fields,
        line: item.line,
    })
}

// ---- mapping onto kiln's layouts -------------------------------------------------

fn check_keys(what: &str, fields: &[(String, Node)], known: &[&str]) -> R<()> {
    for (k, v) in fields {
        if !known.contains(&k.as_str()) {
            let mut all = vec!["name", "base"];
            all.extend_from_slice(known);
            return refuse(
                v.line,
                format!("unknown key `{k}` in {what}: kiln reads {}", all.join(", ")),
            );
        }
    }
    Ok(())
}

fn scalar<'a>(what: &str, key: &str, v: &'a Node) -> R<&'a str> {
    match v.text() {
        Some(s) => Ok(s.trim()),
        None => refuse(
            v.line,
            format!(
                "`{key}` of {what} must be a single value, not {}",
                v.describe()
            ),
        ),
    }
}

/// DIB's `parse_abs_size_spec`: a decimal number and a unit (KiB..TiB powers of
/// 1024, K/KB..T/TB powers of 1000, B or nothing for bytes).
fn parse_abs_size(spec: &str) -> Option<u64> {
    let spec = spec.trim();
    let split = spec
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(spec.len());
    let (num, unit) = spec.split_at(split);
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let factor: f64 = match unit {
        "TiB" => (1u64 << 40) as f64,
        "GiB" => (1u64 << 30) as f64,
        "MiB" => (1u64 << 20) as f64,
        "KiB" => 1024.0,
        "TB" | "T" => 1e12,
        "GB" | "G" => 1e9,
        "MB" | "M" => 1e6,
        "KB" | "K" => 1e3,
        "B" | "" => 1.0,
        _ => return None,
    };
    let n: f64 = if num.is_empty() {
        1.0
    } else {
        num.parse().ok()?
    };
    let bytes = n * factor;
    (0.0..1e19).contains(&bytes).then_some(bytes as u64)
}

/// A relative size (`100%`) as its percentage.
fn percent(spec: &str) -> Option<f64> {
    spec.trim().strip_suffix('%')?.trim().parse().ok()
}

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

/// Mount options that say no more than `defaults` does (relatime is the kernel's
/// default).
fn plain_options(options: &str, esp: bool) -> bool {
    options.split(',').map(str::trim).all(|o| {
        matches!(
            o,
            "defaults" | "rw" | "relatime" | "auto" | "suid" | "dev" | "exec" | "nouser" | "async"
        ) || (esp && matches!(o, "umask=0077" | "umask=077"))
    })
}

/// A filesystem with where it is mounted and its fstab entry.
struct Fs<'a> {
    mkfs: &'a Entry,
    mount: Option<&'a Entry>,
    fstab: Option<&'a Entry>,
}

impl Fs<'_> {
    fn mount_point(&self) -> Option<&str> {
        self.mount
            .and_then(|m| field(&m.fields, "mount_point"))
            .and_then(Node::text)
            .map(str::trim)
    }

    fn field(&self, key: &str) -> Option<&Node> {
        field(&self.mkfs.fields, key)
    }
}

fn analyse(text: &str) -> R<DibLayout> {
    let doc = load(text)?;
    let entries = flatten(&doc)?;

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

    for e in &entries {
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

    // Level 0: exactly one disk image.
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

    // Level 2 to 4: filesystems, their mounts and fstab entries.
    let mkfs: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.plugin == Plugin::Mkfs)
        .collect();
    let mounts: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.plugin == Plugin::Mount)
        .collect();
    let fstabs: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.plugin == Plugin::Fstab)
        .collect();

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
    let table = partitioning.first().copied();

    let mut devices: Vec<&str> = vec![disk.name.as_str()];
    if let Some(t) = table {
        devices.extend(t.partitions.iter().map(|p| p.name.as_str()));
    }

    let mut filesystems: HashMap<&str, Fs> = HashMap::new();
    for m in &mkfs {
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
    let mut mount_points = HashSet::new();
    for m in &mounts {
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
    for f in &fstabs {
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

    let layout = match table {
        None => {
            match filesystems.get(disk.name.as_str()) {
                // Before DIB's mkfs plugin, disk-image-create made the root
                // filesystem itself on the image.
                None if mkfs.is_empty() => {}
                None => {
                    return refuse(
                        mkfs[0].line,
                        format!(
                            "no filesystem on the disk `{}` is mounted at /; {SUPPORTED}",
                            disk.name
                        ),
                    )
                }
                Some(fs) => {
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
            "none"
        }
        Some(t) => partitioned(t, disk, &filesystems, mkfs.is_empty())?,
    };

    // The root filesystem's own settings.
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
        out.fs_type = match fs.field("type") {
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
        let vfat = out
            .fs_type
            .as_deref()
            .is_some_and(|t| matches!(t, "vfat" | "fat"));
        out.root_label = label
            .map(|l| if vfat { l.to_uppercase() } else { l })
            .filter(|l| l != DIB_DEFAULT_ROOT_LABEL && !l.is_empty());
    }
    Ok(out)
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

/// mkfs, mount and fstab settings kiln cannot honour, for the root (`/`) or the ESP
/// (`/boot/efi`).
fn check_fs(fs: &Fs, point: &str) -> R<()> {
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

/// A disk with a partition table: which of kiln's layouts its partitions make.
fn partitioned(
    t: &Entry,
    disk: &Entry,
    filesystems: &HashMap<&str, Fs>,
    legacy: bool,
) -> R<&'static str> {
    let what = format!("partitioning `{}`", t.name);
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
        Some(l) => match scalar(&what, "label", l)? {
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
        let s = scalar(&what, "align", a)?;
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

    // The root: the partition whose filesystem is mounted at /; in configurations
    // from before DIB's mkfs plugin, the partition named `root`.
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
    let Some(root) = root else {
        return refuse(
            t.line,
            format!("no partition of {what} has a filesystem mounted at /; {SUPPORTED}"),
        );
    };

    let mut esp = None;
    let mut bios = None;
    let mut root_check = None;
    for p in &t.partitions {
        let pwhat = format!("partition `{}`", p.name);
        let size = match field(&p.fields, "size") {
            Some(s) => scalar(&pwhat, "size", s)?,
            None => return refuse(p.line, format!("{pwhat} has no `size`")),
        };
        if percent(size).is_none() && parse_abs_size(size).is_none() {
            return refuse(p.line, format!("`size: {size}` of {pwhat} is not a size"));
        }
        if let Some(flags) = field(&p.fields, "flags") {
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
                            format!(
                                "flag `primary` of {pwhat}: GPT partitions have no primary flag"
                            ),
                        )
                    }
                    _ => {
                        return refuse(
                            f.line,
                            format!("unknown flag of {pwhat}: the flags are boot and primary"),
                        )
                    }
                }
            }
        }
        let ty = match field(&p.fields, "type") {
            Some(ty) => Some(scalar(&pwhat, "type", ty)?),
            None => None,
        };
        let role = match (gpt, ty) {
            (true, Some(ty)) => gpt_role(ty),
            (false, Some(ty)) => mbr_role(ty),
            (_, None) => Role::Linux,
        };
        let fs = filesystems.get(p.name.as_str());
        if std::ptr::eq(p, root) {
            // Checked once every other partition is known to be one kiln makes.
            root_check = Some((pwhat, role, ty, size));
            continue;
        }
        match role {
            Role::Esp if gpt => {
                if esp.replace(p).is_some() {
                    return refuse(p.line, format!("a second ESP, {pwhat}; {SUPPORTED}"));
                }
                if let Some(fs) = fs {
                    let ty = fs.field("type").and_then(Node::text).map(str::trim);
                    if !matches!(ty, None | Some("vfat" | "fat")) {
                        return refuse(
                            fs.mkfs.line,
                            format!(
                                "the ESP {pwhat} has a {} filesystem: kiln's ESP is vfat",
                                ty.unwrap_or("")
                            ),
                        );
                    }
                    if !matches!(fs.mount_point(), None | Some("/boot/efi")) {
                        return refuse(
                            fs.mount.map_or(fs.mkfs.line, |m| m.line),
                            format!(
                                "the ESP {pwhat} is mounted at {}: kiln mounts the ESP at /boot/efi",
                                fs.mount_point().unwrap_or("")
                            ),
                        );
                    }
                    check_fs(fs, "/boot/efi")?;
                }
            }
            Role::BiosBoot if gpt => {
                if bios.replace(p).is_some() {
                    return refuse(
                        p.line,
                        format!("a second BIOS boot partition, {pwhat}; {SUPPORTED}"),
                    );
                }
                if let Some(fs) = fs {
                    return refuse(
                        fs.mkfs.line,
                        format!(
                            "the BIOS boot {pwhat} has a filesystem: GRUB's core image is written \
                             to it raw"
                        ),
                    );
                }
            }
            _ => {
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
                let kind = match &role {
                    Role::Other(ty) => format!("type {ty}, "),
                    _ => String::new(),
                };
                return refuse(
                    p.line,
                    format!(
                        "{pwhat} ({kind}{use_}) is not supported: kiln builds a single root \
                         filesystem plus the boot partitions of its layouts; {SUPPORTED}"
                    ),
                );
            }
        }
    }

    if let Some((pwhat, role, ty, size)) = root_check {
        if role != Role::Linux {
            let ty = ty.unwrap_or("");
            return refuse(
                root.line,
                format!(
                    "the root {pwhat} has type {ty}: kiln's root partition is a Linux one ({})",
                    if gpt { "8300 or 8304" } else { "0x83" }
                ),
            );
        }
        if percent(size) != Some(100.0) {
            return refuse(
                root.line,
                format!(
                    "the root {pwhat} has `size: {size}`: kiln sizes root to fill the disk \
                     (size: 100%); set the disk's size with --image-size (DIB_IMAGE_SIZE) instead"
                ),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> DibLayout {
        match parse(text, "DIB_BLOCK_DEVICE_CONFIG") {
            Ok(l) => l,
            Err(e) => panic!("refused: {e:#}\n{text}"),
        }
    }

    fn err(text: &str) -> String {
        match parse(text, "DIB_BLOCK_DEVICE_CONFIG") {
            Ok(l) => panic!("accepted as {l:?}:\n{text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn layout(l: &'static str, fs: Option<&str>, label: Option<&str>) -> DibLayout {
        DibLayout {
            layout: l,
            fs_type: fs.map(str::to_string),
            root_label: label.map(str::to_string),
        }
    }

    /// diskimage-builder's vm/block-device-default.yaml.
    const DIB_DEFAULT_MBR: &str = "\
# Default single partition loopback

- local_loop:
    name: image0

- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [ boot, primary ]
        size: 100%
        mkfs:
          mount:
            mount_point: /
            fstab:
              options: \"defaults\"
              fsck-passno: 1
";

    /// The same before DIB had a mkfs plugin (DIB 2.0's vm element; still in use).
    const DIB_LEGACY_MBR: &str = "\
- local_loop:
    name: image0

- partitioning:
   base: image0
   label: mbr
   partitions:
     - name: root
       flags: [ boot, primary ]
       size: 100%
";

    /// diskimage-builder's block_device/tests/config/gpt_efi.yaml (the layout of its
    /// block-device-efi element).
    const DIB_GPT_EFI: &str = "\
# A sample config that has GPT/bios and EFI boot partitions

- local_loop:
    name: image0

- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: 'EF00'
        size: 8MiB
        mkfs:
          type: vfat
          mount:
            mount_point: /boot/efi
            fstab:
              options: \"defaults\"
              fsck-passno: 1
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        type: '8300'
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: \"defaults\"
              fsck-passno: 1
";

    /// diskimage-builder's block_device/tests/config/lvm_tree.yaml.
    const DIB_LVM: &str = "\
- local_loop:
    name: image0

- partitioning:
    base: image0
    name: mbr
    label: mbr
    partitions:
      - name: root
        base: image0
        flags: [ boot,primary ]
        size: 3G

- lvm:
    base: mbr
    pvs:
      - name: pv
        options: [\"--force\"]
        base: root

    vgs:
      - name: vg
        base: [\"pv\"]
        options: [\"--force\"]

    lvs:
      - name: lv_root
        base: vg
        size: 1800M

      - name: lv_var
        base: vg
        size: 500M

- mkfs:
    name: fs_root
    base: lv_root
    label: \"img-rootfs\"
    type: \"xfs\"
    mount:
      mount_point: /
      fstab:
          options: \"rw,relatime\"
          fsck-passno: 1

- mkfs:
    name: fs_var
    base: lv_var
    type: \"xfs\"
    mount:
      mount_point: /var
      fstab:
          options: \"rw,relatime\"
";

    /// diskimage-builder's block_device/tests/config/multiple_partitions_tree.yaml.
    const DIB_MULTI_PARTITION: &str = "\
- local_loop:
    name: image0

- partitioning:
    base: image0
    name: mbr
    label: mbr
    partitions:
      - name: root
        flags: [boot, primary]
        size: 54%
        mkfs:
          type: xfs
          uuid: root-uuid-1234
          mount:
            mount_point: /
            fstab:
              options: \"defaults\"
              fsck-passno: 1
      - name: var
        size: 40%
        mkfs:
          type: xfs
          uuid: var-uuid-1234
          mount:
            mount_point: /var
            fstab:
              options: \"defaults\"
              fsck-passno: 1
      - name: swap
        size: 1%
        mkfs:
          type: swap
          mount:
            mount_point: none
            fstab:
              fsck-passno: 0
              options: \"sw\"
";

    /// diskimage-builder's default for images without the vm element: a bare
    /// filesystem on the loop device.
    const DIB_BARE: &str = "\
- local_loop:
    name: image0
    mkfs:
      name: mkfs_root
      mount:
        mount_point: /
        fstab:
          options: \"defaults\"
          fsck-passno: 1
";

    #[test]
    fn dib_default_mbr() {
        assert_eq!(ok(DIB_DEFAULT_MBR), layout("mbr", None, None));
        assert_eq!(ok(DIB_LEGACY_MBR), layout("mbr", None, None));
    }

    #[test]
    fn dib_gpt_efi_example() {
        assert_eq!(ok(DIB_GPT_EFI), layout("gpt", Some("ext4"), None));
        // Without the BIOS boot partition: UEFI only.
        let efi = DIB_GPT_EFI.replace(
            "      - name: BSP\n        type: 'EF02'\n        size: 8MiB\n",
            "",
        );
        assert_ne!(efi, DIB_GPT_EFI);
        assert_eq!(ok(&efi), layout("efi", Some("ext4"), None));
        // block-device-efi-4k's 4096-byte sectors are not kiln's.
        let e = err(&DIB_GPT_EFI.replace("name: image0\n", "name: image0\n    block_size: 4096\n"));
        assert!(
            e.contains("block_size: 4096") && e.contains("512-byte"),
            "{e}"
        );
        assert_eq!(
            ok(&DIB_GPT_EFI.replace("name: image0\n", "name: image0\n    block_size: 512\n"))
                .layout,
            "gpt"
        );
    }

    #[test]
    fn dib_block_device_gpt_gets_kilns_gpt() {
        // diskimage-builder's block-device-gpt: BIOS boot + root, no ESP.
        let cfg = "\
- local_loop:
    name: image0

- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: BSP
        type: 'EF02'
        size: 8MiB
      - name: root
        flags: [ boot ]
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: \"defaults\"
              fsck-passno: 1
";
        assert_eq!(ok(cfg), layout("gpt", Some("ext4"), None));
        // A GPT with nothing to boot from.
        let e = err(&cfg.replace(
            "      - name: BSP\n        type: 'EF02'\n        size: 8MiB\n",
            "",
        ));
        assert!(
            e.contains("no ESP (EF00) and no BIOS boot partition"),
            "{e}"
        );
    }

    #[test]
    fn graph_form_is_read_like_the_tree_form() {
        let cfg = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: EF00
        size: 550MiB
      - name: BSP
        type: EF02
        size: 8MiB
      - name: root
        type: 8300
        size: 100%
- mkfs:
    name: fs_esp
    base: ESP
    type: vfat
- mount:
    name: mnt_esp
    base: fs_esp
    mount_point: /boot/efi
- mkfs:
    name: mkfs_root
    base: root
    type: btrfs
    label: my-root
- mount:
    name: mnt_root
    base: mkfs_root
    mount_point: /
- fstab:
    name: fstab_root
    base: mnt_root
    options: defaults
    fsck-passno: 1
";
        assert_eq!(ok(cfg), layout("gpt", Some("btrfs"), Some("my-root")));
    }

    #[test]
    fn lvm_is_refused() {
        let e = err(DIB_LVM);
        assert!(
            e.starts_with("DIB_BLOCK_DEVICE_CONFIG, line 14: `lvm` is not supported by kiln (no root, no device-mapper); supported: gpt (bios boot + ESP + root), efi (ESP + root), mbr (root), or a bare filesystem"),
            "{e}"
        );
    }

    #[test]
    fn a_var_partition_is_refused() {
        let e = err(DIB_MULTI_PARTITION);
        assert!(
            e.contains("partition `var` (mounted at /var) is not supported"),
            "{e}"
        );
        assert!(e.contains("supported: gpt (bios boot + ESP + root)"), "{e}");
        // A separate /var on GPT, in the graph form.
        let e = err(&DIB_GPT_EFI.replace(
            "      - name: root\n",
            "      - name: var\n        size: 2GiB\n        mkfs:\n          type: ext4\n          \
             mount:\n            mount_point: /var\n      - name: root\n",
        ));
        assert!(
            e.contains("partition `var` (mounted at /var) is not supported"),
            "{e}"
        );
        // Swap, and a PReP boot partition (DIB's ppc layout).
        let swap = format!(
            "{DIB_DEFAULT_MBR}      - name: swap\n        size: 1GiB\n        mkfs:\n          \
             type: swap\n          mount:\n            mount_point: none\n"
        );
        let e = err(&swap);
        assert!(e.contains("partition `swap` (swap)"), "{e}");
        let ppc = "\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: boot
        flags: [ boot, primary ]
        type: '0x41'
        size: 8MiB
      - name: root
        flags: [ primary ]
        size: 100%
";
        let e = err(ppc);
        assert!(
            e.contains("partition `boot` (type 0x41, no filesystem)"),
            "{e}"
        );
    }

    #[test]
    fn root_must_fill_the_disk() {
        let e = err(&DIB_DEFAULT_MBR.replace("size: 100%", "size: 10GiB"));
        assert!(e.contains("line 10"), "{e}");
        assert!(e.contains("kiln sizes root to fill the disk"), "{e}");
        assert!(e.contains("--image-size"), "{e}");
        let e = err(&DIB_BARE.replace("name: image0\n", "name: image0\n    size: 7.5GiB\n"));
        assert!(
            e.contains("`size: 7.5GiB` on local_loop `image0`") && e.contains("--image-size"),
            "{e}"
        );
    }

    #[test]
    fn bare_filesystem() {
        assert_eq!(ok(DIB_BARE), layout("none", None, None));
        let labelled = DIB_BARE.replace(
            "name: mkfs_root\n",
            "name: mkfs_root\n      type: ext4\n      label: root\n",
        );
        assert_eq!(ok(&labelled), layout("none", Some("ext4"), Some("root")));
        // DIB's default root label is kiln's default too.
        let default_label = DIB_BARE.replace(
            "name: mkfs_root\n",
            "name: mkfs_root\n      label: cloudimg-rootfs\n",
        );
        assert_eq!(ok(&default_label), layout("none", None, None));
        // DIB labels other filesystems by their name.
        assert_eq!(
            ok(&DIB_BARE.replace("name: mkfs_root", "name: rootfs"))
                .root_label
                .as_deref(),
            Some("rootfs")
        );
        // The graph form, and a local_loop alone (DIB before its mkfs plugin).
        let graph = "\
- local_loop:
    name: image0
- mkfs:
    name: mkfs_root
    base: image0
    type: ext4
- mount:
    name: mount_mkfs_root
    base: mkfs_root
    mount_point: /
";
        assert_eq!(ok(graph), layout("none", Some("ext4"), None));
        assert_eq!(
            ok("- local_loop:\n    name: image0\n"),
            layout("none", None, None)
        );
        // Mounted anywhere but / it is not a root filesystem.
        let e = err(&DIB_BARE.replace("mount_point: /", "mount_point: /srv"));
        assert!(e.contains("mounted at /srv"), "{e}");
    }

    #[test]
    fn older_dict_form() {
        // DIB 2.0's dict form: plugins as keys, local_loop keyed by image name.
        let cfg = "\
local_loop:
  image0:

partitioning:
  base: image0
  label: mbr
  partitions:
    - name: root
      flags: [ boot, primary ]
      size: 100%
";
        assert_eq!(ok(cfg), layout("mbr", None, None));
        // partitioning keyed by the disk it partitions (DIB's block-device spec).
        let keyed = "\
local_loop:
  image0:
partitioning:
  image0:
    label: gpt
    partitions:
      - name: ESP
        type: EF00
        size: 16MiB
      - name: root
        size: 100%
";
        assert_eq!(ok(keyed), layout("efi", None, None));
        // The tree notation written as a mapping, as DIB's docs show it.
        let tree = "\
local_loop:
  name: image0
  mkfs:
    name: root_fs
    label: r00t
    mount:
      mount_point: /
";
        assert_eq!(ok(tree), layout("none", None, Some("r00t")));
        // The spec's [plugin, options] pairs.
        let pairs = r#"[["local_loop", {"image0": {}}],
 ["partitioning", {"image0": {"label": "mbr",
   "partitions": [{"name": "root", "flags": ["boot"], "size": "100%"}]}}]]"#;
        assert_eq!(ok(pairs), layout("mbr", None, None));
    }

    #[test]
    fn broken_yaml_names_line_and_column() {
        let e = err("- local_loop:\n    name: image0\n  - partitioning: [\n");
        assert!(
            e.starts_with("DIB_BLOCK_DEVICE_CONFIG: invalid YAML at line "),
            "{e}"
        );
        assert!(e.contains("column"), "{e}");
        let e = err("- local_loop:\n    name: \"image0\n");
        assert!(e.contains("invalid YAML at line"), "{e}");
        let e = err("- local_loop:\n\tname: image0\n");
        assert!(e.contains("invalid YAML at line 2"), "{e}");
    }

    #[test]
    fn unsupported_settings_are_refused() {
        let cases: &[(&str, &str, &str)] = &[
            // (replace, with, expected in error)
            (
                "- local_loop:",
                "- raid:",
                "`raid` is not a diskimage-builder block-device plugin",
            ),
            (
                "label: mbr",
                "label: dos",
                "a partition table is mbr or gpt",
            ),
            ("    label: mbr\n", "", "has no `label`"),
            (
                "        mkfs:\n",
                "        mkfs:\n          uuid: 1234\n",
                "kiln chooses the filesystem UUIDs",
            ),
            (
                "        mkfs:\n",
                "        mkfs:\n          opts: \"-i 16384\"\n",
                "--mkfs-options",
            ),
            (
                "options: \"defaults\"",
                "options: \"defaults,noatime\"",
                "fstab options `defaults,noatime` for /",
            ),
            (
                "flags: [ boot, primary ]",
                "flags: [ boot, hidden ]",
                "unknown flag",
            ),
            (
                "mount_point: /",
                "mount_piont: /",
                "unknown key `mount_piont` in mount",
            ),
            (
                "base: image0",
                "base: image1",
                "is on `image1`, not on the disk `image0`",
            ),
            (
                "    base: image0\n",
                "    base: image0\n    align: 4MiB\n",
                "kiln aligns partitions to 1 MiB",
            ),
        ];
        for (from, to, expected) in cases {
            let cfg = DIB_DEFAULT_MBR.replacen(from, to, 1);
            assert_ne!(&cfg, DIB_DEFAULT_MBR, "{from}");
            let e = err(&cfg);
            assert!(e.contains(expected), "{from} -> {to}: {e}");
        }
        // Alignments that divide 1 MiB are kept by kiln's.
        let cfg =
            DIB_DEFAULT_MBR.replace("    base: image0\n", "    base: image0\n    align: 64KiB\n");
        assert_eq!(ok(&cfg).layout, "mbr");
        // DIB's multi_key_node.yaml.
        let e = err("- mkfs:\n    name: root_fs\n    base: root_part\n  mount:\n    name: m\n");
        assert!(e.contains("exactly one plugin"), "{e}");
        // Two disks, two tables.
        let e = err(&format!(
            "{DIB_DEFAULT_MBR}\n- local_loop:\n    name: data\n"
        ));
        assert!(e.contains("a second `local_loop` (`data`)"), "{e}");
        let e = err("- partitioning:\n    base: image0\n    label: mbr\n    partitions: []\n");
        assert!(e.contains("no `local_loop`"), "{e}");
        // The ESP is kiln's: vfat at /boot/efi.
        let e = err(&DIB_GPT_EFI.replace("type: vfat", "type: ext4"));
        assert!(e.contains("kiln's ESP is vfat"), "{e}");
        let e = err(&DIB_GPT_EFI.replace("mount_point: /boot/efi", "mount_point: /efi"));
        assert!(e.contains("kiln mounts the ESP at /boot/efi"), "{e}");
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "~",
            "[]",
            "{}",
            "42",
            "- 42",
            "- [1, 2, 3]",
            "- local_loop: 7",
            "- {? [a, b] : c}",
            "- local_loop:\n    name: [a]\n",
            "- partitioning:\n    partitions: 5\n",
            "- local_loop:\n    name: image0\n- partitioning:\n    base: image0\n    label: gpt\n    partitions:\n      - size: 100%\n",
            "- local_loop: {name: a}\n---\n- local_loop: {name: b}\n",
            "- local_loop: &a {name: x}\n- local_loop: *a\n",
            "- local_loop: *nope\n",
            "\u{feff}\u{0}",
        ] {
            assert!(parse(text, "X").is_err(), "{text:?}");
        }
        // Deep nesting and alias bombs are bounded.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&deep).contains("invalid YAML"));
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert!(err(&deep).contains("nested too deeply"));
        let deep = format!(
            "a:\n{}",
            (1..200)
                .map(|i| format!("{}b{i}:\n", " ".repeat(i)))
                .collect::<String>()
        );
        assert!(err(&deep).contains("nested too deeply"));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            bomb.push_str(&format!(
                "b{i}: &b{i} [{p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}]\n",
                p = if i == 1 {
                    "*a".to_string()
                } else {
                    format!("*b{}", i - 1)
                }
            ));
        }
        assert!(err(&bomb).contains("implausibly large"));
    }

    #[test]
    fn mangled_configs_never_panic() {
        // Every prefix of the examples, and bytes swapped in by a fixed generator.
        let samples = [
            DIB_DEFAULT_MBR,
            DIB_GPT_EFI,
            DIB_LVM,
            DIB_MULTI_PARTITION,
            DIB_BARE,
        ];
        for s in samples {
            for (i, _) in s.char_indices() {
                let _ = parse(&s[..i], "X");
            }
        }
        let alphabet = b" \n:-[]{}&*!|>'\"#%@,?0aZ";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for s in samples {
            for _ in 0..300 {
                let mut bytes = s.as_bytes().to_vec();
                for _ in 0..3 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let at = (seed as usize) % bytes.len();
                    bytes[at] = alphabet[(seed >> 32) as usize % alphabet.len()];
                }
                if let Ok(text) = String::from_utf8(bytes) {
                    let _ = parse(&text, "X");
                }
            }
        }
    }

    #[test]
    fn sizes_parse_like_dib() {
        assert_eq!(parse_abs_size("1MiB"), Some(MIB));
        assert_eq!(parse_abs_size("64KiB"), Some(64 * 1024));
        assert_eq!(parse_abs_size("1.5 GB"), Some(1_500_000_000));
        assert_eq!(parse_abs_size("512"), Some(512));
        assert_eq!(parse_abs_size("3G"), Some(3_000_000_000));
        assert_eq!(parse_abs_size("1x"), None);
        assert_eq!(parse_abs_size("1..2M"), None);
        assert_eq!(percent("100%"), Some(100.0));
        assert_eq!(percent("54%"), Some(54.0));
        assert_eq!(percent("100"), None);
    }
}
