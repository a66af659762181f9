//! The hooks' seccomp filter (docs/architecture.md §4).
//!
//! Profiles are OCI runtime-spec `linux.seccomp` objects, with Docker's
//! `includes`/`excludes` and `archMap` extensions, so users can bring container
//! profiles. They are compiled by libseccomp, as runc, crun and youki do; kiln
//! never writes BPF itself. The sandbox loads the filter last before each hook's
//! `exec`, after setting `PR_SET_NO_NEW_PRIVS` and cutting the bounding set.
//!
//! A profile goes through three steps: [`format`] is the file as serde reads it,
//! [`profile`] checks it into a [`Profile`] (every action, operator and
//! architecture known), [`compile`] turns that into libseccomp rules for the
//! capabilities a hook keeps, and [`filter`] loads the result into the kernel.

mod compile;
mod error;
mod filter;
mod format;
mod profile;

#[cfg(test)]
mod tests;

pub use error::SeccompError;
pub use filter::Filter;
pub use profile::Profile;

/// `seccomp/default.json`, built in: the filter always matches the binary that
/// was tested with it. `make install` puts the file in PREFIX/share/kiln/seccomp
/// as the starting point for `--seccomp-profile`; kiln never reads that copy.
const DEFAULT_PROFILE: &str = include_str!("../../../seccomp/default.json");
