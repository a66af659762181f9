//! The ramdisk half of `ramdisk-image-create` (docs/architecture.md §7).
//!
//! Division of work, as diskimage-builder's ramdisk element does it: the
//! `ramdisk` flavour's `post-install.d/99-kiln-ramdisk` hook runs *inside* the
//! image root (where the tree's busybox, ldd and depmod can run) and stages a
//! small root in `/var/lib/kiln/ramdisk/root` — busybox and its applet links,
//! every `binary-deps.d` binary with its libraries, storage/network/input
//! modules of one kernel, `/init` from every flavour's `init.d` fragments —
//! then runs every flavour's `ramdisk-install.d` hooks against it and writes
//! the kernel version to `/var/lib/kiln/ramdisk/kernel-version`.
//!
//! Interface for the pipeline (`src/build`), called after the hook phases, in
//! kiln's user namespace (so the tree's owners read as root):
//!
//! ```ignore
//! let a = kiln::ramdisk::assemble(&root, &tmp_kernel, &tmp_initramfs,
//!     &RamdiskOptions { compression: Compression::Zstd, source_date_epoch })?;
//! ```
//!
//! `hooks_dir` is not needed here: the staging hook reads the merged
//! `init.d/`, `binary-deps.d/`, `ramdisk-install.d/` from `/tmp/in_target.d`,
//! so the pipeline must stage those per-flavour directories there (all
//! flavours merged, like the phase directories). [`Compression::tool`] names
//! the host program to check for at plan time.

pub mod assemble;
pub mod compress;
pub mod cpio;

pub use assemble::{assemble, staged, Assembled, RamdiskOptions, STAGING};
pub use compress::Compression;

/// Per-flavour directories the ramdisk flavour reads from `/tmp/in_target.d`,
/// which the pipeline copies there merged across flavours (not phases: kiln
/// never runs them itself).
pub const STAGED_DIRS: [&str; 3] = ["init.d", "binary-deps.d", "ramdisk-install.d"];
