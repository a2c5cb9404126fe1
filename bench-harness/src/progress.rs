//! Live progress on stderr: an indicatif bar on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::ProgressMode;
use crate::stats::Counters;

/// The progress display chosen for this run.
#[derive(Debug)]
pub enum Progress {
    /// An indicatif bar.
    Bar(ProgressBar),
    /// One line per update.
    Plain,
    /// Nothing.
    Off,
}

impl Progress {
    /// Chooses the display; `planned` is the message count (bar length) or
    /// `None` for a duration-bound run (the bar then counts seconds).
    pub fn new(mode: ProgressMode, planned: Option<u64>, duration: Option<Duration>) -> Self {
        let tty = std::io::stderr().is_terminal();
        match mode {
            ProgressMode::None => Progress::Off,
            ProgressMode::Plain => Progress::Plain,
            ProgressMode::Auto if !tty => Progress::Plain,
            ProgressMode::Auto | ProgressMode::Bar => {
                let len = planned
                    .or(duration.map(|d| d.as_secs().max(1)))
                    .unwrap_or(0);
                let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
                let template = if planned.is_some() {
                    "{bar:40.cyan/blue} {pos}/{len} msgs  {msg}  eta {eta}"
                } else {
                    "{bar:40.cyan/blue} {pos}/{len} s  {msg}  eta {eta}"
                };
                // Infallible: the template is a constant known to parse.
                let style = ProgressStyle::with_template(template).expect("valid template");
                bar.set_style(style);
                Progress::Bar(bar)
            }
        }
    }

    /// Shows the counters at `elapsed`; `rate` is the last interval's msg/s.
    pub fn update(&self, counters: &Counters, elapsed: Duration, rate: f64, planned: Option<u64>) {
        let errors = counters.failed + counters.connection_failures();
        match self {
            Progress::Bar(bar) => {
                if planned.is_some() {
                    bar.set_position(counters.finished());
                } else {
                    bar.set_position(elapsed.as_secs());
                }
                bar.set_message(format!(
                    "{rate:.0} msg/s  accepted {}  errors {errors}",
                    counters.accepted
                ));
            }
            Progress::Plain => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(
                    err,
                    "[{:7.1}s] {rate:9.0} msg/s  sent {}  accepted {}  errors {errors}  conns {}",
                    elapsed.as_secs_f64(),
                    counters.sent,
                    counters.accepted,
                    counters.connections
                );
            }
            Progress::Off => {}
        }
    }

    /// Removes the bar before the final report is printed.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
