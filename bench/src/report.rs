//! The results: figures grouped by section, written as JSON and as the `BENCHMARKS.md` table.
//!
//! A run of some sections (`--only`) keeps the figures of the other sections from the previous
//! results ([`Report::keep_unmeasured`]), and the report says which sections were measured when.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One measured figure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Figure {
    /// Section heading, e.g. `HTTP hello`.
    pub section: String,
    /// What was measured, e.g. `Trellis in-process http-server`.
    pub scenario: String,
    /// The load, e.g. `1 conn`, `16 in flight`.
    pub load: String,
    /// Throughput (requests/s, calls/s, ops/s).
    pub rate: Option<f64>,
    /// Median latency in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: Option<f64>,
    /// A single value (time, memory, size) with its unit.
    pub value: Option<f64>,
    /// Unit of `value`.
    pub unit: String,
    /// Throughput relative to the anchor measured in the same run.
    pub ratio: Option<f64>,
    /// The budget this figure is held to, in words.
    pub budget: Option<String>,
    /// Whether the budget is met.
    pub met: Option<bool>,
    /// Anything a reader must know (errors, approximations, what is missing).
    pub note: String,
    /// The harness section that measured it (its `--only` name, e.g. `http`). Empty in results
    /// written before this was recorded: see [`Figure::origin`].
    pub origin: String,
}

impl Figure {
    /// The harness section that measured this figure: recorded, or for older results inferred
    /// from the heading's number (the HTTP section also records memory under load in 5).
    pub fn origin(&self) -> String {
        if !self.origin.is_empty() {
            return self.origin.clone();
        }
        let number = self.section.split('.').next().unwrap_or("");
        match number {
            "1" => "http",
            "2" => "calls",
            "3" => "kv",
            "4" => "cold",
            "5" if self.scenario.starts_with("host RSS under load") => "http",
            "5" => "footprint",
            "6" => "heal",
            "7" => "distribution",
            "8" => "fleet",
            _ => "",
        }
        .to_string()
    }
}

/// Something that could not be measured, and in which section (empty: the whole run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "ProblemRepr")]
pub struct Problem {
    /// The harness section (`--only` name), or empty for the whole run.
    pub section: String,
    /// When the run that found it started (RFC 3339).
    pub at: String,
    /// What happened.
    pub text: String,
}

/// Results written before problems had a section were plain strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum ProblemRepr {
    Text(String),
    Full {
        #[serde(default)]
        section: String,
        #[serde(default)]
        at: String,
        text: String,
    },
}

impl From<ProblemRepr> for Problem {
    fn from(repr: ProblemRepr) -> Self {
        match repr {
            ProblemRepr::Text(text) => Problem {
                text,
                ..Problem::default()
            },
            ProblemRepr::Full { section, at, text } => Problem { section, at, text },
        }
    }
}

/// When a section shown in the report was measured, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SectionRun {
    /// The harness section (`--only` name).
    pub section: String,
    /// When its run started (UTC, RFC 3339).
    pub started_at: String,
    /// `quick` or `full`.
    pub mode: String,
    /// The command of that run.
    pub command: String,
    /// `trellis --version` and git revision of that run.
    pub trellis: String,
    /// Cores, CPU and kernel of the machine of that run.
    pub machine: String,
}

/// Cores, CPU and kernel in a few words, from [`crate::machine::describe`]'s facts.
pub fn machine_summary(facts: &[(String, String)]) -> String {
    let fact = |key: &str| {
        facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("?")
    };
    format!(
        "{} cores, {}, {}",
        fact("cores"),
        fact("cpu"),
        fact("kernel")
    )
}

/// Everything one run produced.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// `quick` or `full`.
    pub mode: String,
    /// When it ran (UTC, RFC 3339).
    pub started_at: String,
    /// How long the run took, seconds.
    pub duration_s: f64,
    /// Machine and versions.
    pub machine: Vec<(String, String)>,
    /// The figures in the order they were measured.
    pub figures: Vec<Figure>,
    /// Sections that could not be measured, with the reason.
    pub problems: Vec<Problem>,
    /// The sections shown and when each was measured (this run's, and earlier runs' kept by
    /// [`Report::keep_unmeasured`]).
    pub sections: Vec<SectionRun>,
}

impl Report {
    /// Reads results written by an earlier run.
    pub fn read_json(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a report", path.display()))
    }

