//! `wasmwire fuzz`: drives a service's exports with generated step sequences through the host runtime.

use super::parse_duration;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Drive a service's exports with random well-formed sequences through the host
/// runtime; stop at the first trap, limit hit or broken rule, shrink it, write a replay.
#[derive(Debug, clap::Args)]
pub struct FuzzCommand {
    /// The component file.
    component: PathBuf,
    /// Options handed to `wakeup` (JSON).
    #[arg(long, default_value = "{}")]
    options: String,
    /// Seed (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many runs.
    #[arg(long, conflicts_with = "duration")]
    runs: Option<u64>,
    /// Stop after this long (default 30s when --runs is not given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Steps per run at most.
    #[arg(long, default_value_t = 128)]
    max_steps: usize,
    /// Worker threads (default: one per core). With 1, the seed alone fixes every run.
    #[arg(long)]
    jobs: Option<usize>,
    /// Re-run a replay file exactly instead of fuzzing.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Where to write the replay of a failure (default: fuzz-NAME-SEED.replay).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

impl FuzzCommand {
    /// Runs the command.
    pub async fn execute(self) -> Result<ExitCode> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        let settings = wasmwire::fuzz::Settings {
            options: self.options,
            seed,
            runs: self.runs,
            duration: if self.runs.is_none() {
                Some(self.duration.unwrap_or(Duration::from_secs(30)))
            } else {
                None
            },
            max_steps: self.max_steps,
            limits: Default::default(),
            jobs: self
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        };
        // Exit 1 when a problem was found (or reproduced), like a failing test.
        let found = fuzz(
            &self.component,
            settings,
            self.replay.as_deref(),
            self.out,
            self.json,
        )
        .await?;
        Ok(if found {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}

async fn fuzz(
    component: &Path,
    settings: wasmwire::fuzz::Settings,
    replay: Option<&Path>,
    out: Option<PathBuf>,
    json: bool,
) -> Result<bool> {
    use wasmwire::fuzz::{Replay, Target};
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&settings.options) {
        bail!("--options is not JSON: {e}");
    }
    let target = Target::load(component, &settings.limits).await?;
    if let Some(file) = replay {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let r = Replay::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let settings = wasmwire::fuzz::Settings {
            options: r.options.clone(),
            ..settings
        };
        let (finding, calls) = wasmwire::fuzz::replay(&target, &settings, &r.steps).await;
        match &finding {
            Some(f) => println!(
                "reproduced: {} in {} at step {} of {}: {}",
                f.kind.name(),
                f.export,
                f.step + 1,
                r.steps.len(),
                f.cause
            ),
            None => println!("no problem: {} steps, {calls} calls", r.steps.len()),
        }
        return Ok(finding.is_some());
    }
    // A live line on a terminal (indicatif hides itself when stderr is not one).
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let (bar, template) = match settings.runs {
            Some(runs) => (
                indicatif::ProgressBar::new(runs),
                "{bar:24} {pos}/{len} runs  {msg}",
            ),
            None => (
                indicatif::ProgressBar::new(settings.duration.map_or(0, |d| d.as_secs())),
                "{bar:24} {pos}/{len} s  {msg}",
            ),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    };
    let target_name = component.display().to_string();
    let report = tokio::task::block_in_place(|| {
        wasmwire::fuzz::fuzz(&target, &settings, |p| {
            bar.set_position(match settings.runs {
                Some(_) => p.runs,
                None => p.elapsed.as_secs(),
            });
            bar.set_message(format!(
                "{target_name}: {} runs, {:.0} calls/s, kinds {}/{} and events {}/{} reached",
                p.runs,
                p.calls as f64 / p.elapsed.as_secs_f64().max(1e-9),
                p.kinds.0,
                p.kinds.1,
                p.events.0,
                p.events.1,
            ));
        })
    });
    bar.finish_and_clear();
    let name = component
        .file_stem()
        .map_or("service".into(), |s| s.to_string_lossy().into_owned());
    let mut replay_path = None;
    if let Some(f) = &report.failure {
        let path =
            out.unwrap_or_else(|| PathBuf::from(format!("fuzz-{name}-{}.replay", report.seed)));
        let comment = vec![
            format!("wasmwire fuzz replay of {}", component.display()),
            format!(
                "{} in {}: {}",
                f.finding.kind.name(),
                f.finding.export,
                f.finding.cause
            ),
            format!(
                "seed {}, run seed {}; found after {} steps, shrunk to {}",
                report.seed,
                f.run_seed,
                f.found_steps,
                f.replay.steps.len()
            ),
            format!(
                "re-run: wasmwire fuzz {} --replay {}",
                component.display(),
                path.display()
            ),
        ];
        std::fs::write(&path, f.replay.to_text(&comment))
            .with_context(|| format!("writing {}", path.display()))?;
        replay_path = Some(path);
    }
    if json {
        let failure = report.failure.as_ref().map(|f| {
            serde_json::json!({
                "kind": f.finding.kind.name(),
                "export": f.finding.export,
                "cause": f.finding.cause,
                "run_seed": f.run_seed,
                "found_steps": f.found_steps,
                "steps": f.replay.steps.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "replay": replay_path.as_ref().map(|p| p.display().to_string()),
            })
        });
        let summary = serde_json::json!({
            "component": component.display().to_string(),
            "seed": report.seed,
            "runs": report.runs,
            "calls": report.calls,
            "seconds": report.elapsed.as_secs_f64(),
            "calls_per_second": report.calls_per_second(),
            "refused": report.refused,
            "messages": report.messages.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "events": report.events.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "failure": failure,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(report.failure.is_some());
    }
    let list = |v: &[(String, u64)]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!(
        "fuzzed {} for {:.1}s (seed {}): {} runs, {} calls, {:.0} calls/s",
        component.display(),
        report.elapsed.as_secs_f64(),
        report.seed,
        report.runs,
        report.calls,
        report.calls_per_second()
    );
    println!("messages: {}", list(&report.messages));
    println!("events:   {}", list(&report.events));
    println!(
        "refused by the host (undeclared or too large): {}",
        report.refused
    );
    match &report.failure {
        None => println!("no problem found"),
        Some(f) => {
            println!(
                "FOUND {} in {}: {}",
                f.finding.kind.name(),
                f.finding.export,
                f.finding.cause
            );
            println!(
                "after {} steps (run seed {}), shrunk to {}:",
                f.found_steps,
                f.run_seed,
                f.replay.steps.len()
            );
            for s in &f.replay.steps {
                println!("  {s}");
            }
            if let Some(p) = &replay_path {
                println!(
                    "replay: wasmwire fuzz {} --replay {}",
                    component.display(),
                    p.display()
                );
            }
        }
    }
    Ok(report.failure.is_some())
}
