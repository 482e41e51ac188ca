//! `weir promote|abort|pause|resume|retry <service>`: the control annotations, each
//! naming the version it is meant for (so that a stale one is harmless), written only
//! when they make sense in the Service's current state.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;

use super::cluster::{Cluster, ClusterArgs, Error};
use super::view::ServiceView;
use crate::plan::{Phase, Status};
use crate::spec::{self, keys};

/// How often a write that lost a race with another change is decided again.
const ATTEMPTS: usize = 3;

/// What a person asks of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Promote,
    Abort,
    Pause,
    Resume,
    Retry,
}

/// Flags of the control commands.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The Service whose rollout to steer.
    pub service: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The annotations to write (`None` removes one) and what the agent will do about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub annotations: BTreeMap<&'static str, Option<String>>,
    pub outcome: String,
}

impl ControlArgs {
    pub async fn run(self, control: Control, outer: &ClusterArgs) -> anyhow::Result<ExitCode> {
        let cluster = self.cluster.or(outer).connect().await?;
        let decision = steer(&cluster, control, &self.service, None).await?;
        for (key, value) in &decision.annotations {
            match value {
                Some(value) => println!("{key}={value} written on Service {}.", self.service),
                None => println!("{key} removed from Service {}.", self.service),
            }
        }
        println!("{}", decision.outcome);
        Ok(ExitCode::SUCCESS)
    }
}

impl Control {
    /// Every control, in the order people reach for them.
    pub const ALL: [Control; 5] = [
        Control::Promote,
        Control::Abort,
        Control::Pause,
        Control::Resume,
        Control::Retry,
    ];

