//! `weir watch <service>`: follows a rollout until it ends, with a bar of the canary
//! weight on a terminal and plain lines otherwise, so that a pipeline can wait on it.
//!
//! It watches the one Service (a kube-runtime watcher, which re-lists and resumes with
//! backoff after a dropped connection), and takes a rollout's end from the agent's own
//! record of it in the status ([`Status::ended`]), never from phases seen in passing.
//!
//! Exit status: 0 promoted, 1 aborted (or abandoned), 2 timed out, 3 could not watch.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};

use super::cluster::{ClusterArgs, Error};
use super::view::{self, ServiceView};
use crate::plan::{Ended, Outcome, Status};
use crate::spec::opted_in;

/// How long one watch call lasts, in seconds: less than the CLI's read timeout.
const WATCH_CALL_SECONDS: u32 = 15;

/// Flags of `weir watch`. Its `--version` names a release, not weir's own version.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct WatchArgs {
    /// The Service whose rollout to follow.
    pub service: String,
    /// Give up after this long (exit status 2).
    #[arg(long, default_value = "30m", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Wait for this version's outcome [default: the rollout in progress, else the next
    /// one to start]
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// Print plain lines even on a terminal (they are always plain when stdout is not one).
    #[arg(long)]
    pub plain: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The exit status for how a rollout ended.
pub fn exit_code(ended: &Ended) -> u8 {
    match ended.outcome {
        Outcome::Promoted => 0,
        Outcome::Aborted | Outcome::Abandoned => 1,
    }
}

/// Follows successive revisions of a status to the end of one rollout. Pure.
///
/// The end is the planner's record of it ([`Status::ended`]): it stays in the status
/// after the agent has moved on (to the next rollout, say), so a revision missed by the
/// watch costs nothing.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The version asked for with `--version`.
    target: Option<String>,
    /// The canary being followed, for the display.
    following: Option<String>,
    /// The end the first revision recorded: a rollout that ended before the watch began
    /// is not the one it waits for (unless named).
    baseline: Option<Option<Ended>>,
}

impl Tracker {
    pub fn new(target: Option<String>) -> Tracker {
        Tracker {
            following: target.clone(),
            target,
            baseline: None,
        }
    }

    /// The canary being followed, if a rollout has started.
    pub fn following(&self) -> Option<&str> {
        self.following.as_deref()
    }

    /// Takes one revision of the status; `Some` once the awaited rollout has ended.
    pub fn observe(&mut self, status: &Status) -> Option<Ended> {
        let baseline = self.baseline.get_or_insert_with(|| status.ended.clone());
        let releasing = status.canary.as_ref().filter(|_| status.in_rollout());
        if let Some(canary) = releasing
            && self.target.as_ref().is_none_or(|t| t == canary)
        {
            // A newer version may supersede the one followed: follow it instead.
            self.following = Some(canary.clone());
        }
        let ended = status.ended.as_ref()?;
        let awaited = match &self.target {
            // The named version's own outcome, whenever it came, unless it is being
            // released again now.
            Some(target) => &ended.version == target && releasing != Some(target),
            // The first end recorded since the watch began.
            None => Some(ended) != baseline.as_ref(),
        };
        awaited.then(|| ended.clone())
    }
}

/// The one-line account of where the watched rollout is.
pub fn progress(view: &ServiceView, following: Option<&str>) -> String {
    let Some(status) = view.status() else {
        return format!("{}: {}", view.name, view.phase());
    };
    match following {
        None => format!(
            "{}: waiting for a rollout to start ({:?}, stable {})",
            view.name,
            status.phase,
            status.stable.as_deref().unwrap_or("none")
        ),
        Some(version) => {
            let mut line = format!(
                "{} {version}: {:?}, step {}, canary weight {}%",
                view.name,
                status.phase,
                view.step(),
                status.weight
            );
            if let Some(check) = &status.last_check {
                line.push_str(&format!(
                    " | last check {}",
                    view::verdict_summary(&check.verdict)
                ));
            }
            line
        }
    }
}

