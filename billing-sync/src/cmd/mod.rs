//! The subcommands, one file each.

pub mod check_config;
pub mod migrate;
pub mod serve;
pub mod stripe_sync;
