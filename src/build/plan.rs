//! plan: every input is read and checked here, before the first byte is
//! downloaded (docs/architecture.md §2).

use super::config::Config;
use super::devices::ASK_FILE;
use super::tools::{self, Tools};
use crate::disk::{DiskIds, FsType, Layout, Seed};
use crate::flavour::{self, EnvFile, HookSet, PackageRequest, Phase, Resolved, SearchPath};
use crate::helper::client::Helper;
use crate::sandbox::{seccomp::Profile, IdMaps};
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub struct Plan {
    pub config: Config,
    pub resolved: Resolved,
    pub hooks: HookSet,
    pub env_files: Vec<EnvFile>,
    /// Installed by the bootstrap itself (one package-manager run is the fastest).
    pub bootstrap_packages: Vec<String>,
    /// Phase → (install, uninstall) for the packages the bootstrap cannot take.
    pub phase_packages: BTreeMap<Phase, (Vec<String>, Vec<String>)>,
    pub tools: Tools,
    /// The flavours' (or DIB_BLOCK_DEVICE_CONFIG's) layout, also when no
    /// output needs a disk.
    pub layout: Layout,
    /// Some output is made from an assembled disk (not only from the tree).
    pub needs_disk: bool,
    pub warnings: Vec<String>,
    pub cache_key: String,
    pub seccomp: Profile,
    pub maps: IdMaps,
    pub distro: String,
    /// kiln-helper, when a flavour asks for a real block device.
    pub helper: Option<(Helper, Vec<String>)>,
    /// Where flavours were looked for, first wins: hooks get it as ELEMENTS_PATH.
    pub search_dirs: Vec<std::path::PathBuf>,
    /// The seed of the image's identities (docs/architecture.md §12).
    pub seed: Seed,
    /// The filesystem identities, from the seed: hooks see them before the
    /// filesystems exist, and the disk plan uses them.
    pub ids: DiskIds,
}

impl Plan {
    pub fn make(mut config: Config) -> Result<Plan> {
        // A ramdisk's config has no formats.
        let needs_disk = config.formats.iter().any(|f| f.is_disk());
        if needs_disk {
            ext_options(&mut config)?;
        }
        let search = SearchPath::new(&config.user_flavour_path, config.builtin_flavours.clone());
        let layout_default = format!(
            "block-device-{}",
            config.vars.get("DIB_BLOCK_DEVICE").unwrap_or("gpt")
        );
        let defaults = [("block-device".to_string(), layout_default)];
        let resolved = flavour::resolve_with_defaults(&search, &config.flavours, &defaults)
            .map_err(|e| anyhow!("{e}"))?;
        let hooks = flavour::collect_hooks(&resolved).map_err(|e| anyhow!("{e}"))?;
        let env_files = flavour::environment_files(&resolved).map_err(|e| anyhow!("{e}"))?;
        let os = resolved
            .provider_of("operating-system")
            .map(|f| f.name.clone())
            .unwrap_or_default();
        let distro = if os.starts_with("debian") {
            "debian".to_string()
        } else {
            os.clone()
        };
        // --install-type is what the hooks' environment.d makes of DIB_DEFAULT_INSTALLTYPE.
        let lookup = |k: &str| match (k, &config.install_type) {
            ("DIB_DEFAULT_INSTALLTYPE", Some(t)) => Some(t.clone()),
            _ => config.vars.get(k).map(str::to_string),
        };
        let target = flavour::Target {
            distro: &distro,
            release: &config.release,
            arch: &config.arch,
            family: "debian",
            env: &lookup,
        };
        let packages = flavour::collect_packages(&resolved, &target).map_err(|e| anyhow!("{e}"))?;
        let (bootstrap_packages, phase_packages) = split_packages(&packages, &config.packages);

        let layout = match config.block_device_config {
            Some(l) => l,
            None => layout_of(&resolved, &config)?,
        };
        let tools = Tools::find(&needed_tools(&resolved, &config, layout, needs_disk)?)?;
        let seccomp = match &config.seccomp_profile {
            Some(p) => Profile::from_file(p).map_err(|e| anyhow!("{e}"))?,
            None => Profile::builtin().map_err(|e| anyhow!("{e}"))?,
        };
        let mut maps = IdMaps::for_caller()?;
        let mut warnings = hooks.warnings.clone();
        let helper = block_device_helper(&resolved, needs_disk, &mut warnings)?;
        warnings.extend(maps.single_id_warning());
        if let Some(refused) = crate::sandbox::container_check::subid_refusal(&maps) {
            warnings.push(refused);
            maps = IdMaps::single_for_caller();
        }
        warnings.extend(btrfs_owners_warning(&config, needs_disk, &maps));
        let cache_key = cache_key(
            &config,
            &distro,
            &hooks,
            &env_files,
            &bootstrap_packages,
            maps.has_range(),
        )?;
        let seed = match (&config.seed, config.source_date_epoch) {
            (Some(s), _) => s.clone(),
            (None, Some(_)) => {
                let inputs =
                    super::manifest::inputs(&config, &resolved, layout, &cache_key, &distro)?;
                Seed::from_inputs(&super::manifest::seed_digest(&inputs))
            }
            (None, None) => Seed::random()?,
        };
        Ok(Plan {
            ids: DiskIds::new(&seed, config.fs_type),
            seed,
            search_dirs: search.dirs.clone(),
            config,
            resolved,
            hooks,
            env_files,
            bootstrap_packages,
            phase_packages,
            tools,
            layout,
            needs_disk,
            warnings,
            cache_key,
            seccomp,
            maps,
            distro,
            helper,
        })
    }

