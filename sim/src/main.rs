//! `rehydrate-sim`: see `rehydrate_sim::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Panics inside a run are caught and reported as that run's failure; keep the
    // default hook from printing a backtrace banner for each. `println!` panics when
    // stdout is a closed pipe (`rehydrate-sim sweep ... | head -1`): the reader has what
    // it wanted, so that one ends the program normally.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
    }));
    // Logs go to stderr, warnings and errors unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = rehydrate_sim::cli::Cli::parse();
    match rehydrate_sim::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rehydrate-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
