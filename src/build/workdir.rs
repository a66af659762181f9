//! The build directory and the outputs' private directory, and making sure
//! neither outlives the build. Files in the tree belong to subordinate ids, so
//! the host side can only remove them from inside a namespace: `Drop` does that.

use super::staging::Staging;
use crate::sandbox::{namespace, IdMaps};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Owners recorded without subordinate ids live in `user.` attributes
/// (tree::owners): the scratch filesystem must take them.
fn can_record_owners(dir: &Path, base: &Path) -> Result<()> {
    crate::tree::owners::can_record_in(dir).map_err(|e| {
        anyhow::anyhow!(
            "{} cannot hold extended attributes ({e}), which kiln needs to record owners \
             without a subordinate id range (tmpfs takes them only from Linux 6.6).\n  fix: \
             TMPDIR=/var/tmp (or another directory on ext4, xfs or btrfs), or add a subordinate \
             range (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER)",
            base.display()
        )
    })
}

/// The directory inside the build directory that holds everything (see `open_inside`).
const INNER: &str = "w";

pub struct WorkDir {
    pub path: PathBuf,
    maps: IdMaps,
    /// Where outputs are written until all are complete; removes itself.
    pub outputs: Staging,
}

impl WorkDir {
    pub fn create(maps: &IdMaps, outputs: Staging) -> Result<WorkDir> {
        let base = std::env::var_os("TMPDIR")
            .filter(|t| !t.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/tmp".into());
        let template = base.join("kiln.XXXXXX");
        // 0700: the tree may hold setuid files a hook made; no other user may reach them.
        let path = nix::unistd::mkdtemp(&template)
            .with_context(|| format!("creating a build directory in {}", base.display()))?;
        let work = WorkDir {
            path,
            maps: maps.clone(),
            outputs,
        };
        let inner = work.path.join(INNER);
        std::fs::create_dir(&inner).with_context(|| format!("creating {}", inner.display()))?;
        std::fs::set_permissions(&inner, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        if !maps.has_range() {
            can_record_owners(&inner, &base)?;
        }
        Ok(work)
    }

    /// Inside kiln's namespace: apt drops to `_apt` (a subordinate id), which must
    /// traverse the build directory to reach its download directory in the tree.
    /// The 0711 inner directory is bound over the 0700 outer one, in kiln's mount
    /// namespace only, so `_apt` passes and no other host user ever can.
    pub fn open_inside(&self) -> Result<()> {
        crate::sandbox::mounts::bind_over(&self.path.join(INNER), &self.path)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Inside kiln's namespace, at the end: everything the build made, then the bind.
    pub fn empty_inside(&self) {
        crate::sandbox::mounts::release(&self.root());
        if let Ok(rd) = std::fs::read_dir(&self.path) {
            for e in rd.flatten() {
                let p = e.path();
                let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(e) = removed {
                    eprintln!("kiln: removing {}: {e}", p.display());
                }
            }
        }
        crate::sandbox::mounts::release(&self.path);
    }

    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }
    pub fn hooks(&self) -> PathBuf {
        self.path.join("hooks")
    }
    pub fn image(&self) -> PathBuf {
        self.path.join("image")
    }
    pub fn home(&self) -> PathBuf {
        self.path.join("home")
    }
    /// Where host-side hooks save files meant to sit beside the outputs
    /// (diskimage-builder's `DIB_MANIFEST_SAVE_DIR`, `IMAGE_NAME.d`).
    pub fn saved(&self) -> PathBuf {
        self.path.join("saved")
    }
}

/// Deletes a tree owned by subordinate ids: from inside the namespace, where
/// those ids are ours.
pub fn remove_tree(maps: &IdMaps, path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let p = path.to_path_buf();
    let code = namespace::enter(maps, move || match std::fs::remove_dir_all(&p) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln: removing {}: {e}", p.display());
            1
        }
    })?;
    if code != 0 {
        anyhow::bail!("could not remove the build directory {}", path.display());
    }
    Ok(())
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Fast path first: everything may be ours if the build never got far.
        if std::fs::remove_dir_all(&self.path).is_err() {
            if let Err(e) = remove_tree(&self.maps, &self.path) {
                eprintln!("kiln: {e:#}");
            }
        }
    }
}
