//! The test bed every weir test runs against: a real etcd and kube-apiserver with Istio's
//! and Gateway API's CRDs installed, and a real Prometheus, each started per test on free
//! loopback ports and torn down when the handle is dropped (also on panic, and also when
//! the test process is killed: children carry a parent-death signal).
//!
//! The binaries and CRDs come from `tests/testbed/setup.sh` (`make testbed`), which
//! installs them into [`testbed_dir`].

pub mod browser;
mod control_plane;
mod deployment;
pub mod nginx;
mod process;
mod prometheus;

use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub use control_plane::ControlPlane;
pub use deployment::mark_deployment_available;
pub use process::OwnedProcess;
pub use prometheus::Prometheus;

/// The pinned versions, shared with `setup.sh` so both name the same cache directory.
const VERSIONS: &str = include_str!("../../testbed/versions.env");

/// How often [`wait_until`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The directory `make testbed` installed the test bed into.
///
/// `WEIR_TESTBED_DIR` overrides it; otherwise it is
/// `${WEIR_CACHE:-$HOME/.cache/weir}/testbed/<versions>`.
///
/// # Panics
///
/// When the test bed is not installed there, with a message naming `make testbed`: a test
/// must fail, not skip, when its servers are missing.
pub fn testbed_dir() -> PathBuf {
    let dir = match std::env::var_os("WEIR_TESTBED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("WEIR_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/weir"))
                })
                .expect("neither WEIR_CACHE nor HOME is set: cannot find the test bed");
            cache.join("testbed").join(testbed_name())
        }
    };
    if !dir.join(".complete").is_file() {
        panic!(
            "test bed not installed at {}: run `make testbed`",
            dir.display()
        );
    }
    dir
}

/// The test bed's `kubectl`, built from the same Kubernetes module as its apiserver
/// (Debian's is several minor versions behind).
pub fn kubectl() -> PathBuf {
    testbed_dir().join("bin/kubectl")
}

/// Flagger, built from its Go module at the pinned version: the scale benchmark runs it
/// beside weir. Its CRDs are not in every control plane: see
/// [`ControlPlane::install_extra_crds`] (`"flagger"`).
pub fn flagger() -> PathBuf {
    testbed_dir().join("bin/flagger")
}

/// `k8s-<v>_etcd-<v>_helm-<v>_istio-<v>_gwapi-<v>`, as `setup.sh` names it.
fn testbed_name() -> String {
    let version = |key: &str| {
        VERSIONS
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("tests/testbed/versions.env has no {key}"))
            .trim()
    };
    format!(
        "k8s-{}_etcd-{}_helm-{}_istio-{}_gwapi-{}",
        version("KUBERNETES_VERSION"),
        version("ETCD_VERSION"),
        version("HELM_VERSION"),
        version("ISTIO_API_VERSION"),
        version("GATEWAY_API_VERSION"),
    )
}

/// A loopback TCP port that was free a moment ago and that this process has not handed
/// out before.
///
/// Another process can still take it before the caller binds it; the servers started
/// here retry on such a collision.
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if handed_out
            .lock()
            .expect("port registry poisoned")
            .insert(port)
        {
            return Ok(port);
        }
    }
}

/// Polls `check` every 200 ms until it returns `Ok`, and returns that value.
///
/// An `Err` from `check` means "not yet": its message should say what was observed (for
/// example `anyhow!("canary weight is {weight}")`), and errors from `?` inside `check`
/// count as not yet too. After `deadline` the error names `what` and the last
/// observation.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    let mut last = None;
    loop {
        // A hung check must not outlive the deadline.
        match tokio::time::timeout_at(give_up, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(observed)) => last = Some(observed),
            Err(_elapsed) => {}
        }
        if tokio::time::Instant::now() + POLL_INTERVAL >= give_up {
            let last = last.map_or_else(
                || "nothing (every check hung)".to_owned(),
                |e| format!("{e:#}"),
            );
            anyhow::bail!("timed out after {deadline:?} waiting for {what}; last observed: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_script_and_harness_name_the_same_directory() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbed/setup.sh");
        let output = std::process::Command::new("bash")
            .args([script, "--dir"])
            .env_remove("WEIR_TESTBED_DIR")
            .env("WEIR_CACHE", "/cache")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let dir = String::from_utf8(output.stdout).unwrap();
        assert_eq!(dir.trim(), format!("/cache/testbed/{}", testbed_name()));
    }

    #[tokio::test]
    async fn wait_until_returns_the_first_success() {
        let mut polls = 0;
        let value = wait_until("the third poll", Duration::from_secs(30), || {
            polls += 1;
            let seen = polls;
            async move {
                anyhow::ensure!(seen >= 3, "poll {seen}");
                Ok(seen * 10)
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 30);
    }

    #[tokio::test]
    async fn wait_until_names_what_it_waited_for_and_the_last_observation() {
        let error = wait_until(
            "the canary weight to reach 20",
            Duration::from_millis(500),
            || async { Err::<(), _>(anyhow::anyhow!("canary weight is 10")) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(error.contains("the canary weight to reach 20"), "{error}");
        assert!(
            error.contains("last observed: canary weight is 10"),
            "{error}"
        );
    }
}
