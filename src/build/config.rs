//! One build's settings, after layering defaults, environment and flags.

use super::mirror;
use crate::cli::{DiskImageArgs, Vars};
use crate::disk::{FsType, Layout};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What the build assembles from the finished tree.
#[derive(Debug, Clone)]
pub enum Kind {
    Disk,
    /// NAME.kernel and NAME.initramfs (ramdisk-image-create).
    Ramdisk(crate::ramdisk::Compression),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub kind: Kind,
    pub vars: Vars,
    /// Output path without extension.
    pub output: PathBuf,
    /// `-t`, in the order given; empty for a ramdisk (see [`Config::output_names`]).
    pub formats: Vec<crate::disk::Format>,
    pub arch: String,
    pub release: String,
    pub mirror: String,
    pub flavours: Vec<String>,
    pub user_flavour_path: Vec<String>,
    pub builtin_flavours: PathBuf,
    pub packages: Vec<String>,
    pub image_size: Option<u64>,
    /// The root filesystem: DIB_BLOCK_DEVICE_CONFIG's, else FS_TYPE/DIB_ROOT_FSTYPE.
    pub fs_type: FsType,
    pub root_label: String,
    /// The layout DIB_BLOCK_DEVICE_CONFIG describes, which overrides the flavours'.
    pub block_device_config: Option<Layout>,
    pub cache_dir: PathBuf,
    /// `--image-cache`/DIB_IMAGE_CACHE as the caller gave it (hooks' DIB_IMAGE_CACHE).
    pub image_cache: Option<PathBuf>,
    pub use_cache: bool,
    pub trace: bool,
    /// DIB_DEBUG_TRACE: how many times -x was given.
    pub debug_trace: u8,
    pub compress: bool,
    pub clear_env: bool,
    /// Which checksum files to write beside each output, in writing order.
    pub checksums: Vec<Checksum>,
    /// `--max-online-resize`: mke2fs `-E resize=`.
    pub max_online_resize: Option<u64>,
    /// DIB_JOURNAL_SIZE (MiB): mke2fs `-J size=`, and added to a computed size.
    pub journal_mib: Option<u64>,
    /// DIB_IMAGE_EXTRA_SIZE (bytes) added to the computed image size.
    pub extra_size: Option<u64>,
    /// DIB_SHOW_IMAGE_USAGE: list the tree's big files and directories.
    pub show_usage: bool,
    /// Elapsed-time stamps on progress lines (DIB_NO_TIMESTAMP=1 turns them off).
    pub timestamps: bool,
    pub offline: bool,
    pub dry_run: bool,
    pub qemu_img_options: String,
    pub mkfs_options: Vec<String>,
    pub seccomp_profile: Option<PathBuf>,
    /// The tree goes into a tmpfs when this much memory is free (bytes); None: on disk.
    pub tmpfs_min: Option<u64>,
    /// The command line after the program name (DIB_ARGS).
    pub argv: Vec<String>,
    /// `--install-type`, the hooks' DIB_DEFAULT_INSTALLTYPE.
    pub install_type: Option<String>,
    /// kiln's own implementation of diskimage-builder's `lib/` (hooks' `_LIB`).
    pub dib_lib: PathBuf,
    /// `--seed`/DIB_IMAGE_SEED: the seed of the image's identities.
    pub seed: Option<crate::disk::Seed>,
    /// SOURCE_DATE_EPOCH: outputs are reproducible, their times clamped to it.
    pub source_date_epoch: Option<i64>,
}

impl Config {
    pub fn from_args(a: DiskImageArgs, vars: Vars) -> Result<Config> {
        Config::new(a, vars, Kind::Disk)
    }

    /// ramdisk-image-create: the ramdisk flavour first, kernel and initramfs out.
    pub fn from_ramdisk_args(r: crate::cli::RamdiskArgs, vars: Vars) -> Result<Config> {
        let compression = crate::ramdisk::Compression::parse(&r.compression)?;
        let mut cfg = Config::new(r.common, vars, Kind::Ramdisk(compression))?;
        let at = usize::from(cfg.flavours.first().is_some_and(|f| f == "base"));
        cfg.flavours.insert(at, r.ramdisk_element);
        Ok(cfg)
    }

