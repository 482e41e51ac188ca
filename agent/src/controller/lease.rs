//! Leader election on a `coordination.k8s.io/v1` Lease in the agent's namespace, so that
//! of several replicas only one writes.
//!
//! Every candidate reads the Lease every [`LeaseConfig::renew_every`]. The holder renews
//! it; the others wait until it has not changed for its `leaseDurationSeconds` (measured
//! on their own clock from when they first saw its current version, so that clock skew
//! between nodes does not matter) and then take it over. Every write is a `replace`
//! carrying the `resourceVersion` that was read, so of two candidates racing for an
//! expired Lease exactly one wins.
//!
//! A holder that cannot renew for [`LeaseConfig::renew_deadline`] (two thirds of the
//! duration) gives up leading on its own, a third of the duration before any other
//! candidate may take over: that margin is the time the controller has to stop writing.
//! Every replica keeps its watch caches warm; only reconciles and writes are gated on
//! [`Leadership`] (see `controller::run`): a standby does nothing but follow the
//! cluster, and a new leader resumes from the cluster state with hot caches.

use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::apply::FIELD_MANAGER;
use crate::server::Readiness;

/// The shortest lease duration accepted: below it the renewal period would be shorter
/// than one round trip to a loaded apiserver.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);

/// Which Lease to hold, as whom, and for how long.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The namespace of the Lease (the agent's).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This candidate's identity, written to `holderIdentity` (the pod name).
    pub holder: String,
    /// How long the Lease stays valid after its last renewal.
    pub duration: Duration,
}

/// A lease configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum LeaseConfigError {
    #[error(
        "--lease-duration {given:?} is too short: use at least {MIN_LEASE_DURATION:?} (15s suits most clusters)"
    )]
    TooShort { given: Duration },
    #[error(
        "--lease-duration {given:?} is too long: a Lease holds at most {} seconds",
        i32::MAX
    )]
    TooLong { given: Duration },
    #[error("the holder identity is empty: set POD_NAME or --instance")]
    NoHolder,
}

impl LeaseConfig {
    /// Checks that the timings can work and that the holder has a name.
    pub fn validated(self) -> Result<LeaseConfig, LeaseConfigError> {
        if self.duration < MIN_LEASE_DURATION {
            return Err(LeaseConfigError::TooShort {
                given: self.duration,
            });
        }
        if i32::try_from(self.duration.as_secs()).is_err() {
            return Err(LeaseConfigError::TooLong {
                given: self.duration,
            });
        }
        if self.holder.trim().is_empty() {
            return Err(LeaseConfigError::NoHolder);
        }
        Ok(self)
    }

    /// How often the holder renews and the others look at the Lease.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How long the holder keeps leading without a successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How soon a failed read or write of the Lease is tried again.
    fn retry_after(&self) -> Duration {
        (self.duration / 15).max(Duration::from_millis(200))
    }

    fn duration_seconds(&self) -> i32 {
        // `validated` bounds the duration; rounding up keeps the Lease at least as long.
        i32::try_from(self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0))
            .unwrap_or(i32::MAX)
    }
}

/// Whether this agent currently holds the Lease.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
}

impl Leadership {
    /// The leadership of an agent without leader election: it always leads.
    pub fn always() -> Leadership {
        let (tx, leading) = watch::channel(true);
        // The receiver keeps the last value after its sender is gone.
        drop(tx);
        Leadership { leading }
    }

    /// Yields once each time this agent starts to lead (at once if it leads already).
    pub fn acquisitions(&self) -> impl Stream<Item = ()> + Send + 'static {
        let leading = self.leading.clone();
        futures::stream::unfold((leading, false), |(mut leading, led)| async move {
            // Wait for a rise: not leading (or just yielded) → leading.
            if led {
                leading.wait_for(|l| !*l).await.ok()?;
            }
            leading.wait_for(|l| *l).await.ok()?;
            Some(((), (leading, true)))
        })
    }

    /// Whether this agent holds the Lease right now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Resolves once this agent holds the Lease (at once if it already does).
    pub async fn acquired(&mut self) {
        // An error means the elector is gone, and with it any chance to lead.
        if self.leading.wait_for(|leading| *leading).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once this agent no longer holds the Lease (at once if it does not).
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|leading| !*leading).await;
    }
}

