//! The command line shared by the front ends: diskimage-builder's options (so
//! callers such as nodepool-builder run kiln unchanged) plus kiln's long options.

pub mod defaults;
pub mod get_kernel;
pub mod log;
pub mod status;

pub use defaults::Vars;
pub use get_kernel::GetKernelArgs;

use clap::Parser;
use std::path::PathBuf;

/// Build a disk image from flavours, as an ordinary user (no sudo).
#[derive(Parser, Debug, Clone)]
#[command(name = "disk-image-create", version, after_help = ENV_HELP)]
pub struct DiskImageArgs {
    /// Output name: writes NAME.qcow2 (or NAME.<format> for each -t). Default: IMAGE_NAME, else `image`.
    #[arg(short = 'o', value_name = "NAME")]
    pub output: Option<PathBuf>,

    /// Output formats, comma separated: qcow2 (default), raw, vhd, vmdk, tar, tgz, squashfs.
    #[arg(short = 't', value_name = "FMT[,FMT…]")]
    pub types: Option<String>,

    /// Image architecture (amd64; x86_64 is accepted). Default: ARCH, else amd64.
    #[arg(short = 'a', value_name = "ARCH")]
    pub arch: Option<String>,

    /// Trace: show kiln's own steps and export DIB_DEBUG_TRACE (the count of -x)
    /// so hooks trace themselves; -x -x also traces the helper scripts that test > 1.
    #[arg(short = 'x', action = clap::ArgAction::Count)]
    pub trace: u8,

    /// Do not compress qcow2 output.
    #[arg(short = 'u')]
    pub uncompressed: bool,

    /// Clear the environment: hooks get only kiln's variables, no DIB_* from the caller.
    #[arg(short = 'c')]
    pub clear_env: bool,

    /// Do not add the `base` flavour.
    #[arg(short = 'n')]
    pub no_base: bool,

    /// Extra packages to install, comma separated (may repeat).
    #[arg(short = 'p', value_name = "PKG[,PKG…]")]
    pub packages: Vec<String>,

    /// Write NAME.FMT.sha256 and NAME.FMT.md5 beside each output (DIB_CHECKSUM=1;
    /// DIB_CHECKSUM=md5 or sha256 writes only that one).
    #[arg(long)]
    pub checksum: bool,

    /// Image size, e.g. 2G, 1536M, or a number of GiB as diskimage-builder takes it
    /// (DIB_IMAGE_SIZE). Default: the content plus a margin.
    #[arg(long, value_name = "SIZE")]
    pub image_size: Option<String>,

    /// Cache directory for base trees and package downloads (DIB_IMAGE_CACHE;
    /// default ~/.cache/kiln).
    #[arg(long, value_name = "DIR")]
    pub image_cache: Option<PathBuf>,

    /// Build the tree on disk in $TMPDIR instead of in a tmpfs.
    #[arg(long)]
    pub no_tmpfs: bool,

    /// Use a tmpfs for the tree only with at least this many GiB of free memory
    /// (DIB_MIN_TMPFS; default 2).
    #[arg(long, value_name = "GIB")]
    pub min_tmpfs: Option<u32>,

    /// Extra options for `qemu-img convert`, e.g. "compat=1.1".
    #[arg(long, value_name = "OPTS")]
    pub qemu_img_options: Option<String>,

    /// Reserve room to grow the ext root filesystem online to N blocks
    /// (mke2fs -E resize=N).
    #[arg(long, value_name = "N")]
    pub max_online_resize: Option<u64>,

    /// Extra options for the root filesystem's mkfs.
    #[arg(long, value_name = "OPTS")]
    pub mkfs_options: Option<String>,

    /// Build from the caches only; fail naming what is missing instead of downloading.
    #[arg(long)]
    pub offline: bool,

    /// Root filesystem label (DIB_ROOT_LABEL; default cloudimg-rootfs).
    #[arg(long, value_name = "LABEL")]
    pub root_label: Option<String>,

    /// Distribution mirror (DIB_DISTRIBUTION_MIRROR; default: the host's apt sources).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,

    /// The hooks' default install type (DIB_DEFAULT_INSTALLTYPE; default source).
    #[arg(long, value_name = "TYPE")]
    pub install_type: Option<String>,

