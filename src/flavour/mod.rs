//! Flavours (docs/architecture.md §3): finding them, expanding dependencies, and collecting
//! their hooks, environment and packages into a plan. Nothing here runs code.

pub mod environment;
pub mod error;
pub mod hooks;
pub mod packages;
pub mod phase;
pub mod resolve;
pub mod search;

pub use environment::{environment_files, EnvFile};
pub use error::FlavourError;
pub use hooks::{collect_hooks, hook_order, is_hook_name, DataFile, Hook, HookSet};
pub use packages::{collect_packages, PackageRequest, Target};
pub use phase::{Phase, Side};
pub use resolve::{resolve, resolve_with_defaults, Flavour, Resolved};
pub use search::{Found, SearchPath};
