//! ramdisk-image-create: arrives with its own issue; until then it says so plainly.

fn main() {
    eprintln!("ramdisk-image-create: not implemented yet in this version of kiln");
    std::process::exit(2);
}
