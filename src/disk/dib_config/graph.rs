//! YAML text to DIB's configuration graph: every plugin entry, written out as a graph
//! or nested as a tree, becomes one [`Entry`] naming its `base`, as DIB's
//! `config_tree_to_graph` reads them.

use super::{refuse, R, SUPPORTED};
use crate::yaml::{Node, Value};

/// The entries of a configuration, in the order DIB lists them.
pub(super) fn read(text: &str) -> R<Vec<Entry>> {
    flatten(&load(text)?)
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plugin {
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

    pub(super) fn key(self) -> &'static str {
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
    pub(super) fn options(self) -> &'static [&'static str] {
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

pub(super) const PARTITION_OPTIONS: [&str; 4] = ["flags", "size", "type", "base"];

/// One node of the flattened graph (DIB's `config_tree_to_graph` output).
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) plugin: Plugin,
    pub(super) name: String,
    pub(super) base: Option<String>,
    /// A `base` that is not a single name (LVM's lists).
    pub(super) base_list: bool,
    pub(super) fields: Vec<(String, Node)>,
    pub(super) partitions: Vec<Part>,
    pub(super) line: usize,
}

#[derive(Debug)]
pub(super) struct Part {
    pub(super) name: String,
    pub(super) fields: Vec<(String, Node)>,
    pub(super) line: usize,
}

pub(super) fn field<'a>(fields: &'a [(String, Node)], key: &str) -> Option<&'a Node> {
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
