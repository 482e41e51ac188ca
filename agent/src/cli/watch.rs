//! `weir watch <service>`: follows a rollout until it ends, with a bar of the canary
//! weight on a terminal and plain lines otherwise, so that a pipeline can wait on it.
//!
//! Exit status: 0 promoted, 1 aborted (or abandoned), 2 timed out, 3 could not watch.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;

use super::agent::DefaultArgs;
use super::cluster::{ClusterArgs, Error};
use super::view::{self, ServiceView};
use crate::plan::{Phase, Status};

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
    /// How often to read the Service's status.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Print plain lines even on a terminal (they are always plain when stdout is not one).
    #[arg(long)]
    pub plain: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(
        flatten,
        next_help_heading = "The agent's defaults (as its --default-* flags)"
    )]
    pub defaults: DefaultArgs,
}

/// How a watched rollout ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Promoted {
        version: String,
    },
    Aborted {
        version: String,
        message: String,
    },
    /// The rollout stopped without promotion or abort (its Deployment was deleted).
    Abandoned {
        version: String,
        message: String,
    },
}

impl Ended {
    pub fn exit_code(&self) -> u8 {
        match self {
            Ended::Promoted { .. } => 0,
            Ended::Aborted { .. } | Ended::Abandoned { .. } => 1,
        }
    }
}

/// Follows successive reads of a status to the end of one rollout. Pure.
///
/// Reads are a second or so apart, and the agent may promote a version and start the
/// next rollout between two of them, so an outcome is recognised from what the status
/// remembers (the stable version, the aborted versions) as well as from its phase.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The version asked for with `--version`.
    target: Option<String>,
    /// The rollout being followed: its canary and that canary's pod template.
    following: Option<(String, Option<String>)>,
    /// What the first read showed, so that a rollout that starts and ends between two
    /// reads is not missed.
    baseline: Option<Baseline>,
}

/// The stable version, and the aborted canary with when it was aborted, at the first read.
type Baseline = (Option<String>, Option<(String, Timestamp)>);

impl Tracker {
    pub fn new(target: Option<String>) -> Tracker {
        Tracker {
            following: target.clone().map(|t| (t, None)),
            target,
            baseline: None,
        }
    }

    /// The canary being followed, if a rollout has started.
    pub fn following(&self) -> Option<&str> {
        self.following.as_ref().map(|(version, _)| version.as_str())
    }

