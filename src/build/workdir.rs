//! The build directory and the outputs' private directory, and making sure
//! neither outlives the build. Files in the tree belong to subordinate ids, so
//! the host side can only remove them from inside a namespace: `Drop` does that.

use super::staging::Staging;
use crate::sandbox::{namespace, IdMaps};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub struct WorkDir {
    pub path: PathBuf,
    maps: IdMaps,
    /// Where outputs are written until all are complete; removes itself.
    pub outputs: Staging,
}

impl WorkDir {
    pub fn create(maps: &IdMaps, outputs: Staging) -> Result<WorkDir> {
        let base = std::env::var_os("TMPDIR").filter(|t| !t.is_empty()).map(PathBuf::from).unwrap_or_else(|| "/var/tmp".into());
        let template = base.join("kiln.XXXXXX");
        let path = nix::unistd::mkdtemp(&template).with_context(|| format!("creating a build directory in {}", base.display()))?;
        // Traversable but not listable: apt drops to `_apt` (a subordinate id) and
        // must reach its download directory inside the tree.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        Ok(WorkDir { path, maps: maps.clone(), outputs })
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