    /// The `--dry-run` report.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(s, "flavours: {}", self.resolved.names().join(" "));
        for f in &self.resolved.flavours {
            let _ = writeln!(s, "  {:<20} {}", f.name, f.dir.display());
        }
        for n in &self.resolved.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        if let Some(blocked) = crate::sandbox::userns_check::blocker()
            .or_else(crate::sandbox::container_check::blocker)
        {
            let _ = writeln!(s, "warning: the build cannot start: {blocked}");
        }
        let _ = writeln!(
            s,
            "distribution: {} {} {} from {}",
            self.distro, c.release, c.arch, c.mirror
        );
        let _ = writeln!(
            s,
            "bootstrap packages: {}",
            self.bootstrap_packages.join(" ")
        );
        for (phase, (inst, uninst)) in &self.phase_packages {
            let _ = writeln!(
                s,
                "{phase} packages: install [{}] uninstall [{}]",
                inst.join(" "),
                uninst.join(" ")
            );
        }
        for phase in Phase::ALL {
            let hooks = self.hooks.phase(phase);
            let mut skipped = self.hooks.skipped_in(phase).peekable();
            if hooks.is_empty() && skipped.peek().is_none() {
                continue;
            }
            let _ = writeln!(s, "{phase}:");
            for h in hooks {
                let _ = writeln!(s, "  {:<32} ({})", h.name, h.flavour);
            }
            for d in skipped {
                let _ = writeln!(
                    s,
                    "  {:<32} ({}) skipped: not executable",
                    d.name, d.flavour
                );
            }
        }
        let mut outs = Vec::new();
        for f in c.output_names() {
            let out = c.output_path(f).display().to_string();
            outs.extend(
                c.checksums
                    .iter()
                    .map(|d| format!("{out}.{}", d.extension())),
            );
            outs.push(out);
        }
        let _ = writeln!(s, "disk layout: {}", self.layout.as_str());
        let _ = match c.source_date_epoch {
            Some(e) => writeln!(
                s,
                "reproducible: times clamped to SOURCE_DATE_EPOCH={e}, identities from seed {} ({})",
                self.seed.as_str(),
                self.seed.origin().as_str()
            ),
            None => writeln!(
                s,
                "identities from seed {} ({}); set SOURCE_DATE_EPOCH for reproducible outputs",
                self.seed.as_str(),
                self.seed.origin().as_str()
            ),
        };
        if self.needs_disk {
            let _ = writeln!(
                s,
                "root filesystem: {} (mkfs options: {})",
                c.fs_type.as_str(),
                c.mkfs_options.join(" ")
            );
        }
        match &self.helper {
            Some((h, askers)) => {
                let _ = writeln!(
                    s,
                    "block device: a loop device through {} ({:?}), for {}",
                    h.program.display(),
                    h.mode,
                    askers.join(", ")
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "block device: a plain file (no flavour asks for a real one)"
                );
            }
        }
        if !self.maps.has_range() {
            let _ = writeln!(
                s,
                "owners: no subordinate ids, so the owners hooks set are recorded by kiln and written into each output"
            );
        }
        let _ = writeln!(s, "outputs: {}", outs.join(" "));
        let _ = writeln!(s, "base-tree cache key: {}", &self.cache_key[..16]);
        s
    }
}