    /// The command's name: `promote`, `abort`, ….
    pub fn name(self) -> &'static str {
        match self {
            Control::Promote => "promote",
            Control::Abort => "abort",
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Retry => "retry",
        }
    }

    /// The control named `name`.
    pub fn from_name(name: &str) -> Option<Control> {
        Control::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Reads `service`, decides `control` for its current state ([`decide`]) and writes the
/// decision, deciding again if the Service changed under the write. With `seen`, the
/// version the person was shown: refused if the decision is about another one (the
/// rollout moved on since), so that a control never lands on a version nobody chose.
/// Shared by the control commands and the dashboard's buttons.
pub async fn steer(
    cluster: &Cluster,
    control: Control,
    service: &str,
    seen: Option<&str>,
) -> Result<Decision, Error> {
    for _ in 0..ATTEMPTS {
        let current = cluster.managed_service(service).await?;
        let view = ServiceView::new(&current);
        let decision = decide(control, &view).map_err(Error::Refused)?;
        if let Some(seen) = seen
            && let Some(named) = decision.version(&view)
            && named != seen
        {
            return Err(Error::Refused(format!(
                "you were shown {seen}, but this would {} {named} of {service}: look again",
                control.name()
            )));
        }
        if cluster
            .annotate(service, &view.resource_version, &decision.annotations)
            .await?
        {
            return Ok(decision);
        }
    }
    Err(Error::Refused(format!(
        "Service {service} kept changing while this command wrote to it; run it again"
    )))
}

impl Decision {
    /// The version this decision is about: the one a promote, abort or retry names, else
    /// the canary whose rollout a pause or resume holds or continues (none between
    /// rollouts: the pause is then for the next one).
    pub fn version<'a>(&'a self, view: &'a ServiceView) -> Option<&'a str> {
        self.annotations
            .iter()
            .find(|(key, _)| **key != keys::PAUSE)
            .and_then(|(_, value)| value.as_deref())
            .or_else(|| {
                view.status()
                    .filter(|s| s.in_rollout())
                    .and_then(|s| s.canary.as_deref())
            })
    }
}

/// Whether `control` makes sense for `view` now, and if so what to write. Pure.
pub fn decide(control: Control, view: &ServiceView) -> Result<Decision, String> {
    let name = &view.name;
    let paused = view
        .annotations
        .get(keys::PAUSE)
        .is_some_and(|v| spec::parse_bool(v) == Ok(true));
    let status = match &view.status {
        Ok(Some(status)) => status,
        Ok(None) if matches!(control, Control::Pause | Control::Resume) => {
            return toggle_pause(control, view, paused, None);
        }
        Ok(None) => {
            return Err(format!(
                "{name} has no status yet: no weir agent has reconciled it (is one running for this namespace?)"
            ));
        }
        Err(problem) => return Err(format!("{name}'s {problem}")),
    };
    if status.phase == Phase::Misconfigured && matches!(control, Control::Promote | Control::Abort)
    {
        return Err(format!(
            "{name} is misconfigured ({}): fix that first; `weir explain {name}` says how",
            status.message
        ));
    }
    let at = |status: &Status| format!("canary weight {}%, step {}", status.weight, view.step());
    let write = |key: &'static str, version: &str, outcome: String| Decision {
        annotations: BTreeMap::from([(key, Some(version.to_owned()))]),
        outcome,
    };
    let canary = status.canary.as_deref();
    match (control, status.phase, canary) {
        (Control::Promote, Phase::Progressing | Phase::Paused, Some(v)) => Ok(write(
            keys::PROMOTE,
            v,
            format!(
                "The agent promotes {v} now, skipping the checks and steps left (at {}): it points the stable subset at {v} and sends it all traffic.",
                at(status)
            ),
        )),
        (Control::Promote, Phase::Aborted, Some(v)) => Ok(write(
            keys::PROMOTE,
            v,
            format!(
                "The agent promotes {v} although its rollout was aborted ({}): it points the stable subset at {v} and sends it all traffic.",
                status.message
            ),
        )),
        (Control::Promote, Phase::Promoting, Some(v)) => {
            Err(format!("{v} is already being promoted"))
        }
        (Control::Promote, ..) => Err(format!("nothing to promote: {}", at_rest(status))),

        (Control::Abort, Phase::Progressing | Phase::Paused, Some(v)) => Ok(write(
            keys::ABORT,
            v,
            format!(
                "The agent aborts {v} now: canary weight 0 at once (from {}%); {v} is not released again until its pod template changes or `weir retry {name}`.",
                status.weight
            ),
        )),
        (Control::Abort, Phase::Promoting, Some(v)) => Err(format!(
            "too late to abort: {v} passed every step and is being promoted"
        )),
        (Control::Abort, Phase::Aborted, Some(v)) => {
            Err(format!("nothing to abort: {v} was already aborted"))
        }
        (Control::Abort, ..) => Err(format!("nothing to abort: {}", at_rest(status))),

        (Control::Pause | Control::Resume, ..) => toggle_pause(control, view, paused, Some(status)),

        (Control::Retry, ..) => {
            let aborted = canary.filter(|_| status.phase == Phase::Aborted);
            let version = aborted.or_else(|| status.failed.last().map(|f| f.version.as_str()));
            match version {
                Some(v) if aborted.is_some() => Ok(write(
                    keys::RETRY,
                    v,
                    match view.steps.first() {
                        Some(first) => format!(
                            "The agent forgets that {v} failed and releases it again from step 1/{} (canary weight {first}%).",
                            view.steps.len(),
                        ),
                        None => format!(
                            "The agent forgets that {v} failed and releases it again from its first step."
                        ),
                    },
                )),
                Some(v) => Ok(write(
                    keys::RETRY,
                    v,
                    format!(
                        "The agent forgets that {v} failed: it is released again when it is the newest Available version."
                    ),
                )),
                None => Err(format!(
                    "nothing to retry: no aborted version of {name} is remembered"
                )),
            }
        }
    }
}

