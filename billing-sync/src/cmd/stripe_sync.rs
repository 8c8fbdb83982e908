//! `billing-sync stripe-sync`.

use std::path::Path;
use std::process::ExitCode;

/// Not implemented yet.
pub fn run(_path: &Path) -> ExitCode {
    eprintln!("stripe-sync: not implemented yet");
    ExitCode::FAILURE
}
