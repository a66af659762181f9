//! The namespace sandbox of DESIGN §4. Only this module calls unshare, mount,
//! pivot_root, seccomp and capability APIs.

pub mod seccomp;