fn toggle_pause(
    control: Control,
    view: &ServiceView,
    paused: bool,
    status: Option<&Status>,
) -> Result<Decision, String> {
    let name = &view.name;
    let phase = status.map(|s| s.phase);
    let rollout = status.and_then(|s| s.canary.clone().map(|c| (c, s.weight)));
    let outcome = match (control, phase, rollout) {
        (Control::Pause, _, _) if paused => {
            return Err(format!("{name} is already paused ({}=true)", keys::PAUSE));
        }
        (Control::Resume, _, _) if !paused => {
            return Err(format!("{name} is not paused ({} is not set)", keys::PAUSE));
        }
        (Control::Pause, Some(Phase::Promoting), Some((v, _))) => {
            return Err(format!(
                "{v} is being promoted; a promotion cannot be paused"
            ));
        }
        (Control::Pause, Some(Phase::Progressing), Some((v, weight))) => format!(
            "The agent pauses the rollout of {v} at canary weight {weight}% (step {}): no checks and no steps until `weir resume {name}`; traffic stays as it is.",
            view.step()
        ),
        (Control::Pause, ..) => format!(
            "No rollout is progressing: the next one starts paused at its first step, until `weir resume {name}`."
        ),
        (Control::Resume, Some(Phase::Paused), Some((v, weight))) => format!(
            "The agent resumes the rollout of {v} at canary weight {weight}% (step {}): checks and steps start again.",
            view.step()
        ),
        (Control::Resume, ..) => "The next rollout starts without pausing.".to_owned(),
        _ => unreachable!("only pause and resume toggle the pause"),
    };
    let value = (control == Control::Pause).then(|| "true".to_owned());
    Ok(Decision {
        annotations: BTreeMap::from([(keys::PAUSE, value)]),
        outcome,
    })
}

