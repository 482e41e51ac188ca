//! etcd and kube-apiserver, started per test, with Istio's and Gateway API's CRDs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Deserialize as _;
use tempfile::TempDir;

use crate::process::{NO_ENV, OwnedProcess, is_port_collision};
use crate::{free_port, testbed_dir, wait_until};

/// Starts that fail because another process took a port are retried this often.
const START_ATTEMPTS: usize = 4;
/// Generous: tests start control planes in parallel on two loaded cores.
const ETCD_READY: Duration = Duration::from_secs(60);
const APISERVER_READY: Duration = Duration::from_secs(120);
const CRDS_ESTABLISHED: Duration = Duration::from_secs(120);

/// The admin identity's user name; its token is in group `system:masters`.
const ADMIN_USER: &str = "weir-testbed-admin";
/// Service ClusterIPs are allocated from here (nothing routes to them: there is no proxy).
/// A /16: the scale benchmark creates thousands of Services (a /24 holds about 250).
const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/16";

/// A real etcd and kube-apiserver for one test, with Istio's and Gateway API's CRDs
/// installed and Established, and nothing else created.
///
/// Dropping it kills and reaps both processes and removes their data directory.
pub struct ControlPlane {
    // Fields drop in order: the apiserver goes before its etcd, the directory last.
    apiserver: OwnedProcess,
    etcd: OwnedProcess,
    /// How the apiserver was started, to start it again ([`ControlPlane::restart_apiserver`]).
    apiserver_start: ApiserverStart,
    client: kube::Client,
    server_url: String,
    ca_pem: String,
    kubeconfig: PathBuf,
    kubeconfigs_written: AtomicUsize,
    dir: TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports with fresh data, waits until
    /// the apiserver is ready, and installs the CRDs.
    ///
    /// # Panics
    ///
    /// When the test bed is not installed (see [`testbed_dir`]).
    pub async fn start() -> anyhow::Result<ControlPlane> {
        let testbed = testbed_dir();
        let started = Instant::now();
        let mut attempt = 1;
        let control_plane = loop {
            match Self::start_servers(&testbed).await {
                Ok(control_plane) => break control_plane,
                Err(error) if attempt < START_ATTEMPTS && is_port_collision(&error) => {
                    tracing::warn!(
                        "control plane lost a port to another process, retrying: {error:#}"
                    );
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        };
        let ready = started.elapsed();
        control_plane.install_crds(&testbed).await?;
        tracing::info!(?ready, total = ?started.elapsed(), "control plane ready with CRDs established");
        Ok(control_plane)
    }

    async fn start_servers(testbed: &Path) -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix("weir-controlplane-")
            .tempdir()?;
        let (etcd, etcd_url) = start_etcd(testbed, dir.path()).await?;

        let port = free_port()?;
        let server_url = format!("https://127.0.0.1:{port}");
        let pki = Pki::generate()?;
        let admin_token = random_token();
        let files = dir.path().join("apiserver");
        fs::create_dir(&files)?;
        let write = |name: &str, contents: &str| -> anyhow::Result<String> {
            let path = files.join(name);
            fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
            Ok(path.display().to_string())
        };
        let ca_file = write("ca.crt", &pki.ca_pem)?;
        let cert_file = write("apiserver.crt", &pki.serving_cert_pem)?;
        let key_file = write("apiserver.key", &pki.serving_key_pem)?;
        let service_account_key_file = write("service-account.key", &pki.service_account_key_pem)?;
        let service_account_public_key_file =
            write("service-account.pub", &pki.service_account_public_key_pem)?;
        let token_file = write(
            "tokens.csv",
            &format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"),
        )?;
        let args = [
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", files.display()),
            format!("--tls-cert-file={cert_file}"),
            format!("--tls-private-key-file={key_file}"),
            format!("--client-ca-file={ca_file}"),
            format!("--token-auth-file={token_file}"),
            "--authorization-mode=RBAC".to_owned(),
            format!("--service-account-issuer={server_url}"),
            format!("--service-account-key-file={service_account_public_key_file}"),
            format!("--service-account-signing-key-file={service_account_key_file}"),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--allow-privileged=true".to_owned(),
            // No controller-manager creates `default` ServiceAccounts, as in envtest.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            // A test server needs none of these, and each costs start time or background work.
            "--enable-priority-and-fairness=false".to_owned(),
            "--endpoint-reconciler-type=none".to_owned(),
            "--profiling=false".to_owned(),
            // Watches are served from etcd's history rather than the apiserver's cache,
            // so a watch resumes where it left off across an apiserver restart (the
            // chaos suite's recorder must see every revision).
            "--watch-cache=false".to_owned(),
        ];
        let apiserver_start = ApiserverStart {
            program: testbed.join("bin/kube-apiserver"),
            args: args.to_vec(),
            log: files.join("kube-apiserver.log"),
            port,
            restarts: 0,
        };
        let mut apiserver = apiserver_start.spawn()?;

        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &server_url,
            &pki.ca_pem,
            ADMIN_USER,
            &admin_token,
        )?;
        let client = client_from_kubeconfig(&kubeconfig).await?;
        apiserver
            .wait_ready(port, APISERVER_READY, || {
                let client = client.clone();
                async move {
                    let request = http::Request::get("/readyz").body(Vec::new())?;
                    client.request_text(request).await?;
                    Ok(())
                }
            })
            .await?;

        Ok(ControlPlane {
            apiserver,
            etcd,
            apiserver_start,
            client,
            server_url,
            ca_pem: pki.ca_pem,
            kubeconfig,
            kubeconfigs_written: AtomicUsize::new(0),
            dir,
        })
    }

