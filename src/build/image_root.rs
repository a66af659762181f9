//! What the build puts into the image root for the install phases, and takes
//! out again before the image is assembled.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Services must not start inside the build (invoke-rc.d honours this).
const POLICY_RC_D: &str = "#!/bin/sh\n# written by kiln for the build; removed before assembly\nexit 101\n";
const RESOLV_ASIDE: &str = "etc/resolv.conf.kiln-orig";

pub fn prepare(root: &Path) -> Result<()> {
    let policy = root.join("usr/sbin/policy-rc.d");
    if !policy.exists() {
        std::fs::write(&policy, POLICY_RC_D).with_context(|| format!("writing {}", policy.display()))?;
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))?;
    }
    // The host's resolv.conf is bound over this path during install phases; a
    // symlink there (systemd-resolved) would send the bind outside the image.
    let resolv = root.join("etc/resolv.conf");
    if std::fs::symlink_metadata(&resolv).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::rename(&resolv, root.join(RESOLV_ASIDE))?;
    }
    if !resolv.exists() {
        std::fs::write(&resolv, "")?;
    }
    Ok(())
}

pub fn tidy(root: &Path) -> Result<()> {
    let policy = root.join("usr/sbin/policy-rc.d");
    if std::fs::read_to_string(&policy).is_ok_and(|s| s == POLICY_RC_D) {
        std::fs::remove_file(&policy)?;
    }
    let aside = root.join(RESOLV_ASIDE);
    if std::fs::symlink_metadata(&aside).is_ok() {
        std::fs::rename(&aside, root.join("etc/resolv.conf"))?;
    }
    // Mount points kiln created for its binds.
    let _ = std::fs::remove_dir(root.join("tmp/in_target.d"));
    // Each instance must get its own machine id at first boot.
    let mid = root.join("etc/machine-id");
    if mid.exists() {
        std::fs::write(&mid, "")?;
    }
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    Ok(())
}

/// first-boot.d hooks go into the image; the `base` flavour's unit runs them once.
pub fn install_first_boot(hooks_dir: &Path, root: &Path) -> Result<()> {
    let src = hooks_dir.join("first-boot.d");
    let names: Vec<_> = match std::fs::read_dir(&src) {
        Ok(rd) => rd.flatten().collect(),
        Err(_) => return Ok(()),
    };
    if names.is_empty() {
        return Ok(());
    }
    let dst = root.join("usr/lib/kiln/first-boot.d");
    std::fs::create_dir_all(&dst)?;
    for e in names {
        std::fs::copy(e.path(), dst.join(e.file_name())).with_context(|| format!("installing first-boot hook {}", e.path().display()))?;
    }
    Ok(())
}
