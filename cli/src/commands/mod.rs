//! One module per subcommand of `compattn` (named after it; each `run` is the subcommand).

pub mod bench;
pub mod demo;
pub mod forward;
pub mod info;
pub mod plot;
pub mod shaders;
pub mod soak;
pub mod train;
pub mod verify;
