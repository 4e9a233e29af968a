//! Where every benchmark writes its figures: `bench-<name>.json` in `$CLOUDFLOW_BENCH_OUT`
//! (set by `benches/run`), else in the target directory. `benches/report.py` gathers them
//! into one table and one JSON document.

use std::path::PathBuf;

pub fn write(name: &str, value: &serde_json::Value) {
    let dir = std::env::var_os("CLOUDFLOW_BENCH_OUT")
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = dir.join(format!("bench-{name}.json"));
    let _ = std::fs::create_dir_all(&dir);
    match std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()) {
        Ok(()) => eprintln!("bench: figures written to {}", path.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", path.display()),
    }
}

/// Peak resident memory of this process, in MB (Linux: VmHWM).
#[allow(dead_code)] // not every benchmark measures memory
pub fn peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The fleet sizes to measure: `CLOUDFLOW_BENCH_SIZES` (comma-separated), else `default`.
#[allow(dead_code)] // not every benchmark has sizes
pub fn sizes(default: &str) -> Vec<usize> {
    std::env::var("CLOUDFLOW_BENCH_SIZES")
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}
