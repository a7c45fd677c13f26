//! `skiff-bench`: skiff's measurement tools on the command line.
//!
//! Thin by design: parse, hand the subcommand's arguments to its module
//! under `cli/`, print the error if there is one. A new subcommand is a
//! variant of [`Command`] plus a module with its `Args` and `run`.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// skiff's benchmark tools: a load generator, and runners built on it.
#[derive(Parser)]
#[command(name = "skiff-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Load(cli::load::Args),
    Compare(cli::compare::Args),
    Upstream(cli::upstream::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Load(args) => cli::load::run(args),
        Command::Compare(args) => cli::compare::run(args),
        Command::Upstream(args) => cli::upstream::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("skiff-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
