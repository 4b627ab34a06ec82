//! Progress reporting (terminal progress bars) and the `train.log` loss log.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::io;
use crate::Result;

/// Receives training progress; implementations must not fail training.
pub trait Progress: Sync {
    /// A stage of `total` steps begins.
    fn start(&self, stage: &str, total: u64);
    /// Step `step` (1-based) of the current stage finished with a smoothed `loss`.
    fn step(&self, step: u64, loss: f32);
    /// A line worth showing to a person (also written to `train.log`).
    fn message(&self, line: &str);
    /// The current stage finished.
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn step(&self, _: u64, _: f32) {}
    fn message(&self, _: &str) {}
    fn finish(&self) {}
}

/// indicatif progress bars with loss and ETA on standard error; hidden when
/// standard error is not a terminal, where messages are printed as lines instead.
#[derive(Debug, Default)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// No bar yet; each stage starts its own.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Ok(guard) = self.bar.lock() {
            if let Some(bar) = guard.as_ref() {
                f(bar);
            }
        }
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{prefix:>9} [{bar:30}] {pos}/{len} loss {msg} ({elapsed} elapsed, ETA {eta})",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(stage.to_owned());
        if let Ok(mut guard) = self.bar.lock() {
            *guard = Some(bar);
        }
    }

    fn step(&self, step: u64, loss: f32) {
        self.with_bar(|bar| {
            bar.set_position(step);
            bar.set_message(format!("{loss:.5}"));
        });
    }

    fn message(&self, line: &str) {
        let mut shown = false;
        self.with_bar(|bar| {
            if !bar.is_hidden() {
                bar.println(line);
                shown = true;
            }
        });
        if !shown {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if let Ok(mut guard) = self.bar.lock() {
            if let Some(bar) = guard.take() {
                bar.finish();
            }
        }
    }
}

/// Appends timestamped lines to `train.log` and forwards them to a [`Progress`].
pub(crate) struct Log<'a> {
    file: File,
    start: Instant,
    progress: &'a dyn Progress,
}

impl<'a> Log<'a> {
    /// Creates (truncates) `path`.
    pub(crate) fn create(path: &Path, progress: &'a dyn Progress) -> Result<Self> {
        let file = File::create(path).map_err(io(path))?;
        Ok(Self {
            file,
            start: Instant::now(),
            progress,
        })
    }

    /// Opens `path` for appending.
    pub(crate) fn append(path: &Path, progress: &'a dyn Progress) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(Self {
            file,
            start: Instant::now(),
            progress,
        })
    }

    /// The progress sink.
    pub(crate) fn progress(&self) -> &'a dyn Progress {
        self.progress
    }

    /// Seconds since the log was created.
    pub(crate) fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Writes `line` to the file (prefixed with the elapsed time) and to the progress sink.
    pub(crate) fn line(&mut self, line: &str) {
        let stamped = format!("[{:8.1}s] {line}", self.elapsed());
        // A full disk must not abort hours of training: the line is still shown.
        let _ = writeln!(self.file, "{stamped}").and_then(|_| self.file.flush());
        self.progress.message(&stamped);
    }
}

/// An exponential moving average of the loss, for display.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Smoothed {
    value: Option<f32>,
}

impl Smoothed {
    /// Adds one observation and returns the running average.
    pub(crate) fn update(&mut self, loss: f32) -> f32 {
        let next = match self.value {
            Some(v) => 0.98 * v + 0.02 * loss,
            None => loss,
        };
        self.value = Some(next);
        next
    }
}

/// The bookkeeping every training step shares: a non-finite loss stops the stage,
/// otherwise the loss is smoothed, recorded in the stage report and shown on the bar.
pub(crate) struct StepTracker {
    stage: &'static str,
    steps: usize,
    log_every: usize,
    smoothed: Smoothed,
}

impl StepTracker {
    /// A tracker for a stage named `stage` (as logged) with `config`'s step counts.
    pub(crate) fn new(stage: &'static str, config: &crate::config::StageConfig) -> Self {
        Self {
            stage,
            steps: config.steps,
            log_every: config.log_every,
            smoothed: Smoothed::default(),
        }
    }

    /// Records step `step` (0-based) with loss `value`; returns the smoothed loss and
    /// whether this step's line belongs in the log.
    pub(crate) fn record(
        &mut self,
        step: usize,
        value: f32,
        report: &mut crate::report::StageReport,
        log: &Log,
    ) -> crate::Result<(f32, bool)> {
        if !value.is_finite() {
            return Err(crate::Error::Diverged {
                stage: self.stage,
                step,
                loss: value,
            });
        }
        let shown = self.smoothed.update(value);
        report.observe(step, value, shown);
        log.progress().step(step as u64 + 1, shown);
        let log_now = (step + 1).is_multiple_of(self.log_every) || step + 1 == self.steps;
        Ok((shown, log_now))
    }
}
