//! A headless chromium driven over WebDriver (W3C, plain JSON over HTTP) through
//! `chromedriver`, and the `weir dashboard` process it looks at. A thin client over
//! reqwest: the handful of WebDriver commands the dashboard's test needs.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use weir_testbed::{OwnedProcess, browser, free_port, wait_until};

use super::{Bed, DEADLINE};

/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromium session, closed (with its browser) when dropped.
pub struct Browser {
    http: reqwest::Client,
    driver_url: String,
    session: String,
    _driver: OwnedProcess,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless chromium
    /// session; chromedriver's log goes to `log`.
    pub async fn start(log: PathBuf) -> anyhow::Result<Browser> {
        let chromium = browser::chromium()?;
        let chromedriver = browser::chromedriver()?;
        let port = free_port()?;
        let driver = OwnedProcess::spawn(
            "chromedriver",
            &chromedriver,
            &[format!("--port={port}")],
            &[("LANG", "C.UTF-8")],
            log,
        )?;
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        wait_until("chromedriver to be ready", DEADLINE, || async {
            let status: Value = http
                .get(format!("{driver_url}/status"))
                .send()
                .await?
                .json()
                .await?;
            match status["value"]["ready"].as_bool() {
                Some(true) => Ok(()),
                _ => Err(anyhow!("status {status}")),
            }
        })
        .await?;
        // Named, so that tests/testbed/leftovers.sh can tell a browser a test left behind.
        let profile = tempfile::Builder::new()
            .prefix("weir-chromium-")
            .tempdir()?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                    "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let created = command(
            &http,
            reqwest::Method::POST,
            &format!("{driver_url}/session"),
            Some(capabilities),
        )
        .await
        .context("opening a chromium session")?;
        let session = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {created}"))?
            .to_owned();
        Ok(Browser {
            http,
            driver_url,
            session,
            _driver: driver,
            _profile: profile,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/session/{}{path}", self.driver_url, self.session);
        command(&self.http, method, &url, body).await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .with_context(|| format!("opening {url}"))?;
        Ok(())
    }

    /// Runs `script` in the page with `args`, and returns what it returns.
    pub async fn execute(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The text of the first element matching `css`, as a person sees it; `None` when
    /// there is no such element.
    pub async fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        let value = self
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([css]),
            )
            .await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// Waits until the text of `css` satisfies `pred`, and returns it.
    pub async fn wait_text(
        &self,
        css: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let pred = &pred;
        wait_until(what, DEADLINE, || async move {
            match self.text(css).await? {
                Some(text) if pred(&text) => Ok(text),
                Some(text) => Err(anyhow!("{css} shows {text:?}")),
                None => Err(anyhow!("no element {css} on the page")),
            }
        })
        .await
    }

    /// Clicks the element `css` as a person would (WebDriver's element click: scrolled
    /// into view, hit-tested). Looked up again if the page re-rendered it meanwhile.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        wait_until(&format!("a click on {css}"), DEADLINE, || async {
            let found = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await?;
            let id = found[ELEMENT]
                .as_str()
                .ok_or_else(|| anyhow!("no element reference in {found}"))?;
            self.call(
                reqwest::Method::POST,
                &format!("/element/{id}/click"),
                Some(json!({})),
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let value = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(
            value
                .as_str()
                .ok_or_else(|| anyhow!("no screenshot in the answer"))?,
        )?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    /// Ends the session, which closes chromium (killing chromedriver alone would leave
    /// the browser behind). Blocking and best effort: Drop cannot await.
    fn drop(&mut self) {
        let address = self.driver_url.trim_start_matches("http://").to_owned();
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read(&mut [0; 512]);
            }
        }
    }
}

/// One WebDriver command; its `value`, or the WebDriver error it answered.
async fn command(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    if !status.is_success() {
        bail!(
            "WebDriver {status}: {} {}",
            answer["value"]["error"],
            answer["value"]["message"]
        );
    }
    Ok(answer["value"].clone())
}

/// A `weir dashboard` process for the bed's namespace.
pub struct Dashboard {
    pub url: String,
    log: PathBuf,
    _process: OwnedProcess,
}

impl Dashboard {
    /// Starts `weir dashboard --port 0` with `kubeconfig` and waits for the URL it prints.
    pub async fn start(bed: &Bed, kubeconfig: &Path) -> anyhow::Result<Dashboard> {
        let n = std::fs::read_dir(bed.logs.path())?.count();
        let log = bed.logs.path().join(format!("dashboard-{n}.log"));
        let args: Vec<String> = ["dashboard", "--port", "0", "-n", &bed.namespace]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let process = OwnedProcess::spawn(
            "weir-dashboard",
            Path::new(env!("CARGO_BIN_EXE_weir")),
            &args,
            &[("KUBECONFIG", kubeconfig)],
            log.clone(),
        )?;
        let url = wait_until("weir dashboard to print its URL", DEADLINE, || async {
            let printed = std::fs::read_to_string(&log).unwrap_or_default();
            printed
                .lines()
                .find_map(|line| line.strip_prefix("weir dashboard: "))
                .map(|url| url.trim().to_owned())
                .ok_or_else(|| anyhow!("it printed {printed:?}"))
        })
        .await?;
        Ok(Dashboard {
            url,
            log,
            _process: process,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- weir dashboard log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}
