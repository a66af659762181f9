//! disk-image-get-kernel: parse, call, print.

use clap::Parser;
use kiln::kernel::{get_kernel, Options, Patterns};
use std::path::PathBuf;

/// Copy the kernel and initrd out of a raw or qcow2 disk image, without mounting it
/// and without root.
#[derive(Parser)]
#[command(
    name = "disk-image-get-kernel",
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
struct Args {
    /// The disk image to read (raw or qcow2).
    #[arg(short = 'i', value_name = "IMAGE")]
    image: PathBuf,
    /// Directory to write the kernel and initrd to.
    #[arg(short = 'd', value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Output file name prefix: PREFIX-vmlinuz and PREFIX-initrd.
    #[arg(short = 'o', value_name = "PREFIX", default_value = "baremetal")]
    prefix: String,
    /// Say what is looked at and how long it took (diskimage-builder's "trace").
    #[arg(short = 'x')]
    trace: bool,
}

fn main() {
    let args = Args::parse();
    kiln::sandbox::signals::install();
    let started = std::time::Instant::now();
    let opts = Options { image: args.image, dir: args.dir, prefix: args.prefix, patterns: Patterns::from_env(), verbose: args.trace };
    match get_kernel(&opts) {
        Ok(done) => {
            println!("wrote {} ({})", done.kernel.display(), done.kernel_source);
            println!("wrote {} ({})", done.initrd.display(), done.initrd_source);
            if args.trace {
                eprintln!("took {:.3} s", started.elapsed().as_secs_f64());
            }
        }
        Err(e) if e.is::<kiln::sandbox::Interrupted>() => {
            eprintln!("disk-image-get-kernel: interrupted");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("disk-image-get-kernel: error: {e:#}");
            std::process::exit(1);
        }
    }
}
