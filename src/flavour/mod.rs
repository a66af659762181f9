pub mod phase;
pub use phase::{Phase, Side};
