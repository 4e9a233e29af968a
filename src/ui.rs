//! Progress and messages, always on stderr: one line per host that updates in place when
//! stderr is a terminal (indicatif), plain timestamped lines otherwise (CI logs stay readable).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Ui {
    started: Instant,
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    quiet: bool,
}

impl Ui {
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi =
            (tty && !quiet).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Ui {
            started: Instant::now(),
            multi,
            bars: Mutex::new(HashMap::new()),
            quiet,
        }
    }

    fn stamp(&self) -> String {
        format!("[{:>6.1}s]", self.started.elapsed().as_secs_f64())
    }

    /// A message not tied to a host.
    pub fn info(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{} {msg}", self.stamp()),
        }
    }

    /// What a host is doing now.
    pub fn host(&self, host: &str, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let mut bars = self.bars.lock().unwrap();
                let bar = bars.entry(host.to_string()).or_insert_with(|| {
                    let b = m.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {prefix:<16} {wide_msg} {elapsed:>4}",
                        )
                        .unwrap(),
                    );
                    b.set_prefix(host.to_string());
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                bar.set_message(msg.to_string());
            }
            None => eprintln!("{} {host}: {msg}", self.stamp()),
        }
    }

    /// A host is finished (ok or not); its line stays with the final message.
    pub fn host_done(&self, host: &str, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(_) => {
                if let Some(bar) = self.bars.lock().unwrap().remove(host) {
                    bar.finish_with_message(msg.to_string());
                } else {
                    self.info(&format!("{host}: {msg}"));
                }
            }
            None => eprintln!("{} {host}: {msg}", self.stamp()),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl cloudflow_provider_api::Progress for Ui {
    fn step(&self, what: &str) {
        self.info(what);
    }
}