/// The task that campaigns for and renews the Lease.
pub struct Elector {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// Starts campaigning for the Lease in the background. `readiness` is set after the
/// first successful look at the Lease: a standby is ready too (ready to take over), or
/// a rolling upgrade would wait forever for a new replica that does not lead.
pub fn elect(client: Client, config: LeaseConfig, readiness: Readiness) -> (Leadership, Elector) {
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let candidate = Candidate {
        api: Api::namespaced(client, &config.namespace),
        config,
        observed: None,
    };
    let task = tokio::spawn(campaign(candidate, leading_tx, stop_rx, readiness));
    (Leadership { leading }, Elector { task, stop })
}

impl Elector {
    /// Stops campaigning and, if this agent holds the Lease, releases it so that another
    /// replica takes over at once instead of after the lease duration.
    pub async fn step_down(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!(error = %e, "the lease elector failed");
        }
    }
}

/// What a candidate remembers of the Lease between two looks at it.
struct Observation {
    resource_version: String,
    /// When this candidate first saw that version, on its own clock.
    at: Instant,
}

struct Candidate {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observation>,
}

/// What a candidate does after reading the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// No Lease exists yet: create it, held by this candidate.
    Create,
    /// This candidate holds it: renew.
    Renew,
    /// Nobody holds it, or its holder let it expire: take it over.
    TakeOver,
    /// Someone else holds it and it is still valid.
    Wait { holder: String },
}

/// The pure decision: given the Lease (if any), who is asking, and whether the Lease's
/// current version has gone unchanged for longer than its duration.
fn claim(lease: Option<&LeaseSpec>, me: &str, expired: bool) -> Claim {
    let Some(spec) = lease else {
        return Claim::Create;
    };
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        Some(holder) if holder == me => Claim::Renew,
        None => Claim::TakeOver,
        Some(_) if expired => Claim::TakeOver,
        Some(holder) => Claim::Wait {
            holder: holder.to_string(),
        },
    }
}

/// The Lease's spec after `claim` by `me` at `now`. `Wait` leaves it as it is.
fn claimed(
    current: Option<&LeaseSpec>,
    claim: &Claim,
    me: &str,
    duration_seconds: i32,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    match claim {
        Claim::Create => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Claim::TakeOver => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        Claim::Renew => {}
        Claim::Wait { .. } => return spec,
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(MicroTime(now));
    spec
}

impl Candidate {
    /// Reads the Lease and creates, renews or takes it over when this candidate may.
    /// `Ok(true)` means this candidate holds it now; `Ok(false)` that someone else does
    /// (including when another candidate won a race for it).
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let me = self.config.holder.clone();
        let current = self.api.get_opt(&self.config.name).await?;
        let expired = current
            .as_ref()
            .is_some_and(|lease| self.has_expired(lease));
        let spec = current.as_ref().and_then(|lease| lease.spec.as_ref());
        let claim = claim(spec, &me, expired);
        if let Claim::Wait { holder } = &claim {
            tracing::debug!(%holder, lease = %self.config.name, "another agent leads");
            return Ok(false);
        }
        if claim == Claim::TakeOver {
            let previous = spec
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            info!(lease = %self.config.name, %previous, "taking over the lease");
        }
        let new_spec = claimed(
            spec,
            &claim,
            &me,
            self.config.duration_seconds(),
            Timestamp::now(),
        );
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&params, &lease).await
            }
            // `current` carries the resourceVersion that was read: the apiserver refuses
            // the replace if anyone wrote the Lease since.
            Some(mut lease) => {
                lease.spec = Some(new_spec);
                self.api.replace(&self.config.name, &params, &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.observe(&lease);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(lease = %self.config.name, "another agent wrote the lease first");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `lease` has stayed unchanged for longer than its duration since this
    /// candidate first saw its current version. Records a new version when it sees one.
    fn has_expired(&mut self, lease: &Lease) -> bool {
        let duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.duration, Duration::from_secs);
        self.observe(lease);
        self.observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= duration)
    }

    fn observe(&mut self, lease: &Lease) {
        let version = lease.resource_version().unwrap_or_default();
        if self
            .observed
            .as_ref()
            .is_none_or(|o| o.resource_version != version)
        {
            self.observed = Some(Observation {
                resource_version: version,
                at: Instant::now(),
            });
        }
    }

    /// Gives the Lease up if this candidate holds it: clears the holder, so that the
    /// next candidate to look takes it over at once.
    async fn release(&mut self) {
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => {
                warn!(lease = %self.config.name, error = %e, "could not read the lease to release it");
                return;
            }
        };
        let mut lease = lease;
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.holder.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self.api.replace(&self.config.name, &params, &lease).await {
            Ok(_) => info!(lease = %self.config.name, "released the lease"),
            Err(e) => warn!(lease = %self.config.name, error = %e, "could not release the lease"),
        }
    }
}