    fn new(a: DiskImageArgs, vars: Vars, kind: Kind) -> Result<Config> {
        let output = a
            .output
            .clone()
            .or_else(|| vars.get("IMAGE_NAME").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("image"));
        let block_device = block_device_config(&vars)?;
        // A ramdisk's outputs are fixed: its -t is not read.
        let formats = match kind {
            Kind::Disk => a
                .types
                .as_deref()
                .unwrap_or("qcow2")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(crate::disk::Format::parse)
                .collect::<Result<Vec<_>>>()?,
            Kind::Ramdisk(_) => Vec::new(),
        };
        let arch = normalise_arch(a.arch.as_deref().or(vars.get("ARCH")).unwrap_or("amd64"))?;
        let release = vars.get("DIB_RELEASE").unwrap_or("bookworm").to_string();
        // diskimage-builder's debian-minimal takes its own name for the mirror first.
        let mirror = match a
            .mirror
            .as_deref()
            .or(vars.get("DIB_DEBIAN_DISTRIBUTION_MIRROR"))
            .or(vars.get("DIB_DISTRIBUTION_MIRROR"))
        {
            Some(m) => m.trim_end_matches('/').to_string(),
            None => mirror::from_host_apt()?,
        };
        mirror::check(&mirror)?;
        let mut flavours = Vec::new();
        if !a.no_base {
            flavours.push("base".to_string());
        }
        flavours.extend(a.flavours.iter().cloned());
        let user_flavour_path = user_flavour_path(&vars);
        let image_size = match a.image_size.as_deref().or(vars.get("DIB_IMAGE_SIZE")) {
            Some(s) => Some(parse_size(s)?),
            None => None,
        };
        let cache_dir = cache_dir(&a, &vars)?;
        let builtin_flavours = builtin_flavours()?;
        let dib_lib = dib_lib(&builtin_flavours)?;
        let mkfs = a
            .mkfs_options
            .clone()
            .or_else(|| vars.get("MKFS_OPTS").map(str::to_string))
            .unwrap_or_default();
        if let Some(label) = vars
            .get("DIB_BOOT_LABEL")
            .filter(|l| *l != crate::disk::ESP_LABEL)
        {
            bail!(
                "DIB_BOOT_LABEL={label:?}: kiln has no separate /boot and always labels the EFI system partition {}; unset DIB_BOOT_LABEL",
                crate::disk::ESP_LABEL
            );
        }
        let extra_size = match vars.get("DIB_IMAGE_EXTRA_SIZE") {
            Some(v) if image_size.is_some() => bail!(
                "DIB_IMAGE_EXTRA_SIZE={v:?} adds to the computed image size, but --image-size/DIB_IMAGE_SIZE fixes the size: give only one"
            ),
            Some(v) => Some(parse_size(v).context("DIB_IMAGE_EXTRA_SIZE (GiB)")?),
            None => None,
        };
        let journal_mib = match vars.get("DIB_JOURNAL_SIZE") {
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| {
                        format!("DIB_JOURNAL_SIZE={v:?}: expected a whole number of MiB")
                    })?,
            ),
            None => None,
        };
        let cfg = Config {
            kind,
            output,
            formats,
            arch,
            release,
            mirror,
            flavours,
            user_flavour_path,
            builtin_flavours,
            packages: a.package_list(),
            image_size,
            fs_type: fs_type(&vars, block_device.as_ref())?,
            max_online_resize: a.max_online_resize,
            journal_mib,
            extra_size,
            show_usage: vars.get("DIB_SHOW_IMAGE_USAGE").is_some_and(|v| v != "0"),
            root_label: block_device
                .as_ref()
                .and_then(|b| b.root_label.clone())
                .or_else(|| a.root_label.clone())
                .or_else(|| vars.get("DIB_ROOT_LABEL").map(str::to_string))
                .unwrap_or_else(|| "cloudimg-rootfs".into()),
            block_device_config: block_device.as_ref().map(|b| b.layout),
            cache_dir,
            image_cache: a
                .image_cache
                .clone()
                .or_else(|| vars.get("DIB_IMAGE_CACHE").map(PathBuf::from)),
            use_cache: !a.no_cache,
            trace: a.trace > 0,
            debug_trace: a.trace,
            compress: !a.uncompressed,
            clear_env: a.clear_env,
            checksums: checksums(a.checksum, vars.get("DIB_CHECKSUM"))?,
            timestamps: !flag(&vars, "DIB_NO_TIMESTAMP")?,
            offline: a.offline || vars.get("DIB_OFFLINE").is_some_and(|v| v != "0"),
            dry_run: a.dry_run,
            qemu_img_options: a.qemu_img_options.clone().unwrap_or_default(),
            mkfs_options: mkfs.split_whitespace().map(str::to_string).collect(),
            seccomp_profile: a.seccomp_profile.clone(),
            tmpfs_min: tmpfs_min(&a, &vars)?,
            argv: std::env::args().skip(1).collect(),
            install_type: a.install_type.clone(),
            dib_lib,
            seed: match a.seed.as_deref().or(vars.get("DIB_IMAGE_SEED")) {
                Some(s) => Some(crate::disk::Seed::given(s).context("--seed/DIB_IMAGE_SEED")?),
                None => None,
            },
            source_date_epoch: source_date_epoch(&vars)?,
            vars,
        };
        Ok(cfg)
    }

    /// What each output's name ends in, in writing order: `-t`'s formats, or a
    /// ramdisk's kernel and initramfs.
    pub fn output_names(&self) -> Vec<&'static str> {
        match self.kind {
            Kind::Disk => self.formats.iter().map(|f| f.as_str()).collect(),
            Kind::Ramdisk(_) => vec!["kernel", "initramfs"],
        }
    }

    /// NAME.FMT
    pub fn output_path(&self, format: &str) -> PathBuf {
        let mut s = self.output.as_os_str().to_owned();
        s.push(".");
        s.push(format);
        PathBuf::from(s)
    }
}

