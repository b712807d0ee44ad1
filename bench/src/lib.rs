//! Measurement helpers shared by the benchmark binaries: samples, percentiles,
//! and a results file per benchmark.

pub mod netns;
pub mod proxy_input;
pub mod tcp;

use serde::Serialize;
use std::time::{Duration, Instant};

/// Percentiles of a set of samples, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub samples: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Summary {
    pub fn of(name: &str, mut samples: Vec<Duration>) -> Summary {
        samples.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |p: f64| us(samples[((samples.len() - 1) as f64 * p).round() as usize]);
        Summary {
            name: name.to_string(),
            samples: samples.len(),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            max_us: us(*samples.last().expect("at least one sample")),
        }
    }

    pub fn print(&self) {
        println!(
            "{:<58} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            self.name, self.samples, self.p50_us, self.p90_us, self.p99_us, self.max_us
        );
    }
}

pub fn header() {
    println!(
        "{:<58} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "measurement", "n", "p50 us", "p90 us", "p99 us", "max us"
    );
}

/// Time `f` `n` times after `warmup` untimed runs.
pub fn sample(warmup: usize, n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..warmup {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

/// Write `results/<name>.json` next to this crate.
pub fn write_results(name: &str, value: &impl Serialize) -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// Facts about the machine, recorded with every result.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}
