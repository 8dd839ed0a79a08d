//! Terminal progress bars (indicatif) for the library's progress stages and calibration batches.
//! Drawn on stderr, and only when both stdout and stderr are terminals and `--quiet` is not given:
//! piped or redirected runs print no progress at all.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sparsify_onnx::{Progress, Stage};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

/// Whether to draw progress bars.
pub fn wanted(quiet: bool) -> bool {
    decide(quiet, std::io::stdout().is_terminal(), std::io::stderr().is_terminal())
}

fn decide(quiet: bool, stdout_tty: bool, stderr_tty: bool) -> bool {
    !quiet && stdout_tty && stderr_tty
}

/// Bars for nested stages (a pass's weight loop, the calibration sweep inside it), one line each.
pub struct Bars {
    multi: MultiProgress,
}

impl Bars {
    pub fn new() -> Arc<Bars> {
        Arc::new(Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()) })
    }
}

struct Bar(ProgressBar);

impl Stage for Bar {
    fn inc(&self, steps: u64) {
        self.0.inc(steps);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bars {
    fn stage(&self, label: &str, total: u64) -> Box<dyn Stage> {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template("{msg:>36} {bar:30} {pos}/{len} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(label.to_string());
        bar.tick();
        Box::new(Bar(bar))
    }
}

/// The calibrator's per-batch callback, drawn as one bar per sweep over the batches.
pub fn calibration(bars: Arc<Bars>) -> sparsify_onnx::calibrate::Progress {
    let current: Mutex<Option<Box<dyn Stage>>> = Mutex::new(None);
    Box::new(move |done, total| {
        let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
        if done <= 1 || cur.is_none() {
            *cur = Some(bars.stage("calibration: batches", total as u64));
        }
        if let Some(s) = cur.as_ref() {
            s.inc(1);
        }
        if done >= total {
            *cur = None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::decide;

    #[test]
    fn bars_only_on_a_terminal_and_never_when_quiet() {
        assert!(decide(false, true, true));
        assert!(!decide(true, true, true), "--quiet");
        assert!(!decide(false, false, true), "stdout piped or redirected");
        assert!(!decide(false, true, false), "stderr piped or redirected");
    }
}
