//! disk-image-get-kernel's command line.

use clap::Parser;
use std::path::PathBuf;

/// Copy the kernel and initrd out of a raw or qcow2 disk image, without mounting it
/// and without root.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "disk-image-get-kernel",
    version,
    after_help = "\
The image may be raw or qcow2 (v2/v3, compressed or not), with a GPT, an MBR or no
partition table. The kernel is read from the ext2/3/4 filesystem holding /boot (the
root filesystem or a separate /boot): the newest /boot/vmlinuz-VERSION by Debian
version order, with its initrd (initrd.img-VERSION, initramfs-VERSION.img or
initrd-VERSION). Both land in DIR as PREFIX-vmlinuz and PREFIX-initrd, or neither does.

Environment:
  DIB_BAREMETAL_KERNEL_PATTERN  shell glob on the kernel's file name in /boot
                                (e.g. 'vmlinuz-6.1*'); the newest match wins
  DIB_BAREMETAL_INITRD_PATTERN  the same for the initrd"
)]
pub struct GetKernelArgs {
    /// The disk image to read (raw or qcow2).
    #[arg(short = 'i', value_name = "IMAGE")]
    pub image: PathBuf,
    /// Directory to write the kernel and initrd to.
    #[arg(short = 'd', value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Output file name prefix: PREFIX-vmlinuz and PREFIX-initrd.
    #[arg(short = 'o', value_name = "PREFIX", default_value = "baremetal")]
    pub prefix: String,
    /// Say what is looked at and how long it took (diskimage-builder's "trace").
    #[arg(short = 'x')]
    pub trace: bool,
}
