//! A process owned by a test: started with a parent-death signal, logging to a file,
//! killed and reaped on drop.

use std::ffi::OsStr;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;

/// How much of a log an error quotes.
const LOG_TAIL_BYTES: u64 = 4096;

/// What a server logs when its port was taken between [`crate::free_port`] and its bind.
const PORT_COLLISION: &str = "address already in use";

/// For [`OwnedProcess::spawn`] when the child only inherits this process's environment.
pub(crate) const NO_ENV: &[(&str, &str)] = &[];

/// A child process that lives no longer than its owner: dropping this kills (SIGKILL) and
/// reaps it, and the kernel kills it too if the test process dies first.
pub struct OwnedProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl OwnedProcess {
    /// Starts `program` with `args` and, on top of this process's environment, `env`; its
    /// stdout and stderr go to the file `log`. `name` labels it in errors.
    pub fn spawn<K, V>(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(K, V)],
        log: PathBuf,
    ) -> anyhow::Result<Self>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, getppid) without allocating.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the death signal was armed.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = spawn_from_lasting_thread(command)
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs and reaps the process now (dropping it does the same).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until this process listens on `port` and `probe` succeeds, failing at once
    /// if the process exits and after `deadline` otherwise; both errors quote the end of
    /// the log.
    ///
    /// Checking who listens keeps a probe from being answered by another test's server
    /// that took the port first.
    pub(crate) async fn wait_ready<F, Fut>(
        &mut self,
        port: u16,
        deadline: Duration,
        mut probe: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before it was ready; {}",
                    self.name,
                    self.log_tail()
                );
            }
            let last = if !self.listens_on(port)? {
                format!("not listening on port {port} yet")
            } else {
                match tokio::time::timeout_at(give_up, probe()).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(error)) => format!("{error:#}"),
                    Err(_elapsed) => "the probe hung".to_owned(),
                }
            };
            if tokio::time::Instant::now() >= give_up {
                anyhow::bail!(
                    "{} not ready after {deadline:?} (last probe: {last}); {}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
    }

    /// Whether this process holds the listening socket of loopback TCP `port`.
    fn listens_on(&self, port: u16) -> anyhow::Result<bool> {
        let Some(inode) = listening_socket_inode(port)? else {
            return Ok(false);
        };
        let socket = format!("socket:[{inode}]");
        let fds = match std::fs::read_dir(format!("/proc/{}/fd", self.pid())) {
            Ok(fds) => fds,
            // It exited; the next `try_wait` reports it.
            Err(_) => return Ok(false),
        };
        Ok(fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str())
        }))
    }

    /// The last few kilobytes of the process's log, labelled with its path.
    fn log_tail(&self) -> String {
        let tail = read_tail(&self.log).unwrap_or_else(|e| format!("<unreadable: {e}>"));
        format!("end of {}:\n{tail}", self.log.display())
    }
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        // Test data is thrown away, so there is nothing to shut down gracefully for;
        // waiting reaps the child so no zombie keeps its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a failed start was caused by another process taking one of its ports.
pub(crate) fn is_port_collision(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains(PORT_COLLISION)
}

/// The inode of the IPv4 socket listening on `port`, from `/proc/net/tcp`.
fn listening_socket_inode(port: u16) -> anyhow::Result<Option<String>> {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let wanted = format!(":{port:04X}");
    Ok(table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(1)?.ends_with(&wanted) && *fields.get(3)? == LISTEN;
        listening.then(|| fields.get(9).map(|inode| (*inode).to_owned()))?
    }))
}

fn read_tail(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Spawns `command` from a thread that lives as long as the process.
///
/// The kernel sends the parent-death signal when the *thread* that forked the child
/// exits, not the process; a test thread or a tokio blocking thread can end while the
/// server is still in use, so all children are forked from one thread that never ends.
fn spawn_from_lasting_thread(command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("weir-testbed-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the test bed's process spawner thread");
        requests
    });
    let (reply, spawned) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    spawned
        .recv()
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?
}
