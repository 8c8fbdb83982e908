//! `billing-sync serve`.

use std::path::Path;
use std::process::ExitCode;

/// Not implemented yet.
pub fn run(_path: &Path) -> ExitCode {
    eprintln!("serve: not implemented yet");
    ExitCode::FAILURE
}