fn normalise_arch(a: &str) -> Result<String> {
    Ok(match a {
        "amd64" | "x86_64" => "amd64".into(),
        "arm64" | "aarch64" => "arm64".into(),
        other => bail!("architecture `{other}` is not supported: kiln builds amd64 (x86_64) and arm64 (aarch64)"),
    })
}

/// diskimage-builder takes DIB_IMAGE_SIZE as GiB (possibly fractional); kiln also
/// takes K/M/G/T suffixes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1 << 30),
    };
    let n: f64 = num.parse().map_err(|_| {
        anyhow::anyhow!("image size `{s}` is not a size: use e.g. 2G, 1536M or 2 (GiB)")
    })?;
    // NaN is not positive either.
    if n.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        bail!("image size `{s}` must be positive");
    }
    Ok((n * mult as f64).ceil() as u64)
}

pub fn cache_dir(a: &DiskImageArgs, vars: &Vars) -> Result<PathBuf> {
    match a
        .image_cache
        .clone()
        .or_else(|| vars.get("DIB_IMAGE_CACHE").map(PathBuf::from))
    {
        Some(d) => Ok(d),
        None => default_cache_dir(),
    }
}

fn default_cache_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(Path::new(&x).join("kiln"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set: give --image-cache DIR")?;
    Ok(Path::new(&home).join(".cache/kiln"))
}

/// The user's flavour directories, KILN_FLAVOURS_PATH's before ELEMENTS_PATH's.
pub fn user_flavour_path(vars: &Vars) -> Vec<String> {
    let mut path = Vec::new();
    for var in ["KILN_FLAVOURS_PATH", "ELEMENTS_PATH"] {
        if let Some(v) = vars.get(var) {
            path.extend(v.split(':').filter(|s| !s.is_empty()).map(str::to_string));
        }
    }
    path
}

/// Built-in flavours: KILN_BUILTIN_FLAVOURS, else those installed with kiln
/// (PREFIX/share/kiln/flavours), else the source tree's when kiln runs from it.
pub fn builtin_flavours() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_BUILTIN_FLAVOURS") {
        return Ok(PathBuf::from(p));
    }
    let installed = installed("flavours");
    if let Some(p) = [installed.clone(), source_tree("flavours")]
        .into_iter()
        .flatten()
        .find(|p| p.is_dir())
    {
        return Ok(p);
    }
    bail!(
        "kiln's built-in flavours are not installed{}: reinstall kiln (make install, or its package), \
         or set KILN_BUILTIN_FLAVOURS to a flavours/ directory",
        expected(installed.as_deref())
    )
}

/// `dib-lib/` (diskimage-builder's library for hooks, $_LIB) sits beside the
/// built-in flavours, as in the source tree and an install; a KILN_BUILTIN_FLAVOURS
/// elsewhere takes the installed one.
fn dib_lib(builtin_flavours: &Path) -> Result<PathBuf> {
    let beside = builtin_flavours.with_file_name("dib-lib");
    if let Some(p) = [
        Some(beside.clone()),
        installed("dib-lib"),
        source_tree("dib-lib"),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("die").is_file())
    {
        return Ok(p);
    }
    bail!(
        "kiln's dib-lib/ (diskimage-builder's library for hooks, $_LIB) is not beside the built-in flavours: \
         expected {}; install it with the flavours",
        beside.display()
    )
}

/// `make install` puts kiln's data in PREFIX/share/kiln, beside PREFIX/bin.
fn installed(rel: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("share/kiln").join(rel))
}

