//! `trellis-bench`: measures Trellis on a real lattice (nats-server, `trellis host`
//! processes, `trellis wadm`, real `.wasm`, real sockets, load from `wrk`) side by side with
//! the anchor, `wasmtime serve` of the same wasmtime version serving the same component, and
//! writes `BENCHMARKS.md` and `bench/results/latest.json`.
//!
//! Run it with `bench/run.sh [--quick] [--skip-anchor]`.

mod anchor;
mod calls;
mod distribution;
mod drive;
mod fleet;
mod footprint;
mod http;
mod kv;
mod lattice;
mod lifecycle;
mod machine;
mod report;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use report::{Figure, Problem, Report, SectionRun};

/// Hosts in the fleet section unless `--fleet-hosts` says otherwise (the budget is for
/// 100 hosts on one machine).
const FLEET_HOSTS: usize = 100;

/// Measure Trellis against `wasmtime serve` on a real local lattice.
#[derive(Debug, Parser)]
#[command(name = "trellis-bench")]
struct Args {
    /// Short runs (2 s per load point, fewer samples): under two minutes.
    #[arg(long)]
    quick: bool,
    /// Run without the anchor (no `wasmtime serve`, no ratios); the report says so.
    #[arg(long)]
    skip_anchor: bool,
    /// The anchor binary (must be wasmtime 48.0.8); else the cache, `PATH`, or an install.
    #[arg(long, env = "TRELLIS_BENCH_WASMTIME")]
    wasmtime: Option<PathBuf>,
    /// Where the anchor is installed when missing.
    #[arg(long, env = "TRELLIS_BENCH_CACHE")]
    cache_dir: Option<PathBuf>,
    /// Use the binaries and components already built instead of building them first.
    #[arg(long)]
    no_build: bool,
    /// Only these sections (http, calls, kv, cold, footprint, heal, distribution, fleet); all
    /// when absent. The other sections keep their figures from the previous results.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Hosts in the fleet section (one `trellis host` process each).
    #[arg(long, default_value_t = FLEET_HOSTS)]
    fleet_hosts: usize,
    /// Write only this run's figures, dropping the previous results of sections not measured.
    #[arg(long)]
    fresh: bool,
    /// Where the Markdown report goes (default: BENCHMARKS.md in the repository).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Where the JSON results go (default: bench/results/latest.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// State shared by the sections of one run.
pub struct Bench {
    /// The anchor binary, unless skipped.
    pub anchor_bin: Option<PathBuf>,
    /// The `trellis` binary under test.
    pub trellis_bin: PathBuf,
    /// `wrk` duration per load point.
    pub wrk_duration: Duration,
    /// Closed-loop duration per load point.
    pub call_duration: Duration,
    /// Components scaled for the footprint.
    pub components: usize,
    /// At most this long for scaling the footprint's components.
    pub footprint_time_box: Duration,
    /// Cold starts with cached code to take the median of.
    pub cold_repeats: usize,
    /// Hosts in the fleet section.
    pub fleet_hosts: usize,
    /// How long the fleet is watched while idle.
    pub fleet_window: Duration,
    /// The section running now (its `--only` name); figures and problems are filed under it.
    pub current: String,
    /// What was measured so far.
    pub report: Report,
}

impl Bench {
    /// Records a figure and prints it.
    pub fn push(&mut self, mut figure: Figure) {
        if figure.origin.is_empty() {
            figure.origin = self.current.clone();
        }
        println!(
            "  {} | {} | {}: {}{}",
            figure.section,
            figure.scenario,
            figure.load,
            report::headline(&figure),
            match figure.met {
                Some(true) => "  [within budget]".to_string(),
                Some(false) => format!(
                    "  [MISSES budget {}]",
                    figure.budget.as_deref().unwrap_or("")
                ),
                None => String::new(),
            }
        );
        self.report.figures.push(figure);
    }