/// Where the progress goes: a bar on a terminal, lines elsewhere.
enum Display {
    Bar { bar: ProgressBar, message: String },
    Lines { last: String },
}

impl Display {
    fn new(plain: bool, service: &str) -> Display {
        if plain || !std::io::stdout().is_terminal() {
            return Display::Lines {
                last: String::new(),
            };
        }
        let style = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:40.cyan/blue}] {pos:>3}% canary  {msg}",
        )
        .expect("the template is valid")
        .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stdout())
            .with_style(style);
        bar.set_prefix(service.to_owned());
        Display::Bar {
            bar,
            message: String::new(),
        }
    }

    fn show(&mut self, view: &ServiceView, following: Option<&str>, started: Instant) {
        let line = progress(view, following);
        match self {
            Display::Bar { bar, message } => {
                // The agent's messages scroll above the bar; the bar shows the step.
                let status = view.status();
                let said = status.map(|s| s.message.clone()).unwrap_or_default();
                if *message != said && !said.is_empty() {
                    bar.println(format!("{:>6}  {said}", elapsed(started)));
                    *message = said;
                }
                bar.set_position(status.map_or(0, |s| u64::from(s.weight)));
                bar.set_message(match (following, status) {
                    (Some(_), Some(s)) => format!("{:?}, step {}", s.phase, view.step()),
                    _ => "waiting for a rollout to start".to_owned(),
                });
                if let Some(version) = following {
                    bar.set_prefix(format!("{} {version}", view.name));
                }
            }
            Display::Lines { last } => {
                if *last != line {
                    println!("{:>6}  {line}", elapsed(started));
                    *last = line;
                }
            }
        }
    }

    fn finish(&self, summary: &str) {
        match self {
            Display::Bar { bar, .. } => {
                // The agent's messages stay above; the summary takes the bar's place.
                bar.finish_and_clear();
                println!("{summary}");
            }
            Display::Lines { .. } => println!("{summary}"),
        }
    }
}

fn elapsed(started: Instant) -> String {
    format!("+{}s", started.elapsed().as_secs())
}

impl WatchArgs {
    pub async fn run(self, outer: &ClusterArgs) -> anyhow::Result<ExitCode> {
        let cluster = self.cluster.or(outer).connect().await?;
        // The first read fails for every wrong use: no such Service, not opted in, no
        // access, no cluster.
        let mut service = cluster.managed_service(&self.service).await?;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tracker = Tracker::new(self.version.clone());
        let mut display = Display::new(self.plain, &self.service);
        if ServiceView::new(&service)
            .status()
            .is_some_and(|s| s.settings.is_none())
        {
            eprintln!(
                "note: {}'s status was written by an earlier agent, which does not record how rollouts end; waiting for the agent to record it",
                self.service
            );
        }

        let api: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        // The server ends each watch call before the client's read timeout would (a
        // quiet rollout sends nothing for minutes); the watcher then resumes it.
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", self.service))
            .timeout(WATCH_CALL_SECONDS);
        let mut revisions = std::pin::pin!(watcher(api, config).default_backoff());
        let mut last_error: Option<String> = None;
        // Whether the current (re-)list has shown the Service.
        let mut listed = true;
        loop {
            let view = ServiceView::new(&service);
            if let Some(status) = view.status()
                && let Some(ended) = tracker.observe(status)
            {
                display.show(&view, tracker.following(), started);
                display.finish(&summary(&self.service, &ended, started.elapsed()));
                return Ok(ExitCode::from(exit_code(&ended)));
            }
            display.show(&view, tracker.following(), started);
            let event = match tokio::time::timeout_at(deadline, revisions.next()).await {
                Ok(Some(Ok(event))) => event,
                // A blip of the API server does not end the watch (the watcher backs off
                // and resumes); the timeout does. Being refused does at once.
                Ok(Some(Err(e))) => {
                    let error = watch_error(&cluster, e);
                    if matches!(error, Error::Forbidden { .. } | Error::Unauthorized { .. }) {
                        return Err(error.into());
                    }
                    let text = error.to_string();
                    if last_error.as_ref() != Some(&text) {
                        eprintln!("{}  {text} (retrying)", elapsed(started));
                        last_error = Some(text);
                    }
                    continue;
                }
                Ok(None) => anyhow::bail!("the watch of Service {} ended", self.service),
                Err(_timeout) => {
                    display.finish(&format!(
                        "{}: gave up after {} (--timeout): {}",
                        self.service,
                        view::duration(self.timeout),
                        progress(&view, tracker.following())
                    ));
                    if let Some(error) = last_error {
                        anyhow::bail!("{error}");
                    }
                    return Ok(ExitCode::from(2));
                }
            };
            last_error = None;
            match event {
                watcher::Event::Init => listed = false,
                watcher::Event::InitApply(read) | watcher::Event::Apply(read) => {
                    listed = true;
                    if !opted_in(read.annotations()) {
                        return Err(Error::NotOptedIn {
                            service: self.service.clone(),
                            namespace: cluster.namespace.clone(),
                        }
                        .into());
                    }
                    service = read;
                }
                watcher::Event::InitDone if listed => {}
                watcher::Event::InitDone | watcher::Event::Delete(_) => {
                    return Err(Error::ServiceNotFound {
                        service: self.service.clone(),
                        namespace: cluster.namespace.clone(),
                    }
                    .into());
                }
            }
        }
    }
}