    async fn install_crds(&self, testbed: &Path) -> anyhow::Result<()> {
        self.install_crd_documents(crd_documents(testbed)?).await
    }

    /// Installs the CRDs the test bed keeps under `crds/<source>/` besides those every
    /// control plane has, for example `flagger` (the scale benchmark's comparison), and
    /// waits until they are Established.
    pub async fn install_extra_crds(&self, source: &str) -> anyhow::Result<()> {
        let crds = read_crds(&testbed_dir().join("crds"), &[source])?;
        self.install_crd_documents(&crds).await
    }

    async fn install_crd_documents(&self, crds: &[DynamicObject]) -> anyhow::Result<()> {
        let api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ApiResource::erase::<CustomResourceDefinition>(&()),
        );
        futures::future::try_join_all(crds.iter().map(|crd| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), crd)
                    .await
                    .with_context(|| {
                        format!(
                            "installing CRD {}",
                            crd.metadata.name.as_deref().unwrap_or("?")
                        )
                    })
            }
        }))
        .await?;
        let crds_api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let wanted: Vec<&str> = crds
            .iter()
            .filter_map(|crd| crd.metadata.name.as_deref())
            .collect();
        wait_until("every CRD to be Established", CRDS_ESTABLISHED, || {
            let crds_api = crds_api.clone();
            let wanted = &wanted;
            async move {
                let listed = crds_api.list(&Default::default()).await?;
                let established: Vec<&str> = listed
                    .items
                    .iter()
                    .filter(|crd| is_established(crd))
                    .filter_map(|crd| crd.metadata.name.as_deref())
                    .collect();
                let pending: Vec<&&str> = wanted
                    .iter()
                    .filter(|name| !established.contains(name))
                    .collect();
                if !pending.is_empty() {
                    anyhow::bail!(
                        "{} of {} CRDs not yet Established: {pending:?}",
                        pending.len(),
                        wanted.len()
                    );
                }
                Ok(())
            }
        })
        .await
    }

    /// Kills the apiserver (SIGKILL), waits `down_for`, and starts it again with the same
    /// flags, port and etcd (so with every object), waiting until it is ready. Clients
    /// see refused connections, then the same server again.
    pub async fn restart_apiserver(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.apiserver.kill();
        tokio::time::sleep(down_for).await;
        self.apiserver_start.restarts += 1;
        self.apiserver = self.apiserver_start.spawn()?;
        let client = self.client.clone();
        self.apiserver
            .wait_ready(self.apiserver_start.port, APISERVER_READY, || {
                let client = client.clone();
                async move {
                    let request = http::Request::get("/readyz").body(Vec::new())?;
                    client.request_text(request).await?;
                    Ok(())
                }
            })
            .await
    }

    /// A client acting as the admin (group `system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig file for the admin, with the CA embedded; a child process can use it
    /// through `KUBECONFIG`. It lives as long as this control plane.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver's base URL, e.g. `https://127.0.0.1:43121`.
    pub fn server_url(&self) -> String {
        self.server_url.clone()
    }

    /// The PEM certificate of the CA that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The process ids of kube-apiserver and etcd.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.apiserver.pid(), self.etcd.pid()]
    }

    /// Creates the namespace `name`.
    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// Writes a kubeconfig that authenticates with `token` (for example a ServiceAccount
    /// token from a TokenRequest) and returns its path, which lives as long as this
    /// control plane.
    pub fn kubeconfig_for_token(&self, token: &str) -> anyhow::Result<PathBuf> {
        let n = self.kubeconfigs_written.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("kubeconfig-token-{n}"));
        write_kubeconfig(
            &path,
            &self.server_url,
            &self.ca_pem,
            &format!("token-{n}"),
            token,
        )?;
        Ok(path)
    }

    /// Writes a kubeconfig that acts as the ServiceAccount `namespace/name`, which must
    /// exist, with a token from a TokenRequest valid for an hour ([`kubeconfig_for_token`]).
    ///
    /// [`kubeconfig_for_token`]: ControlPlane::kubeconfig_for_token
    pub async fn kubeconfig_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let token = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for the ServiceAccount {namespace}/{name}"))?
            .status
            .and_then(|status| status.token)
            .unwrap_or_default();
        anyhow::ensure!(
            !token.is_empty(),
            "the TokenRequest for {namespace}/{name} returned no token"
        );
        self.kubeconfig_for_token(&token)
    }
}

