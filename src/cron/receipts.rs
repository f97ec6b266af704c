//! Receipts: one file per run decision, `<state>/cron/runs/<jobId>/<ms>-<runId>.json`,
//! written atomically (temp, fsync, rename, directory fsync).
//!
//! A run's receipt is written `running` — job, scheduled slot, run id, the owner's pid and
//! process start time — before the run starts, and rewritten when it ends (`ok`, `error`,
//! `timeout`, `interrupted`). A decision not to run (`skipped`) is a receipt too, with its
//! reason. The receipts are the scheduler's memory: a job's next slot follows the newest
//! scheduled (not manual) receipt, so a restart neither repeats a slot nor forgets one.
//! At boot a `running` receipt whose owner process is gone becomes `interrupted`: never left
//! running, never run again silently.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io;
use std::path::{Path, PathBuf};

/// Receipts kept per job (the oldest go first).
pub const KEEP: usize = 200;

/// The process a `running` receipt belongs to: its pid and its start time (clock ticks since
/// boot, `/proc/<pid>/stat` field 22), so a reused pid is not taken for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub pid: u32,
    pub start_ticks: u64,
}

impl Owner {
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
        }
    }

    /// Whether the process that wrote the receipt still runs.
    pub fn alive(&self) -> bool {
        start_ticks(self.pid).is_some_and(|t| t == self.start_ticks)
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub run_id: String,
    pub job_id: String,
    #[serde(default)]
    pub job_name: String,
    /// `running`, `ok`, `error`, `skipped`, `interrupted` or `timeout`.
    pub status: String,
    /// Why this run or decision: `scheduled`, `catch-up: …`, `manual`, `missed: …`.
    pub reason: String,
    /// The slot it stands for (the time of a manual run).
    pub scheduled_at_ms: i64,
    #[serde(default)]
    pub manual: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    /// The agent run's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Whether the reply was handed to the delivery queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<bool>,
    /// The file's name (not stored).
    #[serde(skip)]
    pub file: String,
}

impl Receipt {
    pub fn is_final(&self) -> bool {
        self.status != "running"
    }

    /// OpenClaw's run-log entry (`cron.runs`): its `status` is `ok`, `error` or `skipped`
    /// (an interrupted or timed-out run is an `error` there); keel's own is `outcome`.
    pub fn entry(&self, next_run_at_ms: Option<i64>) -> Value {
        let status = match self.status.as_str() {
            "ok" => "ok",
            "skipped" => "skipped",
            "running" => "running",
            _ => "error",
        };
        let started = self
            .started_at_ms
            .unwrap_or(self.scheduled_at_ms.max(0) as u64);
        json!({
            "ts": self.finished_at_ms.or(self.started_at_ms).unwrap_or(started),
            "jobId": self.job_id,
            "jobName": self.job_name,
            "action": if self.is_final() { "finished" } else { "started" },
            "runId": self.run_id,
            "status": status,
            "outcome": self.status,
            "reason": self.reason,
            "manual": self.manual,
            "error": self.error,
            "summary": self.summary,
            "runAtMs": started,
            "scheduledAtMs": self.scheduled_at_ms,
            "durationMs": self.finished_at_ms.map(|f| f.saturating_sub(started)),
            "nextRunAtMs": next_run_at_ms,
            "sessionKey": self.session_key,
            "agentRunId": self.agent_run_id,
            "delivered": self.delivered,
            "deliveryStatus": match self.delivered {
                Some(true) => "delivered",
                Some(false) => "not-delivered",
                None => "not-requested",
            },
        })
    }
}

pub fn job_dir(root: &Path, job_id: &str) -> PathBuf {
    root.join(job_id)
}

/// A new receipt's file name: creation time first, so names sort by time.
pub fn file_name(created_ms: u64, run_id: &str) -> String {
    format!("{created_ms:015}-{run_id}.json")
}

/// Writes (or rewrites) `r` in its job's directory.
pub fn write(root: &Path, r: &Receipt) -> io::Result<()> {
    let dir = job_dir(root, &r.job_id);
    crate::state::ensure_dir(&dir)?;
    let bytes = serde_json::to_vec_pretty(r).map_err(io::Error::other)?;
    crate::state::write_atomic(&dir.join(&r.file), &bytes)
}

/// A job's receipt files, oldest first (temp files and others left out).
pub fn files(root: &Path, job_id: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(job_dir(root, job_id)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Reads one receipt; `None` for a file that is not one (skipped, never fatal).
pub fn read(root: &Path, job_id: &str, file: &str) -> Option<Receipt> {
    let bytes = std::fs::read(job_dir(root, job_id).join(file)).ok()?;
    let mut r: Receipt = serde_json::from_slice(&bytes).ok()?;
    r.file = file.to_string();
    Some(r)
}

/// Removes the oldest receipts beyond [`KEEP`].
pub fn prune(root: &Path, job_id: &str) {
    let names = files(root, job_id);
    if names.len() <= KEEP + KEEP / 10 {
        return;
    }
    let dir = job_dir(root, job_id);
    for n in &names[..names.len() - KEEP] {
        let _ = std::fs::remove_file(dir.join(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_this_process_and_a_dead_one_is_not_alive() {
        let me = Owner::current();
        assert!(me.start_ticks > 0);
        assert!(me.alive());
        let reused = Owner {
            pid: me.pid,
            start_ticks: me.start_ticks + 1,
        };
        assert!(!reused.alive(), "a reused pid is not the owner");
        assert!(
            !Owner {
                pid: u32::MAX - 1,
                start_ticks: 1
            }
            .alive()
        );
    }

    #[test]
    fn write_read_list_prune() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for i in 0..(KEEP + KEEP / 10 + 5) {
            let r = Receipt {
                run_id: format!("r{i}"),
                job_id: "j".into(),
                job_name: "n".into(),
                status: "ok".into(),
                reason: "scheduled".into(),
                scheduled_at_ms: i as i64,
                manual: false,
                started_at_ms: None,
                finished_at_ms: None,
                owner: None,
                session_key: None,
                agent_run_id: None,
                error: None,
                summary: None,
                delivered: None,
                file: file_name(1000 + i as u64, &format!("r{i}")),
            };
            write(root, &r).unwrap();
        }
        std::fs::write(job_dir(root, "j").join("junk.json"), b"{").unwrap();
        let names = files(root, "j");
        assert!(read(root, "j", "junk.json").is_none());
        assert_eq!(read(root, "j", &names[0]).unwrap().run_id, "r0");
        prune(root, "j");
        let left = files(root, "j");
        assert_eq!(left.len(), KEEP);
        // The newest stay (the junk file sorts last and counts as one).
        assert!(left.last().unwrap() == "junk.json");
    }
}
