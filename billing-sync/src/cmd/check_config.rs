//! `billing-sync check-config`: validate a policy file and print every problem.

use std::path::Path;
use std::process::ExitCode;

use shared::Policy;

/// Exits 0 printing `ok: <path>` on a valid file, else 1 with one
/// `file:line:column: message` line per problem on stderr.
pub fn run(path: &Path) -> ExitCode {
    match Policy::load(path) {
        Ok(_) => {
            println!("ok: {}", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}
