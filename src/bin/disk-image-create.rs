//! disk-image-create: parse, call, print.

use clap::Parser;

fn main() {
    let args = kiln::cli::DiskImageArgs::parse();
    match kiln::build::disk_image_create(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("disk-image-create: error: {e:#}");
            std::process::exit(1);
        }
    }
}