/// A Service with no rollout to act on, for refusals.
fn at_rest(status: &Status) -> String {
    let stable = status.stable.as_deref().unwrap_or("no version yet");
    match status.phase {
        Phase::Aborted => format!(
            "no rollout is in progress ({} was aborted; stable {stable})",
            status.canary.as_deref().unwrap_or("the last canary")
        ),
        phase => format!("no rollout is in progress ({phase:?}, stable {stable})"),
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::plan::FailedVersion;

    fn view(status: Option<Status>, annotations: &[(&str, &str)]) -> ServiceView {
        ServiceView {
            name: "checkout".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: Ok(status),
            steps: vec![10, 25, 50],
            resource_version: "7".into(),
        }
    }

    fn status(phase: Phase, canary: Option<&str>, step: Option<usize>, weight: u8) -> Status {
        Status {
            phase,
            stable: Some("v1".into()),
            canary: canary.map(String::from),
            step,
            weight,
            ..Status::new(Timestamp::UNIX_EPOCH)
        }
    }

    fn written(decision: &Decision) -> Vec<(&'static str, Option<&str>)> {
        decision
            .annotations
            .iter()
            .map(|(k, v)| (*k, v.as_deref()))
            .collect()
    }

    #[test]
    fn promote_and_abort_name_the_current_canary() {
        let progressing = view(
            Some(status(Phase::Progressing, Some("v2"), Some(1), 25)),
            &[],
        );
        let promote = decide(Control::Promote, &progressing).unwrap();
        assert_eq!(written(&promote), [(keys::PROMOTE, Some("v2"))]);
        assert!(
            promote.outcome.contains("at canary weight 25%, step 2/3"),
            "{}",
            promote.outcome
        );
        let abort = decide(Control::Abort, &progressing).unwrap();
        assert_eq!(written(&abort), [(keys::ABORT, Some("v2"))]);
        assert!(
            abort.outcome.contains("canary weight 0 at once (from 25%)"),
            "{}",
            abort.outcome
        );

        let paused = view(
            Some(status(Phase::Paused, Some("v2"), Some(0), 10)),
            &[(keys::PAUSE, "true")],
        );
        assert_eq!(
            written(&decide(Control::Promote, &paused).unwrap()),
            [(keys::PROMOTE, Some("v2"))]
        );
        assert_eq!(
            written(&decide(Control::Abort, &paused).unwrap()),
            [(keys::ABORT, Some("v2"))]
        );
    }

    #[test]
    fn nothing_in_progress_refuses_promote_and_abort() {
        let idle = view(Some(status(Phase::Idle, None, None, 0)), &[]);
        assert_eq!(
            decide(Control::Promote, &idle).unwrap_err(),
            "nothing to promote: no rollout is in progress (Idle, stable v1)"
        );
        assert_eq!(
            decide(Control::Abort, &idle).unwrap_err(),
            "nothing to abort: no rollout is in progress (Idle, stable v1)"
        );
        let promoting = view(Some(status(Phase::Promoting, Some("v2"), Some(2), 50)), &[]);
        assert!(
            decide(Control::Abort, &promoting)
                .unwrap_err()
                .starts_with("too late to abort")
        );
        assert_eq!(
            decide(Control::Promote, &promoting).unwrap_err(),
            "v2 is already being promoted"
        );
        let aborted = view(Some(status(Phase::Aborted, Some("v3"), None, 0)), &[]);
        assert_eq!(
            decide(Control::Abort, &aborted).unwrap_err(),
            "nothing to abort: v3 was already aborted"
        );
        let misconfigured = Status {
            message: "weir.dev/steps: bad".into(),
            ..status(Phase::Misconfigured, None, None, 0)
        };
        let err = decide(Control::Promote, &view(Some(misconfigured), &[])).unwrap_err();
        assert!(
            err.contains("misconfigured (weir.dev/steps: bad)")
                && err.contains("weir explain checkout"),
            "{err}"
        );
        let pending = decide(Control::Promote, &view(None, &[])).unwrap_err();
        assert!(pending.contains("no status yet"), "{pending}");
    }

    #[test]
    fn an_aborted_canary_may_be_promoted_or_retried() {
        let mut aborted = status(Phase::Aborted, Some("v3"), None, 0);
        aborted.failed.push(FailedVersion {
            version: "v3".into(),
            template: "abc".into(),
        });
        let v = view(Some(aborted), &[]);
        assert_eq!(
            written(&decide(Control::Promote, &v).unwrap()),
            [(keys::PROMOTE, Some("v3"))]
        );
        let retry = decide(Control::Retry, &v).unwrap();
        assert_eq!(written(&retry), [(keys::RETRY, Some("v3"))]);
        assert!(
            retry
                .outcome
                .contains("again from step 1/3 (canary weight 10%)"),
            "{}",
            retry.outcome
        );
    }

    #[test]
    fn retry_names_the_last_failed_version_or_refuses() {
        let mut idle = status(Phase::Idle, None, None, 0);
        assert!(
            decide(Control::Retry, &view(Some(idle.clone()), &[]))
                .unwrap_err()
                .starts_with("nothing to retry")
        );
        for version in ["v2", "v3"] {
            idle.failed.push(FailedVersion {
                version: version.into(),
                template: "t".into(),
            });
        }
        let retry = decide(Control::Retry, &view(Some(idle), &[])).unwrap();
        assert_eq!(written(&retry), [(keys::RETRY, Some("v3"))]);
    }

    #[test]
    fn pause_and_resume_toggle_the_annotation_once() {
        let progressing = status(Phase::Progressing, Some("v2"), Some(0), 10);
        let pause = decide(Control::Pause, &view(Some(progressing.clone()), &[])).unwrap();
        assert_eq!(written(&pause), [(keys::PAUSE, Some("true"))]);
        assert!(
            pause.outcome.contains("at canary weight 10% (step 1/3)"),
            "{}",
            pause.outcome
        );
        let already = view(Some(progressing), &[(keys::PAUSE, "true")]);
        assert!(
            decide(Control::Pause, &already)
                .unwrap_err()
                .contains("already paused")
        );

        let paused = view(
            Some(status(Phase::Paused, Some("v2"), Some(0), 10)),
            &[(keys::PAUSE, "true")],
        );
        let resume = decide(Control::Resume, &paused).unwrap();
        assert_eq!(written(&resume), [(keys::PAUSE, None)]);
        let idle = view(Some(status(Phase::Idle, None, None, 0)), &[]);
        assert!(
            decide(Control::Resume, &idle)
                .unwrap_err()
                .contains("is not paused")
        );
        let pause_idle = decide(Control::Pause, &idle).unwrap();
        assert!(
            pause_idle.outcome.contains("next one starts paused"),
            "{}",
            pause_idle.outcome
        );
        let promoting = view(Some(status(Phase::Promoting, Some("v2"), Some(2), 50)), &[]);
        assert!(
            decide(Control::Pause, &promoting)
                .unwrap_err()
                .contains("cannot be paused")
        );
    }
}