/// The checkout kiln was built in, only while kiln runs from it (cargo's
/// target/): an installed kiln must not quietly use a source tree that
/// happens to still be there.
fn source_tree(rel: &str) -> Option<PathBuf> {
    let src = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).ok()?;
    let exe = std::env::current_exe().ok()?;
    exe.starts_with(&src).then(|| src.join(rel))
}

fn expected(p: Option<&Path>) -> String {
    p.map(|p| format!(" (expected {})", p.display()))
        .unwrap_or_default()
}

pub use crate::disk::Checksum;

/// SOURCE_DATE_EPOCH as the reproducible-builds specification defines it: whole
/// seconds since 1970, UTC.
fn source_date_epoch(vars: &Vars) -> Result<Option<i64>> {
    let Some(v) = vars.get("SOURCE_DATE_EPOCH") else {
        return Ok(None);
    };
    match v.trim().parse::<i64>() {
        Ok(n) if (0..=253_402_300_799).contains(&n) => Ok(Some(n)),
        _ => bail!(
            "SOURCE_DATE_EPOCH={v:?}: expected whole seconds since 1970-01-01 UTC, \
             e.g. the last commit's `git log -1 --format=%ct`"
        ),
    }
}

/// diskimage-builder sets DIB_ROOT_FSTYPE from its block-device config; kiln
/// takes it as another name for FS_TYPE, and refuses the two disagreeing. A
/// DIB_BLOCK_DEVICE_CONFIG that names the root's type wins over both, as in
/// diskimage-builder.
fn fs_type(vars: &Vars, block_device: Option<&BlockDeviceConfig>) -> Result<FsType> {
    let name = match (vars.get("FS_TYPE"), vars.get("DIB_ROOT_FSTYPE")) {
        (Some(a), Some(b)) if a != b => {
            bail!("FS_TYPE={a:?} and DIB_ROOT_FSTYPE={b:?} disagree: set one root filesystem type")
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => "ext4",
    };
    match block_device.and_then(|b| b.fs_type.as_deref().map(|t| (t, &b.origin))) {
        Some((t, origin)) => FsType::parse(t).with_context(|| origin.clone()),
        None => FsType::parse(name).context("FS_TYPE"),
    }
}

/// diskimage-builder's DIB_BLOCK_DEVICE_CONFIG, read.
struct BlockDeviceConfig {
    layout: Layout,
    fs_type: Option<String>,
    root_label: Option<String>,
    /// The variable, and the file the YAML came from if it came from one.
    origin: String,
}

/// DIB_BLOCK_DEVICE_CONFIG (YAML text, or file://PATH), for the layouts kiln
/// builds without a block device; it overrides FS_TYPE and the root label
/// where it names them, as in diskimage-builder.
fn block_device_config(vars: &Vars) -> Result<Option<BlockDeviceConfig>> {
    let Some(value) = vars.get("DIB_BLOCK_DEVICE_CONFIG") else {
        return Ok(None);
    };
    let (text, origin) = match value.strip_prefix("file://") {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading DIB_BLOCK_DEVICE_CONFIG file {path}"))?,
            format!("DIB_BLOCK_DEVICE_CONFIG ({path})"),
        ),
        None => (value.to_string(), "DIB_BLOCK_DEVICE_CONFIG".to_string()),
    };
    let l = crate::disk::dib_config::parse(&text, &origin)?;
    Ok(Some(BlockDeviceConfig {
        layout: Layout::parse(l.layout)?,
        fs_type: l.fs_type,
        root_label: l.root_label,
        origin,
    }))
}

/// A 0/1 switch as diskimage-builder tests it (`-eq 1`): anything else is refused.
fn flag(vars: &Vars, name: &str) -> Result<bool> {
    match vars.get(name).map(str::trim) {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(v) => bail!("{name}={v:?}: use 1 or 0"),
    }
}

