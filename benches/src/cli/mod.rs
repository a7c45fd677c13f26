//! The subcommands of the `skiff-bench` binary, one module each, and the
//! argument parsers they share.

pub mod compare;
pub mod load;
pub mod upstream;

use std::time::Duration;

use anyhow::Context;

/// Parses a duration written as a number and a unit: `500ms`, `10s`, `1.5m`,
/// `250us`, as skiff's config does. A bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    skiff_config::units::parse_duration(text)
}

/// The async runtime a subcommand runs on: `threads` workers, or one per
/// core.
pub fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .context("start the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_without_a_known_unit_are_refused_with_the_fix() {
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("10d")
            .unwrap_err()
            .contains("unknown unit `d`"));
        assert!(parse_duration("s")
            .unwrap_err()
            .contains("is not a duration"));
    }
}
