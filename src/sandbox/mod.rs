//! The namespace sandbox of docs/architecture.md §4. Only this module calls unshare, mount,
//! pivot_root, seccomp and capability APIs.

pub mod caps;
pub mod container_check;
pub mod idmap;
pub mod lend;
pub mod mounts;
pub mod namespace;
pub mod notify;
pub mod owners;
pub mod run;
pub mod seccomp;
pub mod signals;
pub mod syscall;
pub mod userns_check;
mod wait;

pub use idmap::IdMaps;
pub use mounts::{Bind, View};
pub use run::{run, Job, Outcome};

/// The build was stopped by SIGINT/SIGTERM; callers unwind and clean up.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}
