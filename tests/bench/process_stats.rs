//! What a benchmark reads about the agent's process from /proc: memory and CPU time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::task::JoinHandle;

const MEMORY_SAMPLE_EVERY: Duration = Duration::from_millis(200);

pub struct Memory {
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
    /// Heap and stacks: what the agent allocates.
    pub anon_bytes: u64,
    /// Pages of the binary and shared libraries that were touched.
    pub file_bytes: u64,
}

/// VmRSS and VmHWM of a process.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .with_context(|| format!("{path} has no {key}"))?;
        let kib: u64 = line
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{key}{line}"))?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        rss_bytes: field("VmRSS:")?,
        hwm_bytes: field("VmHWM:")?,
        anon_bytes: field("RssAnon:")?,
        file_bytes: field("RssFile:")?,
    })
}

/// User plus system CPU time of a process so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3 of proc(5), utime 14 and stime 15.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("unexpected {path}: {stat}"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .with_context(|| format!("{path} is too short"))?
            .parse()
            .with_context(|| format!("field {} of {path}", index + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok((ticks(11)? + ticks(12)?) as f64 / per_second as f64)
}

pub fn load_average() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" "))
}

/// The highest VmRSS of a process, sampled until dropped.
pub struct MemorySampler {
    peak: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl MemorySampler {
    pub fn start(pid: u32) -> MemorySampler {
        let peak = Arc::new(AtomicU64::new(0));
        let sink = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(memory) = memory(pid) {
                    sink.fetch_max(memory.rss_bytes, Ordering::Relaxed);
                }
                tokio::time::sleep(MEMORY_SAMPLE_EVERY).await;
            }
        });
        MemorySampler { peak, task }
    }

    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
