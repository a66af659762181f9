//! kiln: OS images from composable flavours, built by an ordinary user.
//! docs/architecture.md is the contract; the module layout follows its §9.

pub mod boot;
pub mod build;
pub mod cli;
pub mod disk;
pub mod flavour;
pub mod helper;
pub mod kernel;
pub mod partition;
pub mod ramdisk;
pub mod sandbox;
pub mod tree;
pub mod yaml;

#[cfg(test)]
mod test_tools;
