//! Whether this kernel lets the caller create a user namespace, asked before
//! the build starts, so the one setting that blocks it is named with its fix
//! instead of a failed clone an hour in. Each knob is read where it exists.

use std::path::Path;

/// The settings that forbid unprivileged user namespaces, each with its fix.
pub fn blocker() -> Option<String> {
    blocker_in(Path::new("/proc/sys"), nix::unistd::getuid().is_root())
}

fn read(root: &Path, rel: &str) -> Option<i64> {
    std::fs::read_to_string(root.join(rel))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn blocker_in(sys: &Path, root: bool) -> Option<String> {
    // Per user namespace, so a container may have its own (lower) limit.
    if read(sys, "user/max_user_namespaces") == Some(0) {
        return Some(
            "user namespaces are switched off here: user.max_user_namespaces is 0. \
             Fix (as root): sysctl -w user.max_user_namespaces=15000 \
             (and in /etc/sysctl.d/ to keep it; in a container, the runtime sets it)"
                .into(),
        );
    }
    if root {
        return None;
    }
    // Debian's and older Ubuntu kernels' switch for unprivileged callers.
    if read(sys, "kernel/unprivileged_userns_clone") == Some(0) {
        return Some(
            "unprivileged user namespaces are switched off: kernel.unprivileged_userns_clone is 0. \
             Fix (as root): sysctl -w kernel.unprivileged_userns_clone=1"
                .into(),
        );
    }
    // Ubuntu 23.10 and later: only programs an AppArmor profile allows.
    if read(sys, "kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        return Some(
            "AppArmor restricts unprivileged user namespaces \
             (kernel.apparmor_restrict_unprivileged_userns=1). Fix (as root): install kiln's \
             profile, contrib/apparmor.d/kiln (edit its paths if kiln is not in /usr/bin or \
             /usr/local/bin): install -m 0644 contrib/apparmor.d/kiln /etc/apparmor.d/kiln && \
             apparmor_parser -r /etc/apparmor.d/kiln"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::TempDir::new().unwrap();
        for (rel, v) in files {
            let p = t.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        t
    }

    #[test]
    fn each_blocker_names_its_setting_and_fix() {
        let t = sys(&[("user/max_user_namespaces", "0\n")]);
        let m = blocker_in(t.path(), true).unwrap();
        assert!(m.contains("sysctl -w user.max_user_namespaces="), "{m}");
        let t = sys(&[
            ("user/max_user_namespaces", "1000\n"),
            ("kernel/unprivileged_userns_clone", "0\n"),
        ]);
        assert!(blocker_in(t.path(), false)
            .unwrap()
            .contains("sysctl -w kernel.unprivileged_userns_clone=1"));
        // Root is not bound by the unprivileged switches.
        assert_eq!(blocker_in(t.path(), true), None);
        let t = sys(&[("kernel/apparmor_restrict_unprivileged_userns", "1\n")]);
        assert!(blocker_in(t.path(), false)
            .unwrap()
            .contains("contrib/apparmor.d/kiln"));
        let t = sys(&[
            ("user/max_user_namespaces", "1000\n"),
            ("kernel/apparmor_restrict_unprivileged_userns", "0\n"),
        ]);
        assert_eq!(blocker_in(t.path(), false), None);
    }
}
