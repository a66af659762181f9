//! The hook phases of docs/architecture.md §2/§3, in run order.

use std::fmt;

/// Where a phase's hooks run: on the host side of the sandbox (the host's
/// filesystem seen from kiln's user namespace) or inside the image root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Host,
    Inside,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Root,
    ExtraData,
    PreInstall,
    Install,
    PostInstall,
    PostRoot,
    BlockDevice,
    PreFinalise,
    Finalise,
    Cleanup,
    /// Not run at build time: installed into the image and run once at first boot.
    FirstBoot,
}

impl Phase {
    /// Build-time phases in run order (first-boot.d is installed, not run).
    pub const BUILD: [Phase; 10] = [
        Phase::Root,
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::PostRoot,
        Phase::BlockDevice,
        Phase::PreFinalise,
        Phase::Finalise,
        Phase::Cleanup,
    ];

    pub const ALL: [Phase; 11] = [
        Phase::Root,
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::PostRoot,
        Phase::BlockDevice,
        Phase::PreFinalise,
        Phase::Finalise,
        Phase::Cleanup,
        Phase::FirstBoot,
    ];

    /// The hook directory's name inside a flavour.
    pub fn dir_name(self) -> &'static str {
        match self {
            Phase::Root => "root.d",
            Phase::ExtraData => "extra-data.d",
            Phase::PreInstall => "pre-install.d",
            Phase::Install => "install.d",
            Phase::PostInstall => "post-install.d",
            Phase::PostRoot => "post-root.d",
            Phase::BlockDevice => "block-device.d",
            Phase::PreFinalise => "pre-finalise.d",
            Phase::Finalise => "finalise.d",
            Phase::Cleanup => "cleanup.d",
            Phase::FirstBoot => "first-boot.d",
        }
    }

    pub fn from_dir_name(name: &str) -> Option<Phase> {
        // diskimage-builder spells some phases the American way in places.
        let name = match name {
            "pre-finalize.d" => "pre-finalise.d",
            "finalize.d" => "finalise.d",
            other => other,
        };
        Phase::ALL.into_iter().find(|p| p.dir_name() == name)
    }

    pub fn side(self) -> Side {
        match self {
            Phase::PreInstall | Phase::Install | Phase::PostInstall | Phase::Finalise => {
                Side::Inside
            }
            Phase::FirstBoot => Side::Inside,
            _ => Side::Host,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}