    /// Append everything kiln prints on stderr (hooks' output too) to FILE, each
    /// line stamped with the UTC time; implies DIB_QUIET=1 unless DIB_QUIET is set.
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,

    /// Only errors and the result (the files written) on the terminal.
    #[arg(long)]
    pub quiet: bool,

    /// Resolve flavours, check inputs and host tools, print the plan; build nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Ignore and do not write the base-tree cache.
    #[arg(long)]
    pub no_cache: bool,

    /// List the cached base trees (key, size, age) and exit.
    #[arg(long, conflicts_with = "cache_prune")]
    pub cache_list: bool,

    /// Remove cached base trees not used for DAYS days (0: all), and package
    /// downloads with them when DAYS is 0; then exit.
    #[arg(long, value_name = "DAYS")]
    pub cache_prune: Option<u64>,

    /// The seed of the image's identities: filesystem, partition and disk UUIDs,
    /// the ESP's volume id, ext4's hash seed (DIB_IMAGE_SEED). Default: a hash of
    /// the build's inputs when SOURCE_DATE_EPOCH is set, else random. A manifest's
    /// "seed" rebuilds its image.
    #[arg(long, value_name = "SEED")]
    pub seed: Option<String>,

    /// A seccomp profile (OCI runtime-spec or Docker JSON) instead of kiln's default.
    #[arg(long, value_name = "FILE")]
    pub seccomp_profile: Option<PathBuf>,

    /// Print the names of the flavours found (ELEMENTS_PATH, KILN_FLAVOURS_PATH,
    /// built-in), one a line, and exit: what the shell completion offers.
    #[arg(long, hide = true)]
    pub list_flavours: bool,

    /// Flavours to build from (diskimage-builder elements work unchanged).
    #[arg(
        value_name = "FLAVOUR",
        required_unless_present_any = ["cache_list", "cache_prune", "list_flavours"]
    )]
    pub flavours: Vec<String>,
}

pub const ENV_HELP: &str = "\
Environment (flags win over environment, environment over ~/.config/kiln/defaults,
that over /etc/kiln/defaults):
  ELEMENTS_PATH, KILN_FLAVOURS_PATH  colon-separated flavour directories searched
                                     before the built-in ones
  DIB_RELEASE                        distribution release (default bookworm)
  DIB_DISTRIBUTION_MIRROR            mirror URL (default: from the host's apt sources)
  DIB_IMAGE_SIZE, DIB_IMAGE_CACHE, DIB_ROOT_LABEL, FS_TYPE, ARCH
  DIB_CHECKSUM                       1: md5 and sha256 files, md5 or sha256: that one
  DIB_QUIET                          1: only errors on the terminal (default with --logfile)
  DIB_NO_TIMESTAMP                   1: no elapsed-time stamps on the terminal
  DIB_IMAGE_EXTRA_SIZE               GiB added to the computed image size
  DIB_JOURNAL_SIZE                   ext3/ext4 journal MiB (mke2fs -J size=), added to the size
  DIB_ROOT_FSTYPE                    the root filesystem type, as FS_TYPE
  DIB_SHOW_IMAGE_USAGE               1: list the tree's files and directories of 10 MiB or more
  DIB_IMAGE_SEED                     as --seed
  SOURCE_DATE_EPOCH                  reproducible outputs: times clamped to it, ids from the inputs
  DIB_*                              passed to every hook
Rootless: kiln maps root onto your /etc/subuid and /etc/subgid range with
newuidmap/newgidmap (package uidmap); no sudo is ever asked for.";

impl DiskImageArgs {
    pub fn package_list(&self) -> Vec<String> {
        self.packages
            .iter()
            .flat_map(|p| p.split([',', ' ']))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Build a kernel + initramfs pair that boots bare metal into a maintenance job
/// (deployment, inventory, burn-in), as an ordinary user.
#[derive(Parser, Debug, Clone)]
#[command(name = "ramdisk-image-create", version, after_help = ENV_HELP)]
pub struct RamdiskArgs {
    #[command(flatten)]
    pub common: DiskImageArgs,

    /// The flavour that turns the tree into a ramdisk, added first.
    #[arg(long, value_name = "FLAVOUR", default_value = "ramdisk")]
    pub ramdisk_element: String,

    /// initramfs compression: zstd (default), gzip, xz or none.
    #[arg(long, value_name = "ALGO", default_value = "zstd")]
    pub compression: String,
}