/// A watcher's error, worded as the other commands word the same failure.
fn watch_error(cluster: &super::cluster::Cluster, error: watcher::Error) -> Error {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => cluster.error(e, "watch", "services"),
        other => Error::Api {
            server: cluster.server.clone(),
            message: other.to_string(),
        },
    }
}

fn summary(service: &str, ended: &Ended, took: Duration) -> String {
    let took = view::duration(took);
    let (version, reason) = (&ended.version, &ended.reason);
    match ended.outcome {
        Outcome::Promoted => format!(
            "{service}: {version} promoted (watched for {took}); it is the stable version now"
        ),
        Outcome::Aborted => {
            format!("{service}: {version} aborted (watched for {took}): {reason}")
        }
        Outcome::Abandoned => format!(
            "{service}: the rollout of {version} stopped without a promotion (watched for {took}): {reason}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::plan::Phase;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn status(phase: Phase, stable: &str, canary: Option<&str>, changed: i64) -> Status {
        Status {
            phase,
            stable: Some(stable.into()),
            canary: canary.map(String::from),
            step: matches!(phase, Phase::Progressing | Phase::Paused).then_some(0),
            weight: if phase == Phase::Progressing { 10 } else { 0 },
            message: format!("{phase:?}"),
            ..Status::new(at(changed))
        }
    }

    fn ended(version: &str, outcome: Outcome, second: i64) -> Option<Ended> {
        Some(Ended {
            version: version.into(),
            outcome,
            reason: format!("{outcome:?}"),
            started_at: Some(at(0)),
            at: at(second),
        })
    }

    /// `status` after the planner recorded an end.
    fn after(status: Status, end: Option<Ended>) -> Status {
        Status {
            ended: end,
            ..status
        }
    }

    #[test]
    fn follows_a_rollout_that_starts_after_the_watch_to_its_promotion() {
        let mut tracker = Tracker::new(None);
        let earlier = ended("v1", Outcome::Promoted, -100);
        let idle = after(status(Phase::Idle, "v1", None, 0), earlier.clone());
        assert_eq!(tracker.observe(&idle), None, "an earlier rollout's end");
        assert_eq!(tracker.following(), None);
        let releasing = after(status(Phase::Progressing, "v1", Some("v2"), 1), earlier);
        assert_eq!(tracker.observe(&releasing), None);
        assert_eq!(tracker.following(), Some("v2"));
        let promoted = after(
            status(Phase::Idle, "v2", None, 3),
            ended("v2", Outcome::Promoted, 3),
        );
        let end = tracker.observe(&promoted).unwrap();
        assert_eq!(end.version, "v2");
        assert_eq!(exit_code(&end), 0);
    }

    #[test]
    fn an_end_recorded_before_the_watch_is_not_its_answer_but_a_new_one_is() {
        let mut tracker = Tracker::new(None);
        let old = after(
            status(Phase::Aborted, "v1", Some("v2"), 0),
            ended("v2", Outcome::Aborted, 0),
        );
        assert_eq!(tracker.observe(&old), None);
        assert_eq!(tracker.observe(&old), None);
        // v3 started and was aborted between two revisions the watch saw.
        let new = after(
            status(Phase::Aborted, "v1", Some("v3"), 9),
            ended("v3", Outcome::Aborted, 9),
        );
        let end = tracker.observe(&new).unwrap();
        assert_eq!((end.version.as_str(), exit_code(&end)), ("v3", 1));
    }

    #[test]
    fn an_end_is_seen_even_when_the_next_rollout_already_started() {
        for outcome in [Outcome::Promoted, Outcome::Aborted] {
            let mut tracker = Tracker::new(None);
            tracker.observe(&status(Phase::Progressing, "v1", Some("v2"), 0));
            let next = after(
                status(Phase::Progressing, "v1", Some("v4"), 5),
                ended("v2", outcome, 4),
            );
            let end = tracker.observe(&next).unwrap();
            assert_eq!((end.version.as_str(), end.outcome), ("v2", outcome));
        }
    }

    #[test]
    fn a_superseding_version_is_followed_and_a_vanished_canary_is_abandoned() {
        let mut tracker = Tracker::new(None);
        tracker.observe(&status(Phase::Progressing, "v1", Some("v2"), 0));
        tracker.observe(&status(Phase::Progressing, "v1", Some("v3"), 1));
        assert_eq!(tracker.following(), Some("v3"));
        let gone = after(
            status(Phase::Idle, "v1", None, 2),
            ended("v3", Outcome::Abandoned, 2),
        );
        let end = tracker.observe(&gone).unwrap();
        assert_eq!((end.version.as_str(), exit_code(&end)), ("v3", 1));
    }

    #[test]
    fn a_named_version_ends_on_its_own_outcome_even_if_already_reached() {
        let mut tracker = Tracker::new(Some("v2".into()));
        let promoted = after(
            status(Phase::Idle, "v2", None, 0),
            ended("v2", Outcome::Promoted, 0),
        );
        assert_eq!(tracker.observe(&promoted).unwrap().version, "v2");

        // v3's earlier abort is not the answer while v3 is released again (a retry).
        let mut tracker = Tracker::new(Some("v3".into()));
        let retried = after(
            status(Phase::Progressing, "v1", Some("v3"), 1),
            ended("v3", Outcome::Aborted, 0),
        );
        assert_eq!(tracker.observe(&retried), None);
        // Another version's end is not either.
        let other = after(
            status(Phase::Progressing, "v1", Some("v3"), 1),
            ended("v2", Outcome::Aborted, 1),
        );
        assert_eq!(tracker.observe(&other), None);
        let aborted = after(
            status(Phase::Aborted, "v1", Some("v3"), 2),
            ended("v3", Outcome::Aborted, 2),
        );
        assert_eq!(tracker.observe(&aborted).unwrap().at, at(2));
    }

    #[test]
    fn misconfiguration_and_a_status_without_a_recorded_end_keep_waiting() {
        let mut tracker = Tracker::new(None);
        tracker.observe(&status(Phase::Progressing, "v1", Some("v2"), 0));
        assert_eq!(
            tracker.observe(&status(Phase::Misconfigured, "v1", Some("v2"), 1)),
            None
        );
        assert_eq!(tracker.following(), Some("v2"));
        // An earlier agent's status: its phases alone are not read as an outcome.
        assert_eq!(tracker.observe(&status(Phase::Idle, "v2", None, 2)), None);
    }
}
