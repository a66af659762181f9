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

/// No handler: Ctrl-C and SIGTERM take their default action and stop it at
/// once, wherever it is (a handled signal does not end a read the kernel is
/// waiting on, and a retried open() never ends at all). Whatever ignored or
/// blocked them before exec is undone too. Unfinished output files have no
/// name yet, so nothing is left behind (src/kernel/output.rs).
fn default_interrupts() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: restoring the default action.
        let _ = unsafe { sigaction(sig, &dfl) };
        set.add(sig);
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
}

fn main() {
    let args = Args::parse();
    default_interrupts();
    let started = std::time::Instant::now();
    let opts = Options {
        image: args.image,
        dir: args.dir,
        prefix: args.prefix,
        patterns: Patterns::from_env(),
        verbose: args.trace,
    };
    match get_kernel(&opts) {
        Ok(done) => {
            println!("wrote {} ({})", done.kernel.display(), done.kernel_source);
            println!("wrote {} ({})", done.initrd.display(), done.initrd_source);
            if args.trace {
                eprintln!("took {:.3} s", started.elapsed().as_secs_f64());
            }
        }
        Err(e) => {
            eprintln!("disk-image-get-kernel: error: {e:#}");
            std::process::exit(1);
        }
    }
}