    /// Takes one read of the status; `Some` once the followed rollout has ended.
    pub fn observe(&mut self, status: &Status) -> Option<Ended> {
        let in_rollout = matches!(
            status.phase,
            Phase::Progressing | Phase::Paused | Phase::Promoting
        );
        let baseline = self.baseline.get_or_insert_with(|| {
            let last_abort = (status.phase == Phase::Aborted)
                .then(|| {
                    status
                        .canary
                        .clone()
                        .map(|c| (c, status.last_transition_at))
                })
                .flatten();
            (status.stable.clone(), last_abort)
        });
        if let Some((version, template)) = &mut self.following {
            if in_rollout && status.canary.as_ref() == Some(version) {
                *template = status.canary_template.clone().or(template.take());
                return None;
            }
            if status.stable.as_ref() == Some(version) && status.phase != Phase::Promoting {
                return Some(Ended::Promoted {
                    version: version.clone(),
                });
            }
            let aborted_now =
                status.phase == Phase::Aborted && status.canary.as_ref() == Some(version);
            let remembered = status.failed.iter().any(|f| {
                &f.version == version && template.as_ref().is_some_and(|t| &f.template == t)
            });
            if aborted_now || remembered {
                let message = match (&status.canary, status.phase) {
                    _ if aborted_now => status.message.clone(),
                    (Some(next), Phase::Progressing | Phase::Paused | Phase::Promoting) => {
                        format!(
                            "{version} was aborted; the agent has since started releasing {next}"
                        )
                    }
                    _ => format!("{version} was aborted"),
                };
                return Some(Ended::Aborted {
                    version: version.clone(),
                    message,
                });
            }
            if self.target.is_some() {
                return None;
            }
        }
        if in_rollout {
            // A newer version may supersede the one followed: follow it instead.
            self.following = status
                .canary
                .clone()
                .map(|canary| (canary, status.canary_template.clone()));
            return None;
        }
        match (&self.following, status.phase) {
            (Some((version, _)), Phase::Idle) => Some(Ended::Abandoned {
                version: version.clone(),
                message: status.message.clone(),
            }),
            (Some((version, _)), Phase::Aborted) => Some(Ended::Abandoned {
                version: version.clone(),
                message: status.message.clone(),
            }),
            // Waiting for a rollout: one that came and went between two reads counts.
            (None, Phase::Idle) if status.stable != baseline.0 => Some(Ended::Promoted {
                version: status.stable.clone().unwrap_or_default(),
            }),
            (None, Phase::Aborted) => {
                let this_abort = status
                    .canary
                    .clone()
                    .map(|c| (c, status.last_transition_at));
                (this_abort != baseline.1).then(|| Ended::Aborted {
                    version: status.canary.clone().unwrap_or_default(),
                    message: status.message.clone(),
                })
            }
            _ => None,
        }
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
        let defaults = self.defaults.parse()?;
        let cluster = self.cluster.or(outer).connect().await?;
        // The first read fails for every wrong use: no such Service, not opted in, no
        // access, no cluster.
        let mut service = cluster.managed_service(&self.service).await?;
        let started = Instant::now();
        let mut tracker = Tracker::new(self.version.clone());
        let mut display = Display::new(self.plain, &self.service);
        let mut last_error: Option<String> = None;
        loop {
            let view = ServiceView::new(&service, &defaults);
            if let Some(status) = view.status()
                && let Some(ended) = tracker.observe(status)
            {
                display.show(&view, tracker.following(), started);
                display.finish(&summary(&self.service, &ended, started.elapsed()));
                return Ok(ExitCode::from(ended.exit_code()));
            }
            display.show(&view, tracker.following(), started);
            if started.elapsed() + self.interval > self.timeout {
                display.finish(&format!(
                    "{}: gave up after {} (--timeout): {}",
                    self.service,
                    view::duration(self.timeout),
                    progress(&view, tracker.following())
                ));
                return Ok(ExitCode::from(2));
            }
            tokio::time::sleep(self.interval).await;
            loop {
                match cluster.managed_service(&self.service).await {
                    Ok(read) => {
                        service = read;
                        last_error = None;
                        break;
                    }
                    // A blip of the API server does not end the watch; the timeout does.
                    Err(e @ (Error::Unreachable { .. } | Error::Api { .. })) => {
                        let text = e.to_string();
                        if last_error.as_ref() != Some(&text) {
                            eprintln!("{}  {text} (retrying)", elapsed(started));
                            last_error = Some(text);
                        }
                        if started.elapsed() + self.interval > self.timeout {
                            return Err(e.into());
                        }
                        tokio::time::sleep(self.interval).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

fn summary(service: &str, ended: &Ended, took: Duration) -> String {
    let took = view::duration(took);
    match ended {
        Ended::Promoted { version } => {
            format!(
                "{service}: {version} promoted (watched for {took}); it is the stable version now"
            )
        }
        Ended::Aborted { version, message } => {
            format!("{service}: {version} aborted (watched for {took}): {message}")
        }
        Ended::Abandoned { version, message } => {
            format!(
                "{service}: the rollout of {version} stopped without a promotion (watched for {took}): {message}"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::FailedVersion;

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

    #[test]
    fn follows_a_rollout_that_starts_after_the_watch_to_its_promotion() {
        let mut tracker = Tracker::new(None);
        assert_eq!(tracker.observe(&status(Phase::Idle, "v1", None, 0)), None);
        assert_eq!(tracker.following(), None);
        assert_eq!(
            tracker.observe(&status(Phase::Progressing, "v1", Some("v2"), 1)),
            None
        );
        assert_eq!(tracker.following(), Some("v2"));
        assert_eq!(
            tracker.observe(&status(Phase::Promoting, "v1", Some("v2"), 2)),
            None
        );
        let ended = tracker
            .observe(&status(Phase::Idle, "v2", None, 3))
            .unwrap();
        assert_eq!(
            ended,
            Ended::Promoted {
                version: "v2".into()
            }
        );
        assert_eq!(ended.exit_code(), 0);
    }

    #[test]
    fn an_old_abort_is_not_the_outcome_but_a_new_one_is() {
        let mut tracker = Tracker::new(None);
        assert_eq!(
            tracker.observe(&status(Phase::Aborted, "v1", Some("v2"), 0)),
            None
        );
        assert_eq!(
            tracker.observe(&status(Phase::Aborted, "v1", Some("v2"), 0)),
            None
        );
        // v3 started and was aborted between two reads.
        let ended = tracker
            .observe(&status(Phase::Aborted, "v1", Some("v3"), 9))
            .unwrap();
        assert_eq!(ended.exit_code(), 1);
        assert!(matches!(ended, Ended::Aborted { version, .. } if version == "v3"));
    }

    #[test]
    fn a_promotion_between_two_reads_is_seen_from_the_stable_version() {
        let mut tracker = Tracker::new(None);
        assert_eq!(tracker.observe(&status(Phase::Idle, "v1", None, 0)), None);
        let ended = tracker
            .observe(&status(Phase::Idle, "v2", None, 5))
            .unwrap();
        assert_eq!(
            ended,
            Ended::Promoted {
                version: "v2".into()
            }
        );
    }

    #[test]
    fn a_superseding_version_is_followed_and_a_vanished_canary_is_abandoned() {
        let mut tracker = Tracker::new(None);
        tracker.observe(&status(Phase::Progressing, "v1", Some("v2"), 0));
        tracker.observe(&status(Phase::Progressing, "v1", Some("v3"), 1));
        assert_eq!(tracker.following(), Some("v3"));
        let ended = tracker
            .observe(&status(Phase::Idle, "v1", None, 2))
            .unwrap();
        assert!(
            matches!(&ended, Ended::Abandoned { version, .. } if version == "v3"),
            "{ended:?}"
        );
        assert_eq!(ended.exit_code(), 1);
    }

    #[test]
    fn a_named_version_ends_on_its_own_outcome_even_if_already_reached() {
        let mut tracker = Tracker::new(Some("v2".into()));
        let ended = tracker
            .observe(&status(Phase::Idle, "v2", None, 0))
            .unwrap();
        assert_eq!(
            ended,
            Ended::Promoted {
                version: "v2".into()
            }
        );

        let mut tracker = Tracker::new(Some("v3".into()));
        assert_eq!(
            tracker.observe(&status(Phase::Aborted, "v1", Some("v2"), 0)),
            None
        );
        assert_eq!(
            tracker.observe(&status(Phase::Progressing, "v1", Some("v3"), 1)),
            None
        );
        assert!(
            tracker
                .observe(&status(Phase::Aborted, "v1", Some("v3"), 2))
                .is_some()
        );
    }

    #[test]
    fn a_promotion_is_seen_even_when_the_next_rollout_already_started() {
        let mut tracker = Tracker::new(None);
        tracker.observe(&status(Phase::Progressing, "v1", Some("v2"), 0));
        // Promoted, and another version released, between two reads.
        let ended = tracker
            .observe(&status(Phase::Progressing, "v2", Some("v4"), 5))
            .unwrap();
        assert_eq!(
            ended,
            Ended::Promoted {
                version: "v2".into()
            }
        );
    }

    #[test]
    fn an_abort_is_seen_from_the_failed_versions_when_the_next_rollout_already_started() {
        let mut tracker = Tracker::new(None);
        let mut progressing = status(Phase::Progressing, "v1", Some("v3"), 0);
        progressing.canary_template = Some("t3".into());
        tracker.observe(&progressing);
        let mut next = status(Phase::Progressing, "v1", Some("v4"), 5);
        next.failed.push(FailedVersion {
            version: "v3".into(),
            template: "t3".into(),
        });
        let ended = tracker.observe(&next).unwrap();
        assert!(
            matches!(&ended, Ended::Aborted { version, .. } if version == "v3"),
            "{ended:?}"
        );
    }

    #[test]
    fn an_earlier_failed_build_of_the_same_version_is_not_this_rollouts_abort() {
        let mut tracker = Tracker::new(None);
        let mut rebuilt = status(Phase::Progressing, "v1", Some("v3"), 0);
        rebuilt.canary_template = Some("fixed".into());
        rebuilt.failed.push(FailedVersion {
            version: "v3".into(),
            template: "broken".into(),
        });
        assert_eq!(tracker.observe(&rebuilt), None);
        assert_eq!(tracker.observe(&rebuilt), None);
    }

    #[test]
    fn misconfiguration_keeps_waiting() {
        let mut tracker = Tracker::new(None);
        tracker.observe(&status(Phase::Progressing, "v1", Some("v2"), 0));
        assert_eq!(
            tracker.observe(&status(Phase::Misconfigured, "v1", Some("v2"), 1)),
            None
        );
        assert_eq!(tracker.following(), Some("v2"));
    }
}
