//! What the build puts into the image root for the install phases, and takes
//! out again before the image is assembled. Every path goes through
//! [`ImageTree`]: by now hooks and packages have written the tree.

use crate::tree::{ImageTree, Kind};
use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Services must not start inside the build (invoke-rc.d honours this).
const POLICY_RC_D: &str =
    "#!/bin/sh\n# written by kiln for the build; removed before assembly\nexit 101\n";
const POLICY: &str = "usr/sbin/policy-rc.d";
const RESOLV: &str = "etc/resolv.conf";
const RESOLV_ASIDE: &str = "etc/resolv.conf.kiln-orig";

pub fn prepare(tree: &ImageTree) -> Result<()> {
    if tree.kind(Path::new(POLICY)).is_none() {
        tree.replace(Path::new(POLICY), POLICY_RC_D.as_bytes(), 0o755)?;
    }
    // The host's resolv.conf is bound over this path during install phases; a
    // symlink there (systemd-resolved) would send the bind elsewhere.
    if tree.kind(Path::new(RESOLV)) == Some(Kind::Symlink) {
        tree.rename(Path::new(RESOLV), Path::new(RESOLV_ASIDE))?;
    }
    if tree.kind(Path::new(RESOLV)).is_none() {
        tree.replace(Path::new(RESOLV), b"", 0o644)?;
    }
    Ok(())
}

/// Device nodes dib-lib's `mknod` stood in for: empty files that held a bind of
/// the host's node while root.d ran. A real node is never an empty regular file.
pub fn drop_dev_placeholders(tree: &ImageTree) -> Result<()> {
    for name in [
        "null", "zero", "full", "random", "urandom", "tty", "console",
    ] {
        let rel = Path::new("dev").join(name);
        if tree.kind(&rel) == Some(Kind::File)
            && tree.read_at_most(&rel, 0).is_ok_and(|b| b.is_empty())
        {
            tree.remove_file(&rel)?;
        }
    }
    Ok(())
}

pub fn tidy(tree: &ImageTree) -> Result<()> {
    if tree.kind(Path::new(POLICY)) == Some(Kind::File)
        && tree
            .read(Path::new(POLICY))
            .is_ok_and(|s| s == POLICY_RC_D.as_bytes())
    {
        tree.remove_file(Path::new(POLICY))?;
    }
    if tree.kind(Path::new(RESOLV_ASIDE)).is_some() {
        tree.rename(Path::new(RESOLV_ASIDE), Path::new(RESOLV))?;
    }
    // The mount point kiln created for its bind, if nothing was left in it.
    tree.remove_empty_dir(Path::new("tmp/in_target.d"));
    // Each instance must get its own machine id at first boot: an empty file (not a
    // link, whatever a hook left there) tells systemd so.
    // "uninitialized" (diskimage-builder's sysprep writes it) means the same to
    // systemd and also runs the first-boot units; it is kept.
    let id = Path::new("etc/machine-id");
    if tree.kind(id).is_some() {
        let keep = tree.kind(id) == Some(Kind::File)
            && tree
                .read_at_most(id, 64)
                .is_ok_and(|b| b == b"uninitialized\n");
        let content: &[u8] = if keep { b"uninitialized\n" } else { b"" };
        tree.replace(id, content, 0o444)?;
    }
    tree.remove_file(Path::new("var/lib/dbus/machine-id"))?;
    forget_build_host_name(tree)
}

/// mmdebstrap and debootstrap copy the build host's /etc/hostname into the
/// tree: the image would carry the builder's name (and differ between
/// builders). It gets `localhost`, as Debian's cloud images have, until
/// cloud-init or the operator names it. A name a hook chose is kept.
fn forget_build_host_name(tree: &ImageTree) -> Result<()> {
    let rel = Path::new("etc/hostname");
    let Ok(host) = std::fs::read_to_string("/etc/hostname") else {
        return Ok(());
    };
    let host = host.trim();
    if host.is_empty() || host == "localhost" || tree.kind(rel) != Some(Kind::File) {
        return Ok(());
    }
    if tree
        .read_at_most(rel, 256)
        .is_ok_and(|b| String::from_utf8_lossy(&b).trim() == host)
    {
        tree.replace(rel, b"localhost\n", 0o644)?;
    }
    Ok(())
}

/// first-boot.d hooks go into the image; the `base` flavour's unit runs them once.
/// `hooks_dir` is kiln's staging of the flavours' hooks; the destination is the
/// image's, so a hook's planted link there is replaced, not followed.
pub fn install_first_boot(hooks_dir: &Path, tree: &ImageTree) -> Result<()> {
    let src = hooks_dir.join("first-boot.d");
    let mut entries: Vec<_> = match std::fs::read_dir(&src) {
        Ok(rd) => rd.flatten().collect(),
        Err(_) => return Ok(()),
    };
    entries.retain(|e| e.file_type().is_ok_and(|t| t.is_file()));
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort_by_key(|e| e.file_name());
    let dst = Path::new("usr/lib/kiln/first-boot.d");
    tree.create_dir_all(dst, 0o755)?;
    for e in entries {
        let content = std::fs::read(e.path())
            .with_context(|| format!("reading first-boot hook {}", e.path().display()))?;
        let mode = e
            .metadata()
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o755);
        tree.replace(&dst.join(e.file_name()), &content, mode)
            .with_context(|| format!("installing first-boot hook {}", e.path().display()))?;
    }
    Ok(())
}
