use std::io::IsTerminal;

use clap::Parser;
use latentd_server::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() {
    // Before any other thread starts (see its doc).
    let arenas = latentd_engine::memory::cap_heap_arenas();
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_env("LATENTD_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: not in files, pipes or log collectors.
        .with_ansi(std::io::stderr().is_terminal());
    // LATENTD_LOG_FORMAT=json: one JSON object per line, for log pipelines.
    if std::env::var("LATENTD_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        logs.init();
    }
    if let Some(arenas) = arenas {
        tracing::debug!(arenas, "heap arenas capped (MALLOC_ARENA_MAX overrides)");
    }
    std::process::exit(latentd_server::cli::run(cli));
}
