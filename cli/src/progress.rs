//! Progress for slow operations: a spinner line redrawn in place on a terminal, plain lines
//! (one per change) otherwise, always on stderr so stdout stays clean for results.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// A progress display; dropping it clears the spinner.
#[derive(Debug)]
pub struct Progress {
    message: Arc<Mutex<String>>,
    spinner: Option<tokio::task::JoinHandle<()>>,
    last_plain: String,
    quiet: bool,
}

impl Progress {
    /// Starts showing `message`. On a terminal a spinner runs until [`Progress::finish`];
    /// `quiet` shows nothing (for JSON output).
    pub fn start(message: impl Into<String>, quiet: bool) -> Self {
        let message = Arc::new(Mutex::new(message.into()));
        let interactive = !quiet && std::io::stderr().is_terminal();
        let spinner = interactive.then(|| {
            let message = Arc::clone(&message);
            tokio::spawn(async move {
                let mut frame = 0usize;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let text = message.lock().map(|m| m.clone()).unwrap_or_default();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{} {text}", FRAMES[frame % FRAMES.len()]);
                    let _ = err.flush();
                    frame += 1;
                }
            })
        });
        let mut progress = Self {
            message,
            spinner,
            last_plain: String::new(),
            quiet,
        };
        progress.print_plain();
        progress
    }

    /// Changes the message.
    pub fn update(&mut self, message: impl Into<String>) {
        let message = message.into();
        if let Ok(mut current) = self.message.lock() {
            *current = message;
        }
        self.print_plain();
    }

    fn print_plain(&mut self) {
        if self.quiet || self.spinner.is_some() {
            return;
        }
        let text = self.message.lock().map(|m| m.clone()).unwrap_or_default();
        if text != self.last_plain {
            eprintln!("{text}");
            self.last_plain = text;
        }
    }

    /// Stops the spinner and clears its line.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
