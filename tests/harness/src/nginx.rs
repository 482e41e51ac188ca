//! A real nginx (Debian's package), started per test as a reverse proxy: it stands for
//! the gateway in front of Grafana Mimir (path prefix, tenant header, bearer token, TLS).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::free_port;
use crate::process::{NO_ENV, OwnedProcess};

const START_ATTEMPTS: usize = 4;
const READY: Duration = Duration::from_secs(30);

/// An nginx master process with one `server` listening on a free loopback port, its
/// configuration, logs, pid and temporary files in a directory of its own. Dropping it
/// kills and reaps the process and removes the directory.
pub struct Nginx {
    // Fields drop in order: the process goes before its directory.
    process: OwnedProcess,
    port: u16,
    tls: bool,
    dir: TempDir,
}

impl Nginx {
    /// Starts `nginx` from `PATH` serving plain HTTP, with `server` (directives inside
    /// the `server { }` block, e.g. `location` blocks) as its configuration, and waits
    /// until it accepts connections.
    pub async fn start(server: &str) -> anyhow::Result<Nginx> {
        Self::start_with(server, false).await
    }

    /// Like [`Nginx::start`], but serving HTTPS with a certificate for `127.0.0.1` and
    /// `localhost` issued by a CA made for this server alone: only a client that trusts
    /// [`Nginx::ca_file`] accepts it.
    pub async fn start_tls(server: &str) -> anyhow::Result<Nginx> {
        Self::start_with(server, true).await
    }

    async fn start_with(server: &str, tls: bool) -> anyhow::Result<Nginx> {
        let program = find_on_path("nginx").context(
            "nginx is not on PATH: run `make testbed` (it installs Debian's nginx package)",
        )?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&program, server, tls).await {
                Ok(nginx) => return Ok(nginx),
                Err(error)
                    if attempt < START_ATTEMPTS
                        && format!("{error:#}").contains("Address already in use") =>
                {
                    tracing::warn!("nginx lost its port to another process, retrying: {error:#}");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn start_once(program: &Path, server: &str, tls: bool) -> anyhow::Result<Nginx> {
        let dir = tempfile::Builder::new().prefix("weir-nginx-").tempdir()?;
        if tls {
            write_certificates(dir.path())?;
        }
        let port = free_port()?;
        fs::write(
            dir.path().join("nginx.conf"),
            configuration(dir.path(), port, tls, server),
        )?;
        let args = [
            "-p".to_owned(),
            format!("{}/", dir.path().display()),
            "-c".to_owned(),
            dir.path().join("nginx.conf").display().to_string(),
            "-e".to_owned(),
            dir.path().join("error.log").display().to_string(),
            "-g".to_owned(),
            "daemon off;".to_owned(),
        ];
        let mut process = OwnedProcess::spawn(
            "nginx",
            program,
            &args,
            NO_ENV,
            dir.path().join("nginx.log"),
        )?;
        let address = format!("127.0.0.1:{port}");
        process
            .wait_ready(port, READY, || {
                let address = address.clone();
                async move {
                    tokio::net::TcpStream::connect(&address).await?;
                    Ok(())
                }
            })
            .await
            .map_err(|error| {
                let log = fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                error.context(format!("nginx error log:\n{log}"))
            })?;
        Ok(Nginx {
            process,
            port,
            tls,
            dir,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:39133` or `https://localhost:39133` (a name
    /// the certificate holds), without a trailing slash.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    /// The PEM file of the CA that issued the server's certificate (TLS only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// Replaces the `server` directives and has nginx reload them (SIGHUP). The new
    /// configuration is checked first (`nginx -t`), so a typo fails here rather than
    /// leaving the old one in place. Returns once the old workers have exited: until
    /// then a kept-alive connection is still served with the old configuration.
    pub fn reload(&self, server: &str) -> anyhow::Result<()> {
        let path = self.dir.path().join("nginx.conf");
        fs::write(
            &path,
            configuration(self.dir.path(), self.port, self.tls, server),
        )?;
        let program = find_on_path("nginx").context("nginx is not on PATH")?;
        let test = std::process::Command::new(program)
            .arg("-t")
            .arg("-p")
            .arg(format!("{}/", self.dir.path().display()))
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .output()
            .context("running nginx -t")?;
        anyhow::ensure!(
            test.status.success(),
            "nginx rejects the new configuration: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let pid = libc::pid_t::try_from(self.process.pid())?;
        let old_workers = children(pid);
        // SAFETY: kill(2) with a pid this handle owns and a valid signal number.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling nginx to reload");
        }
        let deadline = std::time::Instant::now() + RELOAD_DEADLINE;
        loop {
            let left: Vec<libc::pid_t> = children(pid)
                .into_iter()
                .filter(|p| old_workers.contains(p))
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                let log = fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                anyhow::bail!(
                    "nginx's old workers {left:?} were still running {RELOAD_DEADLINE:?} after the reload; its error.log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    /// Stops the workers too: they are the master's children, and a master killed alone
    /// leaves them running (the parent-death signal is not inherited across fork).
    /// SIGTERM makes the master stop its workers and exit; whatever is left is killed.
    fn drop(&mut self) {
        let Ok(pid) = libc::pid_t::try_from(self.process.pid()) else {
            return;
        };
        let mut workers = children(pid);
        // SAFETY: kill(2) with a pid this handle owns and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::path::Path::new(&format!("/proc/{pid}/task")).exists()
            && !children(pid).is_empty()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        workers.extend(children(pid));
        for worker in workers {
            // SAFETY: as above; a worker that already exited makes this fail harmlessly.
            unsafe { libc::kill(worker, libc::SIGKILL) };
        }
    }
}

/// How long old workers may take to finish their requests after a reload.
const RELOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The live (not zombie) child processes of `parent`, from `/proc`.
fn children(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &libc::pid_t| {
            // After the command name, which is in parentheses: the state, then the ppid.
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let mut fields = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<libc::pid_t>().ok());
            state != Some("Z") && ppid == Some(parent)
        })
        .collect()
}

/// The whole nginx configuration: everything nginx writes goes into `dir`.
fn configuration(dir: &Path, port: u16, tls: bool, server: &str) -> String {
    let dir = dir.display();
    // Run as root, nginx would switch its workers to `nobody`, who cannot enter `dir`.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    let listen = if tls {
        format!(
            "listen 127.0.0.1:{port} ssl;\n        ssl_certificate {dir}/server.pem;\n        ssl_certificate_key {dir}/server.key;"
        )
    } else {
        format!("listen 127.0.0.1:{port};")
    };
    format!(
        r#"{user}
worker_processes 1;
# An old worker lives, after a reload, until its connections close. Bound that, as a
# gateway in front of Mimir would: after 10 s it closes what is left, so the old
# configuration (an old token, say) stops being served within a known time.
worker_shutdown_timeout 10s;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 256;
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        {listen}
{server}
    }}
}}
"#
    )
}

/// A CA (`ca.pem`) and a server certificate it issued for `127.0.0.1` and `localhost`
/// (`server.pem`, `server.key`).
fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "weir test nginx CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key)?.pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "weir test nginx");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    fs::write(
        dir.join("server.pem"),
        server.signed_by(&key, &issuer)?.pem(),
    )?;
    fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

/// `program` on `PATH`, or in `/usr/sbin`, where Debian puts nginx and which a
/// non-root user's `PATH` often lacks.
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
