//! The epoch progress bar (rounds done, ETA), shown only on a terminal, below
//! the log lines.

use indicatif::{ProgressBar, ProgressStyle};
use lazyavg_common::telemetry::progress_bars;

use crate::error::Result;
use crate::observe::{Observer, RunEvent};

/// Appears with the first epoch (not while waiting for workers).
#[derive(Debug, Default)]
pub struct EpochProgress {
    bar: Option<ProgressBar>,
}

impl EpochProgress {
    fn start_epoch(&mut self, epoch: u64, rounds: u64) {
        let bar = self.bar.get_or_insert_with(|| {
            let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} rounds, ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            progress_bars().add(ProgressBar::new(rounds).with_style(style))
        });
        bar.reset();
        bar.set_length(rounds);
        bar.set_message(format!("epoch {epoch}"));
    }

    fn round_done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for EpochProgress {
    fn observe(&mut self, event: &RunEvent<'_>) -> Result<()> {
        match *event {
            RunEvent::EpochStarted { epoch, rounds } => self.start_epoch(epoch, rounds),
            RunEvent::RoundCompleted(_) => self.round_done(),
            RunEvent::RunEnded { .. } => self.finish(),
            _ => {}
        }
        Ok(())
    }
}
