//! The capability sets a sandboxed process keeps. Capabilities here are powers
//! over kiln's own user namespace only; cutting them limits what a hook can do
//! even to the image's build environment.

pub use caps::errors::CapsError;
pub use caps::{CapSet, Capability, CapsHashSet};

/// Docker's default set: what package managers and maintainer scripts need.
pub const PACKAGE_MANAGER: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The set for a process: host-side phases that bootstrap or assemble must mount
/// (mmdebstrap binds /proc into its chroot), so they also keep CAP_SYS_ADMIN.
pub fn kept(sys_admin: bool) -> CapsHashSet {
    let mut set: CapsHashSet = PACKAGE_MANAGER.into_iter().collect();
    if sys_admin {
        set.insert(Capability::CAP_SYS_ADMIN);
    }
    set
}

pub fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

/// Cut the bounding set first (needs CAP_SETPCAP, which we still hold), then the
/// other sets. As uid 0, execve gives the new program exactly the bounding set.
pub fn restrict(keep: &CapsHashSet) -> Result<(), CapsError> {
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    let current = caps::read(None, CapSet::Permitted)?;
    let keep_now: CapsHashSet = current.intersection(keep).copied().collect();
    caps::set(None, CapSet::Effective, &keep_now)?;
    caps::set(None, CapSet::Permitted, &keep_now)?;
    Ok(())
}
