//! disk-image-get-kernel: arrives with its own issue; until then it says so plainly.

fn main() {
    eprintln!("disk-image-get-kernel: not implemented yet in this version of kiln");
    std::process::exit(2);
}
