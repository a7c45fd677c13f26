//! Every fuzz target in `fuzz/`, built with libFuzzer's instrumentation on
//! the stable toolchain (`fuzz/build.sh`), run over its committed seed
//! corpus and then fuzzed for a short time. It catches a target that no
//! longer builds, a seed that crashes, and the easy crashes a fresh
//! change brings; the long runs are for people (see `fuzz/README.md`).
//!
//! `SKIFF_FUZZ_SECONDS` sets each target's fuzzing time (default 20). The
//! random seed is fixed; long runs with fresh seeds are for people.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fuzzing time per target unless `SKIFF_FUZZ_SECONDS` says otherwise:
/// twelve targets stay within five minutes, the build aside.
const DEFAULT_SECONDS: u64 = 20;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The workspace's target directory (this test runs from `<it>/debug/deps`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.ancestors()
        .nth(3)
        .expect("the target directory")
        .to_path_buf()
}

/// The fuzz targets: one file each in `fuzz/fuzz_targets`.
fn targets(fuzz: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fuzz.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    names
}

fn tail(text: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a target said when it failed: the panic with the line after it
/// (its message), and libFuzzer's summary; the backtrace is left out.
fn why(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            out.extend(lines[i..lines.len().min(i + 3)].iter().copied());
        } else if line.starts_with("SUMMARY:") || line.contains("ERROR: libFuzzer") {
            out.push(line);
        }
    }
    if out.is_empty() {
        tail(stderr, 40)
    } else {
        out.join("\n")
    }
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_a_short_run() {
    let fuzz = workspace().join("fuzz");
    let out = target_dir().join("fuzz");
    let seconds: u64 = std::env::var("SKIFF_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);

    let build = Command::new("bash")
        .arg(fuzz.join("build.sh"))
        .env("FUZZ_TARGET_DIR", &out)
        .output()
        .expect("run fuzz/build.sh");
    assert!(
        build.status.success(),
        "the fuzz targets do not build:\n{}",
        tail(&build.stderr, 60)
    );
    let bin_dir = PathBuf::from(
        String::from_utf8_lossy(&build.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    );

    let targets = targets(&fuzz);
    assert!(targets.len() >= 7, "fuzz targets found: {targets:?}");
    let mut failures = Vec::new();
    for target in &targets {
        let seeds = fuzz.join("corpus").join(target);
        let seed_count = std::fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
        assert!(
            seed_count > 0,
            "{target} has no seeds in {}",
            seeds.display()
        );
        // New inputs and crash files go here, never into the committed corpus.
        let scratch = out.join("runs").join(target);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(scratch.join("corpus")).expect("scratch corpus");
        let run = Command::new(bin_dir.join(target))
            // Where a harness saves an input it blames late, too.
            .current_dir(&scratch)
            .arg(scratch.join("corpus"))
            .arg(&seeds)
            .arg(format!("-max_total_time={seconds}"))
            // A fixed seed: the same change fuzzes the same way on every
            // run, so CI does not pass and fail by chance.
            .arg("-seed=1")
            .arg("-timeout=30")
            .arg("-rss_limit_mb=4096")
            .arg(format!("-artifact_prefix={}/", scratch.display()))
            .arg("-print_final_stats=1")
            .output()
            .unwrap_or_else(|e| panic!("run fuzz target {target}: {e}"));
        let stderr = String::from_utf8_lossy(&run.stderr);
        let execs = stderr
            .lines()
            .find(|l| l.starts_with("stat::number_of_executed_units"))
            .unwrap_or("")
            .to_string();
        eprintln!("fuzz target {target}: {seed_count} seeds, {seconds} s, {execs}");
        if !run.status.success() {
            let artifacts: Vec<String> = std::fs::read_dir(&scratch)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| p.is_file())
                        .map(|p| p.display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            failures.push(format!(
                "fuzz target `{target}` failed; reproducer: {artifacts:?}\n\
                 (re-run: {} <reproducer>)\n{}",
                bin_dir.join(target).display(),
                why(&run.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
