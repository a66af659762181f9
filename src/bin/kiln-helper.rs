//! kiln-helper: attach, rescan or detach a loop device for an unprivileged
//! caller (docs/architecture.md §6). Its own C entry point, so that nothing runs before the
//! checks: Rust's runtime would reopen closed standard descriptors on /dev/null
//! before main, hiding what the caller did.

#![no_main]

#[no_mangle]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // SAFETY: the C runtime passes argc and argv as exec gave them.
    unsafe { kiln::helper::privileged::main(argc, argv) }
}
