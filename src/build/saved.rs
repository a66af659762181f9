//! Files host-side hooks saved for beside the outputs (`IMAGE_NAME.d`), copied
//! into the outputs' private directory by kiln.
//!
//! A hook wrote them, so they are untrusted like the image: only directories
//! and regular files are copied, links are never followed (each file opened
//! `O_NOFOLLOW`), and the copies are kiln's own new files. The hooks have
//! ended by now (their PID namespaces are gone), so nothing swaps a path
//! between the check and the open.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Copies `from` to the new directory `to`; anything but directories and
/// regular files is left out with a warning naming it.
pub fn copy_plain_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    let mut entries: Vec<_> = fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let t = e.file_type()?;
        if t.is_dir() {
            copy_plain_tree(&src, &dst)?;
        } else if t.is_file() {
            copy_file(&src, &dst)?;
        } else {
            eprintln!(
                "kiln: warning: {} is neither a file nor a directory: not copied beside the outputs",
                src.display()
            );
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    let mut input = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(src)
        .with_context(|| format!("opening {}", src.display()))?;
    if !input.metadata()?.is_file() {
        bail!("{} changed into something other than a file", src.display());
    }
    let mut output = File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dst)
        .with_context(|| format!("creating {}", dst.display()))?;
    std::io::copy(&mut input, &mut output).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_and_dirs_and_never_follows_a_link() {
        let t = tempfile::TempDir::new().unwrap();
        let from = t.path().join("from");
        fs::create_dir_all(from.join("dib-manifests")).unwrap();
        fs::write(from.join("dib-manifests/dib_arguments"), "-o x").unwrap();
        fs::write(t.path().join("secret"), "host file").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), from.join("dib-manifests/link"))
            .unwrap();
        let to = t.path().join("to");
        copy_plain_tree(&from, &to).unwrap();
        assert_eq!(
            fs::read_to_string(to.join("dib-manifests/dib_arguments")).unwrap(),
            "-o x"
        );
        assert!(fs::symlink_metadata(to.join("dib-manifests/link")).is_err());
    }
}