/// What it takes to start the apiserver (again).
struct ApiserverStart {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    port: u16,
    restarts: usize,
}

impl ApiserverStart {
    fn spawn(&self) -> anyhow::Result<OwnedProcess> {
        let log = if self.restarts == 0 {
            self.log.clone()
        } else {
            self.log.with_extension(format!("{}.log", self.restarts))
        };
        OwnedProcess::spawn("kube-apiserver", &self.program, &self.args, NO_ENV, log)
    }
}

async fn start_etcd(testbed: &Path, dir: &Path) -> anyhow::Result<(OwnedProcess, String)> {
    let client_port = free_port()?;
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{}", free_port()?);
    let files = dir.join("etcd");
    fs::create_dir(&files)?;
    let args = [
        "--name=weir".to_owned(),
        format!("--data-dir={}", files.join("data").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=weir={peer_url}"),
        // The data is thrown away after the test.
        "--unsafe-no-fsync=true".to_owned(),
        "--log-level=warn".to_owned(),
    ];
    let mut etcd = OwnedProcess::spawn(
        "etcd",
        &testbed.join("bin/etcd"),
        &args,
        NO_ENV,
        files.join("etcd.log"),
    )?;
    let http = reqwest::Client::new();
    let health = format!("{client_url}/health");
    etcd.wait_ready(client_port, ETCD_READY, || {
        let request = http.get(&health);
        async move {
            let body = request.send().await?.error_for_status()?.text().await?;
            anyhow::ensure!(body.contains(r#""health":"true""#), "etcd reports {body}");
            Ok(())
        }
    })
    .await?;
    Ok((etcd, client_url))
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// The CRDs under `<testbed>/crds/`, parsed once per test process.
fn crd_documents(testbed: &Path) -> anyhow::Result<&'static [DynamicObject]> {
    static CRDS: OnceLock<Result<Vec<DynamicObject>, String>> = OnceLock::new();
    CRDS.get_or_init(|| {
        read_crds(&testbed.join("crds"), &["istio", "gateway-api"]).map_err(|e| format!("{e:#}"))
    })
    .as_deref()
    .map_err(|e| anyhow::anyhow!("reading the test bed's CRDs: {e}"))
}

fn read_crds(dir: &Path, sources: &[&str]) -> anyhow::Result<Vec<DynamicObject>> {
    let mut crds = Vec::new();
    for source in sources {
        let mut files: Vec<PathBuf> = fs::read_dir(dir.join(source))
            .with_context(|| format!("listing {}: run `make testbed`", dir.join(source).display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            let text =
                fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_json::Value::deserialize(document)
                    .with_context(|| format!("parsing {}", file.display()))?;
                if value.get("kind").and_then(|kind| kind.as_str())
                    == Some("CustomResourceDefinition")
                {
                    crds.push(
                        serde_json::from_value(value)
                            .with_context(|| format!("parsing {}", file.display()))?,
                    );
                }
            }
        }
    }
    anyhow::ensure!(
        !crds.is_empty(),
        "no CRDs under {}: run `make testbed`",
        dir.display()
    );
    Ok(crds)
}

/// A kubeconfig with one cluster (CA embedded), one token user and one context.
fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> anyhow::Result<()> {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "weir-testbed", "cluster": { "server": server_url, "certificate-authority-data": ca_data } }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{ "name": user, "context": { "cluster": "weir-testbed", "user": user } }],
        "current-context": user,
    });
    fs::write(path, serde_yaml::to_string(&kubeconfig)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// A client configured from `path` exactly as a child process using it would be.
async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn random_token() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The certificates and keys of one control plane, all in PEM.
struct Pki {
    ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    service_account_key_pem: String,
    service_account_public_key_pem: String,
}

impl Pki {
    fn generate() -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "weir test bed CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert_pem = serving.signed_by(&serving_key, &issuer)?.pem();

        let service_account_key = KeyPair::generate()?;
        Ok(Pki {
            ca_pem,
            serving_cert_pem,
            serving_key_pem: serving_key.serialize_pem(),
            service_account_key_pem: service_account_key.serialize_pem(),
            service_account_public_key_pem: service_account_key.public_key_pem(),
        })
    }
}
