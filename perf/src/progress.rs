//! The progress line on stderr: step k of n, what, which system, which run, and an ETA from the
//! mean step time so far (steps differ in length, so the ETA is rough until a run completes).

use std::time::Instant;

pub struct Progress {
    total: usize,
    done: usize,
    t0: Instant,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Progress {
            total: total.max(1),
            done: 0,
            t0: Instant::now(),
        }
    }

    /// Prints the line for the step about to start and counts it.
    pub fn step(&mut self, what: &str, system: &str, run: usize, runs: usize) {
        let elapsed = self.t0.elapsed().as_secs_f64();
        let eta = if self.done == 0 {
            "?".to_string()
        } else {
            let left = elapsed / self.done as f64 * (self.total.saturating_sub(self.done)) as f64;
            mmss(left)
        };
        self.done += 1;
        eprintln!(
            "[{}/{}] {what:<10} {system:<16} run {run}/{runs}  elapsed {}  ETA {eta}",
            self.done.min(self.total),
            self.total,
            mmss(elapsed)
        );
    }

    /// Steps that will not happen (a system skipped or failed early).
    pub fn skip(&mut self, steps: usize) {
        self.total = self.total.saturating_sub(steps).max(self.done).max(1);
    }
}

fn mmss(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}
