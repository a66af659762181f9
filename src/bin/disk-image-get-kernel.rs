//! disk-image-get-kernel: parse, call, print.

use clap::Parser;
use kiln::cli::GetKernelArgs;
use kiln::kernel::{get_kernel, Options, Patterns};

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
    let args = GetKernelArgs::parse();
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
