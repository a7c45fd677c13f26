//! `skiff-bench upstream`: the benchmark's upstream pool as a process of
//! its own, so a runner can pin it to a core.

use std::net::SocketAddr;

use anyhow::Context;

/// Serve fixed-size responses on several ports (HTTP/1.1 and h2c), for benchmarks.
#[derive(clap::Args)]
pub struct Args {
    /// Addresses to listen on, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    listen: Vec<SocketAddr>,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body_size: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(skiff_bench::upstream::serve(&args.listen, args.body_size))?;
    Ok(())
}
