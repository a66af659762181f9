//! kiln-helper (docs/architecture.md §6): the one privileged program, for the builds that
//! need a real block device. `protocol` is what both sides share, `client` is
//! what kiln (unprivileged) calls, `privileged` is the helper itself.

pub mod client;
pub mod privileged;
pub mod protocol;
