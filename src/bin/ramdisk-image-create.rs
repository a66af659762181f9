//! ramdisk-image-create: parse, call, print.

use clap::Parser;

fn main() {
    let args = kiln::cli::RamdiskArgs::parse();
    match kiln::build::ramdisk_image_create(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ramdisk-image-create: error: {e:#}");
            std::process::exit(1);
        }
    }
}
