//! `billing-sync migrate`.

use std::path::Path;
use std::process::ExitCode;

/// Not implemented yet.
pub fn run(_path: &Path) -> ExitCode {
    eprintln!("migrate: not implemented yet");
    ExitCode::FAILURE
}