    /// The `trellis` line of the machine facts.
    fn trellis(&self) -> String {
        self.machine
            .iter()
            .find(|(k, _)| k == "trellis")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// When each section of this report was measured; results written before that was
    /// recorded were one run, described by the report's own start, mode and version.
    fn section_runs(&self) -> Vec<SectionRun> {
        if !self.sections.is_empty() {
            return self.sections.clone();
        }
        let origins: BTreeSet<String> = self.figures.iter().map(Figure::origin).collect();
        origins
            .into_iter()
            .map(|section| SectionRun {
                section,
                started_at: self.started_at.clone(),
                mode: self.mode.clone(),
                command: if self.mode == "quick" {
                    "bench/run.sh --quick".into()
                } else {
                    "bench/run.sh".into()
                },
                trellis: self.trellis(),
                machine: machine_summary(&self.machine),
            })
            .collect()
    }

    /// Keeps what `previous` showed for the sections this run has no figures of (not selected
    /// with `--only`, or failed): their figures, when they were measured, and their problems.
    /// A section this run measured replaces the previous figures of that section entirely.
    pub fn keep_unmeasured(&mut self, previous: Report) {
        let measured: BTreeSet<String> = self.figures.iter().map(Figure::origin).collect();
        let previous_runs = previous.section_runs();
        let kept: Vec<Figure> = previous
            .figures
            .iter()
            .filter(|f| !measured.contains(&f.origin()))
            .cloned()
            .map(|mut f| {
                f.origin = f.origin();
                f
            })
            .collect();
        let kept_sections: BTreeSet<String> = kept.iter().map(|f| f.origin.clone()).collect();
        let kept_runs: Vec<SectionRun> = previous_runs
            .into_iter()
            .filter(|r| kept_sections.contains(&r.section))
            .collect();
        let kept_starts: BTreeSet<&str> = kept_runs.iter().map(|r| r.started_at.as_str()).collect();
        for mut problem in previous.problems {
            if problem.at.is_empty() {
                problem.at = previous.started_at.clone();
            }
            let keep = if problem.section.is_empty() {
                kept_starts.contains(problem.at.as_str())
            } else {
                kept_sections.contains(&problem.section)
            };
            let known = self.problems.iter().any(|p| p.text == problem.text);
            if keep && !known {
                self.problems.push(problem);
            }
        }
        self.figures.extend(kept);
        self.sections.extend(kept_runs);
        self.sections
            .sort_by(|a, b| (&a.started_at, &a.section).cmp(&(&b.started_at, &b.section)));
    }

    /// Writes `path` as pretty JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The Markdown tables (one per section) plus machine, budgets verdicts and problems.
    pub fn markdown(&self, command: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Trellis benchmarks\n");
        let _ = writeln!(
            out,
            "Generated by `{command}` ({} mode) on {}, in {:.0} s. Every ratio compares with the \
             anchor (`wasmtime serve`, same wasmtime version, same `http_hello.wasm`) measured in \
             the same run. Regenerate with `bench/run.sh` (`--quick` for a short run); see \
             [docs/benchmarks.md](docs/benchmarks.md) for what each figure means.\n",
            self.mode, self.started_at, self.duration_s
        );
        let earlier = self
            .sections
            .iter()
            .any(|r| r.started_at != self.started_at);
        if earlier {
            let _ = writeln!(
                out,
                "This run measured only some sections; the others keep the figures of the run \
                 that measured them:\n"
            );
        }
        let mut runs: Vec<(&SectionRun, Vec<&str>)> = Vec::new();
        for run in &self.sections {
            match runs.iter_mut().find(|(r, _)| {
                r.started_at == run.started_at && r.command == run.command && r.mode == run.mode
            }) {
                Some((_, names)) => names.push(&run.section),
                None => runs.push((run, vec![&run.section])),
            }
        }
        if !runs.is_empty() {
            let _ = writeln!(
                out,
                "| Sections | Measured | Command | Mode | Trellis | Machine |"
            );
            let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
            for (run, names) in &runs {
                let _ = writeln!(
                    out,
                    "| {} | {} | `{}` | {} | {} | {} |",
                    names.join(", "),
                    run.started_at,
                    run.command,
                    run.mode,
                    run.trellis,
                    run.machine
                );
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "## Machine\n");
        if earlier {
            let _ = writeln!(
                out,
                "(of this run; the machine and Trellis version of each earlier run are in the \
                 table above: figures measured on different machines do not compare)\n"
            );
        }
        for (k, v) in &self.machine {
            let _ = writeln!(out, "- {k}: {v}");
        }
        let _ = writeln!(out);

        let missed: Vec<&Figure> = self
            .figures
            .iter()
            .filter(|f| f.met == Some(false))
            .collect();
        let _ = writeln!(out, "## Budgets\n");
        let checked = self.figures.iter().filter(|f| f.met.is_some()).count();
        if missed.is_empty() {
            let _ = writeln!(out, "All {checked} budgeted figures are within budget.\n");
        } else {
            let _ = writeln!(
                out,
                "**{} of {checked} budgeted figures miss their budget:**\n",
                missed.len()
            );
            for f in &missed {
                let _ = writeln!(
                    out,
                    "- {} / {} ({}): {} — budget {}",
                    f.section,
                    f.scenario,
                    f.load,
                    headline(f),
                    f.budget.as_deref().unwrap_or("")
                );
            }
            if let Some(floor) = self
                .figures
                .iter()
                .find(|f| f.scenario.starts_with("NATS request/reply") && f.load.starts_with("1 "))
            {
                let _ = writeln!(
                    out,
                    "\nFor scale: on this machine one bare NATS request/reply of the call's size \
                     (section 2, 1 in flight) has a p50 of {}. Every path that crosses NATS pays \
                     at least that once per request or call, on the same cores as the load \
                     generator.",
                    floor.p50_ms.map(latency).unwrap_or_default()
                );
            }
            let _ = writeln!(out);
        }
        if !self.problems.is_empty() {
            let _ = writeln!(out, "## Not measured / incomplete\n");
            for p in &self.problems {
                if p.at.is_empty() || p.at == self.started_at {
                    let _ = writeln!(out, "- {}", p.text);
                } else {
                    let _ = writeln!(out, "- (run of {}) {}", p.at, p.text);
                }
            }
            let _ = writeln!(out);
        }

        let mut sections: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !sections.contains(&f.section.as_str()) {
                sections.push(&f.section);
            }
        }
        // Headings are numbered: figures recorded out of order still print in order.
        sections.sort_unstable();
        for section in sections {
            let _ = writeln!(out, "## {section}\n");
            let _ = writeln!(
                out,
                "| Scenario | Load | Throughput | p50 | p99 | Value | vs anchor | Budget | Note |"
            );
            let _ = writeln!(
                out,
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
            );
            for f in self.figures.iter().filter(|f| f.section == section) {
                let budget = match (&f.budget, f.met) {
                    (Some(b), Some(true)) => format!("{b} ✅"),
                    (Some(b), Some(false)) => format!("{b} ❌ **missed**"),
                    (Some(b), None) => b.clone(),
                    (None, _) => String::new(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    f.scenario,
                    f.load,
                    f.rate.map(|r| format!("{r:.0}/s")).unwrap_or_default(),
                    f.p50_ms.map(latency).unwrap_or_default(),
                    f.p99_ms.map(latency).unwrap_or_default(),
                    f.value
                        .map(|v| format!("{v:.1} {}", f.unit))
                        .unwrap_or_default(),
                    f.ratio.map(|r| format!("{r:.2}x")).unwrap_or_default(),
                    budget,
                    f.note.replace('|', "/").replace('\n', " ")
                );
            }
            let _ = writeln!(out);
        }
        out
    }
}

/// A latency in the unit that reads best.
pub fn latency(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// The figure's main number in words.
pub fn headline(f: &Figure) -> String {
    let mut parts = Vec::new();
    if let Some(r) = f.rate {
        parts.push(format!("{r:.0}/s"));
    }
    if let Some(p) = f.p50_ms {
        parts.push(format!("p50 {}", latency(p)));
    }
    if let Some(p) = f.p99_ms {
        parts.push(format!("p99 {}", latency(p)));
    }
    if let Some(v) = f.value {
        parts.push(format!("{v:.1} {}", f.unit));
    }
    if let Some(r) = f.ratio {
        parts.push(format!("{r:.2}x anchor"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_budgets_are_listed_plainly() {
        let report = Report {
            mode: "quick".into(),
            figures: vec![Figure {
                section: "Cold start".into(),
                scenario: "scale to first response".into(),
                value: Some(80.0),
                unit: "ms".into(),
                budget: Some("< 50 ms".into()),
                met: Some(false),
                ..Figure::default()
            }],
            ..Report::default()
        };
        let md = report.markdown("bench/run.sh");
        assert!(md.contains("1 of 1 budgeted figures miss"), "{md}");
        assert!(md.contains("❌ **missed**"), "{md}");
        assert_eq!(latency(0.25), "250 µs");
        assert_eq!(latency(12.5), "12.50 ms");
    }

    /// Results as written before figures and problems recorded their section.
    const OLD_RESULTS: &str = r#"{
      "mode": "full",
      "started_at": "2026-12-01T00:00:00Z",
      "duration_s": 180.0,
      "machine": [["cores", "2"], ["trellis", "trellis 0.1.0 (git aaaaaaa)"]],
      "figures": [
        {"section": "1. HTTP hello", "scenario": "in-process", "load": "1 conn",
         "rate": 6800.0, "p50_ms": 0.15, "p99_ms": 0.4, "value": null, "unit": "",
         "ratio": null, "budget": null, "met": null, "note": ""},
        {"section": "5. Footprint", "scenario": "host RSS under load (in-process HTTP)",
         "load": "peak", "rate": null, "p50_ms": null, "p99_ms": null, "value": 40.0,
         "unit": "MiB", "ratio": null, "budget": null, "met": null, "note": ""},
        {"section": "5. Footprint", "scenario": "host RSS idle", "load": "fresh host",
         "rate": null, "p50_ms": null, "p99_ms": null, "value": 21.0, "unit": "MiB",
         "ratio": null, "budget": "< 30 MiB", "met": true, "note": ""}
      ],
      "problems": ["Run with --skip-anchor: no ratios."]
    }"#;

    #[test]
    fn a_partial_run_keeps_the_other_sections() {
        let previous: Report = serde_json::from_str(OLD_RESULTS).expect("old results parse");
        assert_eq!(
            previous.problems[0].text,
            "Run with --skip-anchor: no ratios."
        );
        let mut report = Report {
            mode: "full".into(),
            started_at: "2026-12-02T12:00:00Z".into(),
            figures: vec![Figure {
                section: "8. Fleet".into(),
                scenario: "nats-server CPU, idle".into(),
                value: Some(1.0),
                unit: "% of a core".into(),
                budget: Some("< 3% of a core".into()),
                met: Some(true),
                origin: "fleet".into(),
                ..Figure::default()
            }],
            sections: vec![SectionRun {
                section: "fleet".into(),
                started_at: "2026-12-02T12:00:00Z".into(),
                mode: "full".into(),
                command: "bench/run.sh --only fleet".into(),
                trellis: "trellis 0.1.0 (git bbbbbbb)".into(),
                machine: "2 cores, ?, ?".into(),
            }],
            ..Report::default()
        };
        report.keep_unmeasured(previous);
        assert_eq!(report.figures.len(), 4);
        let sections: Vec<&str> = report.sections.iter().map(|r| r.section.as_str()).collect();
        assert_eq!(sections, ["footprint", "http", "fleet"]);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let md = report.markdown("bench/run.sh --only fleet");
        assert!(
            md.contains("| footprint, http | 2026-12-01T00:00:00Z | `bench/run.sh` |"),
            "{md}"
        );
        assert!(md.contains("| fleet | 2026-12-02T12:00:00Z |"), "{md}");
        assert!(
            md.contains("(run of 2026-12-01T00:00:00Z) Run with --skip-anchor"),
            "{md}"
        );
        assert!(
            md.contains("All 2 budgeted figures are within budget."),
            "{md}"
        );

        // The kept figures now say where they came from; a later run of `http` replaces both
        // of its figures (in sections 1 and 5) and keeps the idle RSS of `footprint`.
        let json = serde_json::to_string(&report).expect("serialize");
        let previous: Report = serde_json::from_str(&json).expect("round trip");
        let mut next = Report {
            started_at: "2026-12-03T00:00:00Z".into(),
            figures: vec![Figure {
                section: "1. HTTP hello".into(),
                scenario: "in-process".into(),
                rate: Some(7000.0),
                origin: "http".into(),
                ..Figure::default()
            }],
            ..Report::default()
        };
        next.keep_unmeasured(previous);
        let scenarios: Vec<&str> = next.figures.iter().map(|f| f.scenario.as_str()).collect();
        assert_eq!(
            scenarios,
            ["in-process", "nats-server CPU, idle", "host RSS idle"],
            "{:?}",
            next.figures
        );
        // The anchor problem belonged to the run whose `http` figures are gone, but its
        // `footprint` figure stays, so the problem stays too.
        assert_eq!(next.problems.len(), 1);
    }
}