/// Campaigns until `stop` is set, publishing whether this candidate leads.
async fn campaign(
    mut candidate: Candidate,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    readiness: Readiness,
) {
    let config = candidate.config.clone();
    // When the last successful renewal was sent: the deadline counts from the sending,
    // because the apiserver may have stamped the Lease any time after it.
    let mut renewed_at: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        let give_up = renewed_at.map(|at| at + config.renew_deadline());
        let attempt = candidate.try_acquire_or_renew();
        let outcome = match give_up {
            Some(deadline) => tokio::time::timeout_at(deadline, attempt).await.ok(),
            None => tokio::time::timeout(config.renew_every(), attempt)
                .await
                .ok(),
        };
        if matches!(outcome, Some(Ok(_))) {
            readiness.lease_seen();
        }
        let next = match outcome {
            Some(Ok(true)) => {
                if renewed_at.is_none() {
                    info!(lease = %config.name, holder = %config.holder, "acquired the lease: leading");
                }
                renewed_at = Some(sent);
                leading.send_replace(true);
                sent + config.renew_every()
            }
            Some(Ok(false)) => {
                if renewed_at.take().is_some() {
                    warn!(lease = %config.name, "another agent holds the lease: stopped leading");
                }
                leading.send_replace(false);
                sent + config.renew_every()
            }
            Some(Err(e)) => {
                warn!(lease = %config.name, error = %e, "could not read or write the lease");
                sent + config.retry_after()
            }
            None => {
                warn!(lease = %config.name, "reading or writing the lease timed out");
                sent + config.retry_after()
            }
        };
        if let Some(deadline) = renewed_at.map(|at| at + config.renew_deadline())
            && Instant::now() >= deadline
        {
            warn!(lease = %config.name, deadline = ?config.renew_deadline(), "could not renew the lease in time: stopped leading");
            renewed_at = None;
            leading.send_replace(false);
        }
        // A holder wakes at its deadline at the latest, so that it stops leading on time
        // even when a renewal is not due yet.
        let wake = match renewed_at {
            Some(at) => next.min(at + config.renew_deadline()),
            None => next,
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    if renewed_at.is_some() {
        leading.send_replace(false);
        candidate.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(3),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn who_claims_what() {
        let cases: &[(Option<LeaseSpec>, bool, Claim)] = &[
            (None, false, Claim::Create),
            (Some(held_by("a")), false, Claim::Renew),
            (Some(held_by("a")), true, Claim::Renew),
            (
                Some(held_by("b")),
                false,
                Claim::Wait { holder: "b".into() },
            ),
            (Some(held_by("b")), true, Claim::TakeOver),
            (Some(held_by("")), false, Claim::TakeOver),
            (Some(LeaseSpec::default()), false, Claim::TakeOver),
        ];
        for (lease, expired, want) in cases {
            assert_eq!(
                &claim(lease.as_ref(), "a", *expired),
                want,
                "{lease:?} expired={expired}"
            );
        }
    }

    #[test]
    fn a_take_over_counts_a_transition_and_restamps_acquire_time() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = claimed(Some(&held_by("b")), &Claim::TakeOver, "a", 15, now);
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn a_renewal_moves_only_the_renew_time() {
        let now = Timestamp::from_second(1_000).unwrap();
        let before = held_by("a");
        let spec = claimed(Some(&before), &Claim::Renew, "a", 15, now);
        assert_eq!(spec.lease_transitions, before.lease_transitions);
        assert_eq!(spec.acquire_time, before.acquire_time);
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn a_new_lease_starts_with_no_transitions() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = claimed(None, &Claim::Create, "a", 6, now);
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(6));
    }

    #[test]
    fn timings_leave_a_margin_between_giving_up_and_being_taken_over() {
        let config = LeaseConfig {
            namespace: "shop".into(),
            name: "weir".into(),
            holder: "weir-0".into(),
            duration: Duration::from_secs(15),
        }
        .validated()
        .unwrap();
        assert_eq!(config.renew_every(), Duration::from_secs(5));
        assert_eq!(config.renew_deadline(), Duration::from_secs(10));
        assert!(config.renew_deadline() < config.duration);
        assert_eq!(config.duration_seconds(), 15);
    }

    #[test]
    fn unworkable_configurations_are_refused() {
        let base = LeaseConfig {
            namespace: "shop".into(),
            name: "weir".into(),
            holder: "weir-0".into(),
            duration: Duration::from_secs(15),
        };
        let short = LeaseConfig {
            duration: Duration::from_secs(1),
            ..base.clone()
        };
        let err = short.validated().unwrap_err().to_string();
        assert!(
            err.contains("--lease-duration") && err.contains("at least"),
            "{err}"
        );
        let anonymous = LeaseConfig {
            holder: " ".into(),
            ..base
        };
        assert!(
            anonymous
                .validated()
                .unwrap_err()
                .to_string()
                .contains("POD_NAME")
        );
    }
}
