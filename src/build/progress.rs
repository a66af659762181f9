//! Progress on the terminal: phase, hook, flavour, elapsed time; and the timing
//! table at the end.

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Progress {
    start: Instant,
    current: Option<(String, Instant)>,
    pub timings: Vec<(String, Duration)>,
    pub trace: bool,
    /// The elapsed-time prefix; DIB_NO_TIMESTAMP=1 drops it.
    pub stamps: bool,
}

impl Progress {
    pub fn new(trace: bool) -> Progress {
        Progress {
            start: Instant::now(),
            current: None,
            timings: Vec::new(),
            trace,
            stamps: true,
        }
    }

    fn stamp(&self) -> String {
        let e = self.start.elapsed().as_secs_f64();
        format!("[{:>4}:{:04.1}]", (e / 60.0) as u64, e % 60.0)
    }

    pub fn say(&self, msg: &str) {
        let mut err = std::io::stderr().lock();
        // A step marker leads the line, before the stamp.
        let (mark, msg) = match msg.as_bytes().first() {
            Some(&crate::cli::status::STEP) => (&msg[..1], &msg[1..]),
            _ => ("", msg),
        };
        let _ = err.write_all(mark.as_bytes());
        if self.stamps {
            let _ = writeln!(err, "{} {msg}", self.stamp());
        } else {
            let _ = writeln!(err, "{msg}");
        }
    }

    /// Starts a timed step; the previous one, if any, is closed.
    pub fn step(&mut self, name: &str, detail: &str) {
        self.finish();
        let line = if detail.is_empty() {
            name.to_string()
        } else {
            format!("{name}  {detail}")
        };
        if crate::cli::status::live() {
            // The status line shows it; the log file gets it as a plain line.
            self.say(&format!("{}{line}", crate::cli::status::STEP as char));
        } else {
            self.say(&line);
        }
        self.current = Some((name.to_string(), Instant::now()));
    }

    pub fn finish(&mut self) {
        if let Some((name, t)) = self.current.take() {
            self.timings.push((name, t.elapsed()));
        }
    }

    /// A line of a hook's output, indented under its step.
    pub fn output(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        if crate::cli::status::live() {
            let _ = err.write_all(&[crate::cli::status::OUTPUT]);
        }
        let _ = writeln!(err, "    | {line}");
    }

    pub fn table(&mut self) -> String {
        self.finish();
        let mut s = String::from("timings:\n");
        for (name, d) in &self.timings {
            s.push_str(&format!("  {:>8.2}s  {name}\n", d.as_secs_f64()));
        }
        s.push_str(&format!(
            "  {:>8.2}s  total\n",
            self.start.elapsed().as_secs_f64()
        ));
        s
    }
}
