//! `slipway hook pre-receive|post-receive`: run by git inside a push, configured only through
//! the SLIPWAY_* environment the git server sets.
//!
//! Building on push is the next step of the project; until then the hooks accept every push and
//! report what they received, so the environment contract is exercised end to end.

use std::io::BufRead;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use slipway_api::env;

/// Which hook git is running.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    /// Before refs move: decides whether the push is accepted.
    PreReceive,
    /// After refs moved.
    PostReceive,
}

#[derive(Debug, Args)]
pub struct HookArgs {
    /// The hook to run.
    which: Which,
    /// Webspace pushed to.
    #[arg(long, env = env::WEBSPACE)]
    webspace: String,
    /// Customer that pushed.
    #[arg(long, env = env::CUSTOMER)]
    customer: String,
    /// Fingerprint of the key that pushed.
    #[arg(long, env = env::PUSHER)]
    pusher: String,
}

/// Reads git's `old new ref` lines from stdin and reports them.
pub fn run(args: HookArgs) -> ExitCode {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else {
            eprintln!("error: cannot read the pushed refs");
            return ExitCode::FAILURE;
        };
        let mut fields = line.split(' ');
        let (Some(_old), Some(new), Some(reference)) =
            (fields.next(), fields.next(), fields.next())
        else {
            eprintln!("error: malformed ref update from git");
            return ExitCode::FAILURE;
        };
        let short = new.get(..7).unwrap_or(new);
        match args.which {
            Which::PreReceive => eprintln!(
                "slipway: `{}` received {} for `{}` from `{}` (key {}); building on push is not enabled yet",
                reference.escape_debug(),
                short,
                args.webspace,
                args.customer,
                args.pusher
            ),
            Which::PostReceive => eprintln!(
                "slipway: `{}` of `{}` is now at {}",
                reference.escape_debug(),
                args.webspace,
                short
            ),
        }
    }
    ExitCode::SUCCESS
}
