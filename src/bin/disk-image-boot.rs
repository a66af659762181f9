//! disk-image-boot: parse, call, exit with its status.

use clap::Parser;

fn main() {
    let args = kiln::boot::BootArgs::parse();
    match kiln::boot::run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("disk-image-boot: error: {e:#}");
            std::process::exit(kiln::boot::exit::ERROR);
        }
    }
}
