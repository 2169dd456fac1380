//! Results as JSON and as a markdown table, plus the server-side measurements (RSS, database
//! size) and the machine description.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::stats::Summary;
use crate::Error;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Server label (e.g. `renkei-sqlite`), or the target URL.
    pub server: String,
    pub workload: String,
    pub access: String,
    pub concurrency: usize,
    /// `closed` or `open@R/s`.
    pub mode: String,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Report {
    pub started: String,
    pub machine: Machine,
    pub command: String,
    pub rows: Vec<Row>,
    /// Server RSS after the runs, in KiB.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub db_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub git_commit: String,
    pub loadavg: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let run = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel: run("uname", &["-r"]),
            git_commit: run("git", &["rev-parse", "--short", "HEAD"]),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

impl Report {
    pub fn new(command: String) -> Report {
        Report {
            started: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            machine: Machine::describe(),
            command,
            ..Report::default()
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::json(path, e))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Machine: {} × {} (kernel {}, load {}), commit {}, {}\nCommand: `{}`\n\n",
            self.machine.nproc,
            self.machine.cpu,
            self.machine.kernel,
            self.machine.loadavg,
            self.machine.git_commit,
            self.started,
            self.command
        );
        out.push_str(&table(&self.rows));
        if let Some(rss) = self.rss_kib {
            out.push_str(&format!(
                "\nServer RSS after the runs: {:.1} MB\n",
                rss as f64 / 1024.0
            ));
        }
        if let Some(db) = self.db_bytes {
            out.push_str(&format!(
                "Database size: {:.1} MB\n",
                db as f64 / 1_048_576.0
            ));
        }
        out
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| server | workload | access | c | mode | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | empty |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let s = &r.summary;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
            r.server,
            r.workload,
            r.access,
            r.concurrency,
            r.mode,
            s.requests,
            s.throughput,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.max_ms,
            s.errors,
            s.empty
        ));
    }
    out
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Database size: a PostgreSQL URL (`pg_database_size` through `psql`), a `sqlite:` URL or a
/// file path (the file plus its `-wal` and `-shm`), or a directory (everything in it).
pub fn db_bytes(spec: &str) -> Option<u64> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let out = Command::new("psql")
            .args([spec, "-tAc", "SELECT pg_database_size(current_database())"])
            .output()
            .ok()?;
        return String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    }
    let path = spec
        .strip_prefix("sqlite://")
        .or_else(|| spec.strip_prefix("sqlite:"))
        .unwrap_or(spec);
    let p = Path::new(path);
    if p.is_dir() {
        return Some(dir_size(p));
    }
    let mut total = std::fs::metadata(p).ok()?.len();
    for suffix in ["-wal", "-shm"] {
        total += std::fs::metadata(format!("{path}{suffix}")).map_or(0, |m| m.len());
    }
    Some(total)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// Runs a shell command that prints a byte count.
pub fn db_bytes_cmd(cmd: &str) -> Option<u64> {
    let out = Command::new("sh").args(["-c", cmd]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_one_line_per_row() {
        let mut r = Report::new("renkei-bench run".into());
        r.rows.push(Row {
            server: "s".into(),
            workload: "read".into(),
            access: "owner".into(),
            concurrency: 8,
            mode: "closed".into(),
            summary: Summary {
                requests: 10,
                throughput: 5.0,
                p50_ms: 1.234,
                ..Summary::default()
            },
        });
        let md = r.markdown();
        assert!(md.contains("| s | read | owner | 8 | closed | 10 | 5 | 1.23 |"));
    }

    #[test]
    fn rss_of_self() {
        assert!(rss_kib(std::process::id()).unwrap_or(0) > 0);
    }
}