/// `--checksum` is DIB_CHECKSUM=1. diskimage-builder tests the value for the
/// substrings md5 and sha256; kiln takes the same names as a comma list and
/// refuses anything else rather than silently writing no checksum.
fn checksums(flag: bool, var: Option<&str>) -> Result<Vec<Checksum>> {
    let value = if flag { "1" } else { var.unwrap_or("0").trim() };
    match value {
        "0" | "" => return Ok(Vec::new()),
        "1" => return Ok(vec![Checksum::Sha256, Checksum::Md5]),
        _ => {}
    }
    let mut out = Vec::new();
    for name in value.split([',', ' ']).filter(|s| !s.is_empty()) {
        let d = match name {
            "sha256" => Checksum::Sha256,
            "md5" => Checksum::Md5,
            _ => bail!(
                "DIB_CHECKSUM={value:?}: `{name}` is not a checksum kiln writes; use 0 (none), 1 (md5 and sha256), md5, sha256 or md5,sha256"
            ),
        };
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

/// diskimage-builder builds in a tmpfs unless told not to (--no-tmpfs) or
/// memory is short (--min-tmpfs / DIB_MIN_TMPFS, GiB, default 2).
fn tmpfs_min(a: &DiskImageArgs, vars: &Vars) -> Result<Option<u64>> {
    if a.no_tmpfs || vars.get("DIB_NO_TMPFS").is_some_and(|v| v != "0") {
        return Ok(None);
    }
    let gib = match (a.min_tmpfs, vars.get("DIB_MIN_TMPFS")) {
        (Some(g), _) => g as u64,
        (None, Some(v)) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("DIB_MIN_TMPFS={v:?}: expected a whole number of GiB"))?,
        (None, None) => 2,
    };
    Ok(Some(gib << 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_fstype_is_another_name_for_fs_type() {
        let mut v = Vars::default();
        assert_eq!(fs_type(&v, None).unwrap(), FsType::Ext4);
        v.set("DIB_ROOT_FSTYPE", "btrfs", "t");
        assert_eq!(fs_type(&v, None).unwrap(), FsType::Btrfs);
        v.set("FS_TYPE", "btrfs", "t");
        assert_eq!(fs_type(&v, None).unwrap(), FsType::Btrfs);
        v.set("FS_TYPE", "ext4", "t");
        let e = fs_type(&v, None).unwrap_err().to_string();
        assert!(
            e.contains("FS_TYPE") && e.contains("DIB_ROOT_FSTYPE"),
            "{e}"
        );
        v.set("DIB_NO_TIMESTAMP", "yes", "t");
        assert!(flag(&v, "DIB_NO_TIMESTAMP")
            .unwrap_err()
            .to_string()
            .contains("DIB_NO_TIMESTAMP"));
    }

    #[test]
    fn block_device_config_names_the_root_type_over_fs_type() {
        let mut v = Vars::default();
        v.set("FS_TYPE", "reiserfs", "t");
        let named = |t: &str| BlockDeviceConfig {
            layout: Layout::Mbr,
            fs_type: Some(t.into()),
            root_label: None,
            origin: "DIB_BLOCK_DEVICE_CONFIG (x.yaml)".into(),
        };
        assert_eq!(fs_type(&v, Some(&named("btrfs"))).unwrap(), FsType::Btrfs);
        let e = format!("{:#}", fs_type(&v, Some(&named("zfs"))).unwrap_err());
        assert!(
            e.starts_with("DIB_BLOCK_DEVICE_CONFIG (x.yaml): ") && e.contains("zfs"),
            "{e}"
        );
        let e = format!("{:#}", fs_type(&v, None).unwrap_err());
        assert!(e.starts_with("FS_TYPE: ") && e.contains("reiserfs"), "{e}");
    }

    #[test]
    fn dib_checksum_values() {
        assert_eq!(checksums(false, None).unwrap(), vec![]);
        assert_eq!(checksums(false, Some("0")).unwrap(), vec![]);
        assert_eq!(
            checksums(false, Some("1")).unwrap(),
            vec![Checksum::Sha256, Checksum::Md5]
        );
        assert_eq!(
            checksums(true, Some("0")).unwrap(),
            vec![Checksum::Sha256, Checksum::Md5]
        );
        assert_eq!(checksums(false, Some("md5")).unwrap(), vec![Checksum::Md5]);
        assert_eq!(
            checksums(false, Some("sha256")).unwrap(),
            vec![Checksum::Sha256]
        );
        assert_eq!(
            checksums(false, Some("md5,sha256")).unwrap(),
            vec![Checksum::Md5, Checksum::Sha256]
        );
        let e = checksums(false, Some("sha1")).unwrap_err().to_string();
        assert!(
            e.contains("DIB_CHECKSUM") && e.contains("sha1") && e.contains("md5, sha256"),
            "{e}"
        );
    }

    #[test]
    fn sizes_as_diskimage_builder_and_with_suffixes() {
        assert_eq!(parse_size("2").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5").unwrap(), 3 << 29);
        assert_eq!(parse_size("1536M").unwrap(), 1536 << 20);
        assert!(parse_size("big")
            .unwrap_err()
            .to_string()
            .contains("not a size"));
    }
}
