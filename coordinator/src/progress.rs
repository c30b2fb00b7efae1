//! The epoch progress bar (rounds done, ETA), shown only on a terminal, below
//! the log lines.

use indicatif::{ProgressBar, ProgressStyle};
use lazyavg_common::telemetry::progress_bars;

#[derive(Debug)]
pub struct EpochProgress {
    bar: ProgressBar,
}

impl EpochProgress {
    pub fn new() -> Self {
        let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} rounds, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = progress_bars().add(ProgressBar::new(0).with_style(style));
        EpochProgress { bar }
    }

    pub fn start_epoch(&self, epoch: u64, rounds: u64) {
        self.bar.reset();
        self.bar.set_length(rounds);
        self.bar.set_message(format!("epoch {epoch}"));
    }

    pub fn round_done(&self) {
        self.bar.inc(1);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