/// `--max-online-resize` and DIB_JOURNAL_SIZE are mke2fs options: they become
/// mkfs options for an ext root and are refused for any other, which has no
/// such setting.
fn ext_options(config: &mut Config) -> Result<()> {
    let fs = config.fs_type;
    let ext = matches!(fs, FsType::Ext2 | FsType::Ext3 | FsType::Ext4);
    if let Some(n) = config.max_online_resize {
        if !ext {
            bail!("--max-online-resize {n} sets mke2fs -E resize=, but the root filesystem is {}: it applies to ext2/ext3/ext4 only", fs.as_str());
        }
        config
            .mkfs_options
            .extend(["-E".to_string(), format!("resize={n}")]);
    }
    if let Some(j) = config.journal_mib {
        if !matches!(fs, FsType::Ext3 | FsType::Ext4) {
            bail!("DIB_JOURNAL_SIZE={j} sets the ext3/ext4 journal, but the root filesystem is {}, which has none kiln can size", fs.as_str());
        }
        config
            .mkfs_options
            .extend(["-J".to_string(), format!("size={j}")]);
    }
    Ok(())
}

/// Flavours with a `real-block-device` file get a loop device in block-device.d,
/// which only kiln-helper can attach: without it, fail now with how to install it.
fn block_device_helper(
    resolved: &Resolved,
    needs_disk: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<(Helper, Vec<String>)>> {
    let askers: Vec<String> = resolved
        .flavours
        .iter()
        .filter(|f| f.dir.join(ASK_FILE).exists())
        .map(|f| f.name.clone())
        .collect();
    if askers.is_empty() {
        return Ok(None);
    }
    if !needs_disk {
        warnings.push(format!("flavour {} asks for a real block device ({ASK_FILE}), but this build makes no disk image: ignored", askers.join(", ")));
        return Ok(None);
    }
    let explicit = std::env::var_os("KILN_HELPER").map(std::path::PathBuf::from);
    let helper = Helper::locate(explicit.as_deref())
        .with_context(|| format!("flavour {} asks for a real block device (its `{ASK_FILE}` file), which needs kiln-helper", askers.join(", ")))?;
    Ok(Some((helper, askers)))
}

/// Per phase: (packages to install, packages to remove).
type PhasePackages = BTreeMap<Phase, (Vec<String>, Vec<String>)>;

fn split_packages(reqs: &[PackageRequest], extra: &[String]) -> (Vec<String>, PhasePackages) {
    let mut boot: Vec<String> = extra.to_vec();
    let mut later: PhasePackages = BTreeMap::new();
    for r in reqs {
        let early = matches!(r.phase, Phase::PreInstall | Phase::Install);
        if early && !r.uninstall {
            boot.push(r.name.clone());
        } else {
            let e = later.entry(r.phase).or_default();
            if r.uninstall {
                e.1.push(r.name.clone())
            } else {
                e.0.push(r.name.clone())
            }
        }
    }
    boot.sort();
    boot.dedup();
    (boot, later)
}

fn layout_of(resolved: &Resolved, config: &Config) -> Result<Layout> {
    let layout = match resolved.provider_of("block-device") {
        // Standing in for diskimage-builder's block-device-*: the layout its own
        // block-device-default.yaml describes, as kiln maps it.
        Some(f) if f.stands_in_for.is_some() => {
            let yaml = f
                .stands_in_for
                .as_ref()
                .map(|d| d.join("block-device-default.yaml"))
                .unwrap_or_default();
            let text = std::fs::read_to_string(&yaml)
                .with_context(|| format!("reading {}", yaml.display()))?;
            crate::disk::dib_config::parse(&text, &yaml.display().to_string())?.layout
        }
        Some(f) => f.name.strip_prefix("block-device-").unwrap_or("gpt"),
        None => "none",
    };
    let layout = config
        .vars
        .get("KILN_BLOCK_DEVICE_LAYOUT")
        .unwrap_or(layout);
    Layout::parse(layout).with_context(|| {
        "block-device layout (KILN_BLOCK_DEVICE_LAYOUT / the block-device flavour)".to_string()
    })
}

/// Host tools: kiln's own, the disk assembly's, plus each flavour's `host-tools`
/// file (kiln's addition: one tool per line, `a|b` for alternatives).
fn needed_tools(
    resolved: &Resolved,
    config: &Config,
    layout: Layout,
    needs_disk: bool,
) -> Result<Vec<(&'static str, &'static str)>> {
    let mut t: Vec<(&'static str, &'static str)> = ["bash", "tar", "zstd"]
        .iter()
        .map(|n| (*n, tools::package_of(n)))
        .collect();
    for f in &resolved.flavours {
        let path = f.dir.join("host-tools");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let known: Vec<&'static str> = line
                .split('|')
                .map(|a| {
                    tools::PACKAGES
                        .iter()
                        .find(|(n, _)| *n == a.trim())
                        .map(|(n, _)| *n)
                })
                .collect::<Option<_>>()
                .with_context(|| {
                    format!(
                        "flavour `{}`, {} line {}: unknown host tool in `{line}`",
                        f.name,
                        path.display(),
                        i + 1
                    )
                })?;
            let pick = known
                .iter()
                .copied()
                .find(|a| which::which(a).is_ok())
                .unwrap_or(known[0]);
            t.push((pick, tools::package_of(pick)));
        }
    }
    if let super::config::Kind::Ramdisk(c) = config.kind {
        t.extend(c.tool());
    }
    let fs = config.fs_type;
    let layout = if needs_disk { layout } else { Layout::None };
    let fs_tools = if needs_disk { Vec::new() } else { fs.tools() };
    for h in crate::disk::host_tools(layout, fs, &config.formats) {
        if !fs_tools.contains(&h) {
            t.push((h.name, h.package));
        }
    }
    if config.checksums.contains(&crate::disk::Checksum::Md5) {
        t.push(("md5sum", "coreutils"));
    }
    t.sort();
    t.dedup();
    Ok(t)
}

