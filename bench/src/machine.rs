//! The machine and the versions a run used, printed and recorded with every run.

use std::path::Path;
use std::process::Command;

/// `(name, value)` pairs: cores, memory, CPU, kernel and tool versions.
pub fn describe(trellis: &Path, wasmtime: Option<&Path>) -> Vec<(String, String)> {
    let mut facts = Vec::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "unknown".into());
    facts.push(("cores".into(), cores));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    facts.push(("memory".into(), mem));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
    {
        facts.push(("cpu".into(), model.1.trim().to_string()));
    }
    facts.push(("kernel".into(), first_line("uname", &["-sr"])));
    facts.push((
        "trellis".into(),
        format!(
            "{} (git {})",
            first_line(&trellis.display().to_string(), &["--version"]),
            first_line("git", &["rev-parse", "--short", "HEAD"])
        ),
    ));
    facts.push((
        "anchor".into(),
        match wasmtime {
            Some(w) => first_line(&w.display().to_string(), &["--version"]),
            None => "skipped (--skip-anchor): no ratios in this run".into(),
        },
    ));
    facts.push((
        "nats-server".into(),
        first_line("nats-server", &["--version"]),
    ));
    facts.push(("wrk".into(), first_line("wrk", &["-v"])));
    facts.push(("rustc".into(), first_line("rustc", &["--version"])));
    facts
}

/// The first non-empty output line of a command (stdout, else stderr), or why there is none.
pub fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("(no output)")
                .to_string()
        }
        Err(e) => format!("unavailable ({e})"),
    }
}