    /// Records something that could not be measured.
    pub fn problem(&mut self, text: String) {
        eprintln!("  problem: {text}");
        self.report.problems.push(Problem {
            section: self.current.clone(),
            at: self.report.started_at.clone(),
            text,
        });
    }
}

/// `file://` reference of a local `.wasm`.
pub fn file_ref(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn repo_root() -> PathBuf {
    trellis_integration::repo_root()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn build() -> anyhow::Result<()> {
    eprintln!("trellis-bench: building `trellis` (release) and the guest components");
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "trellis-cli"])
        .current_dir(repo_root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build --release -p trellis-cli failed");
    }
    let status = Command::new("bash")
        .arg(repo_root().join("components/build.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run components/build.sh")?;
    if !status.success() {
        bail!("components/build.sh failed");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `bench/run.sh` command line that reproduces this run's selection.
fn command_line(args: &Args) -> String {
    let mut command = String::from("bench/run.sh");
    if args.quick {
        command.push_str(" --quick");
    }
    if args.skip_anchor {
        command.push_str(" --skip-anchor");
    }
    if !args.only.is_empty() {
        command.push_str(&format!(" --only {}", args.only.join(",")));
    }
    if args.fleet_hosts != FLEET_HOSTS
        && (args.only.is_empty() || args.only.iter().any(|s| s == "fleet"))
    {
        command.push_str(&format!(" --fleet-hosts {}", args.fleet_hosts));
    }
    command
}

fn run(args: Args) -> anyhow::Result<()> {
    let wall = Instant::now();
    if !args.no_build {
        build()?;
    }
    let trellis_bin = target_dir().join("release/trellis");
    if !trellis_bin.is_file() {
        bail!(
            "{} is missing: run without --no-build",
            trellis_bin.display()
        );
    }
    // The integration library starts hosts from this binary. Set before any thread exists.
    std::env::set_var("TRELLIS_BIN", &trellis_bin);
    let anchor_bin = if args.skip_anchor {
        eprintln!("trellis-bench: --skip-anchor: measuring without wasmtime serve, no ratios");
        None
    } else {
        let cache = args
            .cache_dir
            .clone()
            .unwrap_or_else(anchor::default_cache_dir);
        Some(anchor::locate_or_install(args.wasmtime.as_deref(), &cache)?)
    };

    let mode = if args.quick { "quick" } else { "full" };
    let machine = machine::describe(&trellis_bin, anchor_bin.as_deref());
    println!("trellis-bench ({mode})");
    for (k, v) in &machine {
        println!("  {k}: {v}");
    }
    let mut bench = Bench {
        anchor_bin,
        trellis_bin,
        wrk_duration: Duration::from_secs(if args.quick { 2 } else { 8 }),
        call_duration: Duration::from_secs(if args.quick { 2 } else { 5 }),
        components: 1000,
        footprint_time_box: Duration::from_secs(if args.quick { 30 } else { 120 }),
        cold_repeats: if args.quick { 5 } else { 15 },
        fleet_hosts: args.fleet_hosts,
        fleet_window: Duration::from_secs(if args.quick { 10 } else { 20 }),
        current: String::new(),
        report: Report {
            mode: mode.into(),
            started_at: machine::first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            machine,
            ..Report::default()
        },
    };
    if bench.anchor_bin.is_none() {
        bench.problem(
            "Run with --skip-anchor: the anchor (wasmtime serve) was not measured, so there \
             are no ratios and the ratio budgets are not checked."
                .into(),
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let wanted = |section: &str| args.only.is_empty() || args.only.iter().any(|s| s == section);
    runtime.block_on(async {
        for name in [
            "http",
            "calls",
            "kv",
            "cold",
            "footprint",
            "heal",
            "distribution",
            "fleet",
        ] {
            if !wanted(name) {
                continue;
            }
            println!("== {name}");
            bench.current = name.to_string();
            let started = Instant::now();
            let result = match name {
                "http" => http::run(&mut bench).await,
                "calls" => calls::run(&mut bench).await,
                "kv" => kv::run(&mut bench).await,
                "cold" => lifecycle::cold_start(&mut bench).await,
                "footprint" => footprint::run(&mut bench).await,
                "heal" => lifecycle::healing(&mut bench).await,
                "distribution" => distribution::run(&mut bench).await,
                _ => fleet::run(&mut bench).await,
            };
            if let Err(e) = result {
                bench.problem(format!("section `{name}` failed: {e:#}"));
            }
            bench.current.clear();
            println!("   ({name}: {:.1} s)", started.elapsed().as_secs_f64());
        }
    });
    drop(runtime);

    bench.report.duration_s = wall.elapsed().as_secs_f64();
    let command = command_line(&args);
    let mut measured: Vec<String> = Vec::new();
    for figure in &bench.report.figures {
        if !measured.contains(&figure.origin) {
            measured.push(figure.origin.clone());
        }
    }
    let trellis = bench
        .report
        .machine
        .iter()
        .find(|(k, _)| k == "trellis")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    for section in measured {
        bench.report.sections.push(SectionRun {
            section,
            started_at: bench.report.started_at.clone(),
            mode: bench.report.mode.clone(),
            command: command.clone(),
            trellis: trellis.clone(),
            machine: report::machine_summary(&bench.report.machine),
        });
    }
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| repo_root().join("bench/results/latest.json"));
    if !args.fresh && json.is_file() {
        match Report::read_json(&json) {
            Ok(previous) => bench.report.keep_unmeasured(previous),
            Err(e) => eprintln!(
                "trellis-bench: not keeping earlier figures ({e:#}); writing this run's only"
            ),
        }
    }
    bench.report.write_json(&json)?;
    let markdown = args
        .markdown
        .clone()
        .unwrap_or_else(|| repo_root().join("BENCHMARKS.md"));
    std::fs::write(&markdown, bench.report.markdown(&command))
        .with_context(|| format!("cannot write {}", markdown.display()))?;
    println!(
        "trellis-bench: wrote {} and {} in {:.0} s",
        markdown.display(),
        json.display(),
        bench.report.duration_s
    );
    Ok(())
}
