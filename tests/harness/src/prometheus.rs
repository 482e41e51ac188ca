//! A real Prometheus (Debian's package), started per test, scraping the test's targets.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;

use crate::process::{NO_ENV, OwnedProcess, is_port_collision};
use crate::{free_port, wait_until};

const START_ATTEMPTS: usize = 4;
const READY: Duration = Duration::from_secs(60);
/// Several scrape intervals on a loaded machine.
const FIRST_SCRAPE: Duration = Duration::from_secs(60);
/// The scrape job every target belongs to.
const JOB: &str = "simulator";

/// A Prometheus scraping a fixed set of targets every second as job `simulator`, with a
/// fresh TSDB. Dropping it kills and reaps the process and removes the TSDB.
pub struct Prometheus {
    // Fields drop in order: the process goes before its directory.
    process: OwnedProcess,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    log: PathBuf,
    url: String,
    targets: Vec<SocketAddr>,
    http: reqwest::Client,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts `prometheus` from `PATH` on a free loopback port, scraping `targets` (HTTP,
    /// path `/metrics`), with the remote-write receiver and lifecycle API enabled, and
    /// waits until it is ready.
    pub async fn start(targets: &[SocketAddr]) -> anyhow::Result<Prometheus> {
        let program = find_on_path("prometheus")
            .context("prometheus is not on PATH: run `make testbed` (it installs Debian's prometheus package)")?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&program, targets, free_port()?).await {
                Ok(prometheus) => return Ok(prometheus),
                Err(error) if attempt < START_ATTEMPTS && is_port_collision(&error) => {
                    tracing::warn!(
                        "prometheus lost its port to another process, retrying: {error:#}"
                    );
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn start_once(
        program: &Path,
        targets: &[SocketAddr],
        port: u16,
    ) -> anyhow::Result<Prometheus> {
        // The prefix lets `make test` find a Prometheus a test left behind.
        let dir = tempfile::Builder::new()
            .prefix("weir-prometheus-")
            .tempdir()?;
        let config = dir.path().join("prometheus.yml");
        fs::write(&config, scrape_config(targets)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let address = format!("127.0.0.1:{port}");
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={address}"),
            "--web.enable-remote-write-receiver".to_owned(),
            "--web.enable-lifecycle".to_owned(),
            "--log.level=warn".to_owned(),
        ];
        let log = dir.path().join("prometheus.log");
        let mut process = OwnedProcess::spawn("prometheus", program, &args, NO_ENV, log.clone())?;
        let url = format!("http://{address}");
        let http = reqwest::Client::new();
        let ready = format!("{url}/-/ready");
        process
            .wait_ready(port, READY, || {
                let request = http.get(&ready);
                async move {
                    request.send().await?.error_for_status()?;
                    Ok(())
                }
            })
            .await?;
        Ok(Prometheus {
            process,
            program: program.to_path_buf(),
            args: args.to_vec(),
            port,
            log,
            url,
            targets: targets.to_vec(),
            http,
            _dir: dir,
        })
    }

    /// Kills Prometheus (SIGKILL), waits `down_for`, and starts it again on the same port
    /// and TSDB: queries are refused meanwhile, and the scrapes it missed are a gap in
    /// its data, as when a real Prometheus restarts.
    pub async fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.process.kill();
        tokio::time::sleep(down_for).await;
        self.process = OwnedProcess::spawn(
            "prometheus",
            &self.program,
            &self.args,
            NO_ENV,
            self.log.with_extension("restarted.log"),
        )?;
        let ready = format!("{}/-/ready", self.url);
        let http = self.http.clone();
        self.process
            .wait_ready(self.port, READY, || {
                let request = http.get(&ready);
                async move {
                    request.send().await?.error_for_status()?;
                    Ok(())
                }
            })
            .await
    }

    /// The base URL, e.g. `http://127.0.0.1:39133` (no trailing slash).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The process id of Prometheus.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs an instant query and returns `data.result` (for a vector, an array of
    /// `{"metric": {...}, "value": [time, "value"]}`).
    pub async fn query(&self, promql: &str) -> anyhow::Result<serde_json::Value> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            &[("query", promql)],
        )?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("querying {promql}"))?;
        let status = response.status();
        let mut body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("reading the answer to {promql} ({status})"))?;
        if body["status"] != "success" {
            anyhow::bail!(
                "query {promql} failed ({status}): {} {}",
                body["errorType"],
                body["error"]
            );
        }
        Ok(body["data"]["result"].take())
    }

    /// Waits until Prometheus has scraped every target successfully
    /// (`up{job="simulator"} == 1` for each).
    pub async fn wait_for_scrape(&self) -> anyhow::Result<()> {
        let wanted: Vec<String> = self.targets.iter().map(ToString::to_string).collect();
        wait_until(
            "Prometheus to scrape every target",
            FIRST_SCRAPE,
            || async {
                let up = self.query(&format!(r#"up{{job="{JOB}"}} == 1"#)).await?;
                let scraped: Vec<&str> = up
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|sample| sample["metric"]["instance"].as_str())
                    .collect();
                let missing: Vec<&String> = wanted
                    .iter()
                    .filter(|target| !scraped.contains(&target.as_str()))
                    .collect();
                anyhow::ensure!(missing.is_empty(), "targets not yet up: {missing:?}");
                Ok(())
            },
        )
        .await
    }
}

fn scrape_config(targets: &[SocketAddr]) -> anyhow::Result<String> {
    let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let config = serde_json::json!({
        "global": { "scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s" },
        "scrape_configs": [{ "job_name": JOB, "static_configs": [{ "targets": targets }] }],
    });
    Ok(serde_yaml::to_string(&config)?)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_reported_as_a_collision_and_not_mistaken_for_ready() {
        let program =
            find_on_path("prometheus").expect("prometheus is on PATH: run `make testbed`");
        // Another Prometheus holds the port: its /-/ready answers, but it is not ours.
        let other = Prometheus::start(&[]).await.unwrap();
        let port: u16 = other.url().rsplit(':').next().unwrap().parse().unwrap();
        let error = match Prometheus::start_once(&program, &[], port).await {
            Ok(prometheus) => panic!("started on a taken port, pid {}", prometheus.pid()),
            Err(error) => error,
        };
        assert!(crate::process::is_port_collision(&error), "{error:#}");
        assert!(other.query("up").await.is_ok());
    }
}
