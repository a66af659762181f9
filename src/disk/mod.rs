//! Assembling disks without root (DESIGN §5).
