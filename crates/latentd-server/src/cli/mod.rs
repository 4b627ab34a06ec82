//! Command-line interface of the `latentd` binary.

mod bench;
mod generate;
pub mod serve;
mod train;

use clap::{Parser, Subcommand};

pub use bench::BenchArgs;
pub use generate::GenerateArgs;
pub use serve::ServeArgs;
pub use train::TrainDemoArgs;

/// latentd: an HTTP inference server for latent diffusion models (Stable Diffusion 1.x/2.x
/// and the CompVis LDMs) with step-level batching; it also generates images from the
/// command line and trains its small built-in model.
#[derive(Debug, Parser)]
#[command(name = "latentd", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Generate images from a prompt and write them as PNG files.
    Generate(GenerateArgs),
    /// Time a Stable Diffusion model's text encoder, guided UNet step, VAE decode and
    /// whole generation on one device (what bench/sd15-compare.sh compares with diffusers).
    Bench(BenchArgs),
    /// Print the OpenAPI document (the committed openapi/openapi.json).
    Openapi,
    /// Train the built-in demo model (synthetic data, both LDM stages) into a folder.
    TrainDemo(TrainDemoArgs),
}

/// Exit code for invalid arguments (the same as clap's usage errors).
pub const EXIT_USAGE: i32 = 2;

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::TrainDemo(args) => train::run(args),
        Command::Openapi => {
            print!("{}", crate::http::openapi::json());
            0
        }
        Command::Serve(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return 1;
                }
            };
            match runtime.block_on(serve::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
    }
}

/// Parses a size in pixels: a positive multiple of 8.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let v: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if v == 0 || !v.is_multiple_of(8) {
        return Err(format!("{v} is not a positive multiple of 8"));
    }
    Ok(v)
}