/// Without a subordinate range every file of the tree belongs to root, and the
/// owners hooks chose are recorded beside (tree::owners); mkfs.btrfs --rootdir
/// copies the tree's owners and nothing can edit them afterwards.
fn btrfs_owners_warning(config: &Config, needs_disk: bool, maps: &IdMaps) -> Option<String> {
    (needs_disk && config.fs_type == FsType::Btrfs && !maps.has_range()).then(|| {
        "the btrfs root filesystem will have every file owned by root: without a subordinate \
         id range kiln records the owners packages ask for and writes them into ext2/3/4, tar, \
         tgz and squashfs outputs, but mkfs.btrfs --rootdir can only copy the tree's owners. \
         Add a subordinate range (see the warning above) or use an ext4 root (FS_TYPE=ext4)."
            .to_string()
    })
}

/// Everything that made the base tree: a change to any of it is a miss.
/// `has_range` too: with a range the tree's files carry their owners, without
/// one they all belong to root and carry the recorded owner in an attribute;
/// neither tree is right for the other kind of build.
fn cache_key(
    config: &Config,
    distro: &str,
    hooks: &HookSet,
    env_files: &[EnvFile],
    packages: &[String],
    has_range: bool,
) -> Result<String> {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("kiln", env!("CARGO_PKG_VERSION").as_bytes());
    field("distro", distro.as_bytes());
    field("release", config.release.as_bytes());
    field("arch", config.arch.as_bytes());
    field("mirror", config.mirror.as_bytes());
    field("packages", packages.join("\n").as_bytes());
    field(
        "owners",
        if has_range {
            "subordinate ids"
        } else {
            "recorded"
        }
        .as_bytes(),
    );
    let mut texts = Vec::new();
    for hook in hooks.phase(Phase::Root) {
        let body = std::fs::read(&hook.path)
            .with_context(|| format!("reading {}", hook.path.display()))?;
        field(&format!("root.d/{}", hook.name), &body);
        texts.push(body);
    }
    for e in env_files {
        let body =
            std::fs::read(&e.path).with_context(|| format!("reading {}", e.path.display()))?;
        field(&format!("environment.d/{}", e.name), &body);
        texts.push(body);
    }
    // The caller's variables that root.d or environment.d read can shape the tree
    // (DIB_DEBIAN_COMPONENTS, DIB_APT_SOURCES_CONF, DIB_MMDEBSTRAP_EXTRA_ARGS, a
    // custom element's own): each one mentioned is part of the key. The rest
    // (checksums, sizes, labels) cannot reach root.d and keep the cache warm.
    if !config.clear_env {
        for (k, v) in config.vars.for_hooks() {
            if texts.iter().any(|t| mentions(t, k)) {
                field(&format!("var/{k}"), v.as_bytes());
            }
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `name` occurs in `text` as a whole shell word (not inside a longer name).
fn mentions(text: &[u8], name: &str) -> bool {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let n = name.as_bytes();
    text.windows(n.len()).enumerate().any(|(i, w)| {
        w == n
            && (i == 0 || !ident(text[i - 1]))
            && text.get(i + n.len()).is_none_or(|b| !ident(*b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_tells_a_range_build_from_a_single_id_build() {
        use clap::Parser;
        let args =
            crate::cli::DiskImageArgs::try_parse_from(["disk-image-create", "-o", "x", "debian"])
                .unwrap();
        let c = Config::from_args(args, crate::cli::Vars::default()).unwrap();
        let key = |range| cache_key(&c, "debian", &HookSet::default(), &[], &[], range).unwrap();
        assert_eq!(key(true), key(true));
        assert_ne!(key(true), key(false));
    }

    #[test]
    fn a_btrfs_root_without_a_range_is_warned_about() {
        use clap::Parser;
        let args =
            crate::cli::DiskImageArgs::try_parse_from(["disk-image-create", "-o", "x", "debian"])
                .unwrap();
        let mut c = Config::from_args(args, crate::cli::Vars::default()).unwrap();
        let single = IdMaps::single_for_caller();
        assert_eq!(btrfs_owners_warning(&c, true, &single), None);
        c.fs_type = FsType::Btrfs;
        let w = btrfs_owners_warning(&c, true, &single).unwrap();
        assert!(
            w.contains("owned by root") && w.contains("subordinate"),
            "{w}"
        );
        // A tar of the tree gets its owners: only the btrfs disk cannot.
        assert_eq!(btrfs_owners_warning(&c, false, &single), None);
    }

    #[test]
    fn a_variable_is_mentioned_only_as_a_whole_name() {
        let hook = b"c=${DIB_DEBIAN_COMPONENTS:-main}\necho $DIB_RELEASE_X\n";
        assert!(mentions(hook, "DIB_DEBIAN_COMPONENTS"));
        assert!(!mentions(hook, "DIB_RELEASE"));
        assert!(!mentions(hook, "DEBIAN_COMPONENTS"));
        assert!(mentions(b"DIB_X", "DIB_X"));
    }
}
