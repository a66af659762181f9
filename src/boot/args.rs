//! The command line of `disk-image-boot`.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM only when /dev/kvm opens and a probe boot under it works; TCG otherwise.
    Auto,
    /// KVM, no probe.
    Kvm,
    /// QEMU's emulator: slow, works everywhere.
    Tcg,
}

/// Boot a disk image (qcow2, raw, vhd, vmdk) or a kernel + initramfs pair under
/// QEMU, with the serial console on this terminal. The image is never written.
#[derive(Parser, Debug, Clone)]
#[command(name = "disk-image-boot", version, after_help = AFTER_HELP)]
pub struct BootArgs {
    /// The disk image to boot; its format is detected (qemu-img info).
    #[arg(value_name = "IMAGE", required_unless_present = "kernel")]
    pub image: Option<PathBuf>,

    /// The image's format as QEMU names it (qcow2, raw, vpc, vmdk), instead of detecting it.
    #[arg(long, value_name = "FMT", requires = "image")]
    pub format: Option<String>,

    /// Boot this kernel directly (e.g. ramdisk-image-create's NAME.kernel).
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    pub kernel: Option<PathBuf>,

    /// The initramfs for --kernel (e.g. NAME.initramfs).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,

    /// The kernel command line for --kernel.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "console=ttyS0",
        requires = "kernel"
    )]
    pub append: String,

    /// Boot with UEFI firmware (OVMF) instead of BIOS (SeaBIOS).
    #[arg(long, conflicts_with = "kernel")]
    pub uefi: bool,

    /// Accelerator: auto probes KVM with a short boot and falls back to TCG.
    #[arg(long, value_enum, env = "KILN_BOOT_ACCEL", default_value = "auto")]
    pub accel: Accel,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub memory: u32,

    /// Guest CPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,

    /// Exit 0 as soon as the console output matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub expect: Option<String>,

    /// Stop the guest after this many seconds (exit 124); default 300 with --expect, none without.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// Where the console output is kept. Default: NAME.console.log beside the
    /// image (NAME.qcow2 gives NAME.console.log), or in $TMPDIR when that
    /// directory is not writable.
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,

    /// Let the guest write to the image (no throw-away overlay).
    #[arg(long)]
    pub writable: bool,

    /// An extra argument for qemu-system-x86_64 (repeat for each), e.g. another -drive.
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
}

const AFTER_HELP: &str = "\
The guest's writes go to a throw-away qcow2 overlay unless --writable is given.
The overlay and UEFI's private copy of the OVMF variables live in a directory
$TMPDIR/disk-image-boot.XXXXXX, removed on every exit (also on SIGINT, SIGTERM
and SIGHUP).

Accelerator (--accel auto): TCG unless /dev/kvm can be opened for writing and a
probe passes: the guest's own kernel (from --kernel, or read out of a raw or qcow2
image as disk-image-get-kernel does) is booted under KVM with no root
filesystem and must reach its 'Kernel panic' line within 3 seconds. Where guests
hang under KVM the probe times out and the boot uses TCG; where KVM works it takes
well under a second.

Console: on a terminal without --expect, the terminal is the guest's serial
console (Ctrl-A X quits, Ctrl-A C is QEMU's monitor); otherwise standard input
and output are. Either way a copy goes to the console log.

Exit status: 0 when --expect matched (without --expect: QEMU exited cleanly,
e.g. the guest powered off); 3 when QEMU exited first or failed; 124 on
--timeout; 1 on bad input; 128+N when stopped by signal N. QEMU is stopped on
every exit path.

Environment:
  KILN_BOOT_ACCEL                 auto, kvm or tcg (as --accel)
  KILN_OVMF_CODE, KILN_OVMF_VARS  OVMF firmware and variables template
                                  (default: the Debian package ovmf's files)";
