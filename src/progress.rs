//! Progress of commands that run for more than a few seconds (`simulate`, `replay`): a bar on stderr
//! when stderr is a terminal, otherwise a plain line every few seconds (and one at the end), so a log
//! file or CI output shows the command is alive without escape codes.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written when there is no terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// One command's progress.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    message: String,
    started: Instant,
    /// `Some` on a terminal: the bar draws itself.
    bar: Option<ProgressBar>,
    /// Without a terminal: where lines go, how often, and when the last one was written.
    lines: Box<dyn Write + Send>,
    every: Duration,
    last_line: Option<Instant>,
}

impl Progress {
    /// Progress towards `total` steps (`None` when the end is not known in steps): a bar on a terminal,
    /// lines on stderr otherwise.
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let target = ProgressDrawTarget::stderr();
        let bar = (!target.is_hidden()).then(|| {
            let bar = ProgressBar::with_draw_target(total, target);
            let template = if total.is_some() {
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}"
            } else {
                "{prefix} [{elapsed_precise}] {spinner} {pos} {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_prefix(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self::build(label, total, bar, Box::new(std::io::stderr()), LINE_INTERVAL)
    }

    /// Progress written only as lines, to `lines`, at most every `every` (tests use it).
    pub fn lines(label: &str, total: Option<u64>, lines: Box<dyn Write + Send>, every: Duration) -> Self {
        Self::build(label, total, None, lines, every)
    }

    fn build(
        label: &str,
        total: Option<u64>,
        bar: Option<ProgressBar>,
        lines: Box<dyn Write + Send>,
        every: Duration,
    ) -> Self {
        Self {
            label: label.to_owned(),
            total,
            done: 0,
            message: String::new(),
            started: Instant::now(),
            bar,
            lines,
            every,
            last_line: None,
        }
    }

    /// True when a bar is drawn (stderr is a terminal).
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Records `done` steps and what is going on; draws the bar, or writes a line when one is due.
    pub fn update(&mut self, done: u64, message: impl Into<String>) {
        self.done = done;
        self.message = message.into();
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(self.message.clone());
            }
            None => {
                if self.last_line.is_none_or(|at| at.elapsed() >= self.every) {
                    self.write_line();
                }
            }
        }
    }

    /// Prints a line of output (stdout) without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Ends the progress at `done` steps: clears the bar, or writes the last line.
    pub fn finish(mut self, done: u64, message: impl Into<String>) {
        self.done = done;
        self.message = message.into();
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None => self.write_line(),
        }
    }

    fn write_line(&mut self) {
        self.last_line = Some(Instant::now());
        let steps = match self.total {
            Some(total) => format!("{}/{total}", self.done),
            None => self.done.to_string(),
        };
        let elapsed = self.started.elapsed().as_secs();
        // Progress is a courtesy: a closed stderr must not fail the command.
        let _ = writeln!(self.lines, "{} [{elapsed}s] {steps} {}", self.label, self.message);
        let _ = self.lines.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn without_a_terminal_lines_are_periodic_and_the_last_one_is_always_written() {
        let out = Shared::default();
        let mut progress = Progress::lines("replay", Some(3), Box::new(out.clone()), Duration::from_secs(3600));
        assert!(!progress.is_bar());
        progress.update(1, "requeued");
        progress.update(2, "requeued");
        progress.finish(3, "requeued");
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "first update and the end, nothing in between: {text}");
        assert!(lines[0].starts_with("replay [0s] 1/3 requeued"), "{text}");
        assert!(lines[1].starts_with("replay [0s] 3/3 requeued"), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "no escape codes: {text:?}");
    }

    #[test]
    fn a_zero_interval_writes_every_update() {
        let out = Shared::default();
        let mut progress = Progress::lines("simulate", None, Box::new(out.clone()), Duration::ZERO);
        for i in 1..=3 {
            progress.update(i, format!("step {i}"));
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("simulate [0s] 3 step 3"), "{text}");
    }
}
