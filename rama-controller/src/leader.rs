//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews `renewTime` every `renew` period; another replica takes
//! the Lease over when it has seen the record unchanged for `duration` (measured on
//! its own clock, so clock skew between replicas does not matter). Every write carries
//! the resourceVersion it read, so two replicas can never both win one round.
use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use log::{info, warn};

use crate::{Error, Result, kube_err};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (well under `duration`).
    pub renew: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        }
    }
}

/// One replica's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record seen from another holder, and when it was first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: acquire or renew. `Ok(true)` when this replica holds the Lease.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let name = &self.settings.name;
        let Some(lease) = self
            .api
            .get_opt(name)
            .await
            .map_err(kube_err(format!("reading Lease {name}")))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(kube_err(format!("creating Lease {name}"))(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.settings.identity.as_str());
        if !mine && holder.is_some() {
            let record = (holder.clone(), spec.renew_time.clone());
            let first_seen = match &self.observed {
                Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
                _ => {
                    self.observed = Some((record.0, record.1, Instant::now()));
                    Instant::now()
                }
            };
            let duration = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(self.settings.duration);
            if first_seen.elapsed() < duration {
                return Ok(false);
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut updated = lease.clone();
        updated.spec = Some(self.spec(transitions, acquired));
        match self
            .api
            .replace(name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {
                if !mine {
                    info!(
                        "{} took Lease {}/{name} over from {holder:?}",
                        self.settings.identity, self.settings.namespace
                    );
                }
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(kube_err(format!("renewing Lease {name}"))(e)),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) -> Result<()> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.settings.renew).await;
        }
    }

    /// Renews until a renewal fails for longer than the Lease lasts (another replica
    /// may hold it by then): returns the reason leadership was lost.
    pub async fn hold(&mut self) -> Error {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.renew).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    return Error::LeadershipLost(format!(
                        "Lease {} is held by another replica",
                        self.settings.name
                    ));
                }
                Err(e) => {
                    warn!("leader election: {e}");
                    if last_renewed.elapsed() >= self.settings.duration {
                        return Error::LeadershipLost(format!(
                            "could not renew Lease {} for {:?}: {e}",
                            self.settings.name, self.settings.duration
                        ));
                    }
                }
            }
        }
    }

    /// Gives the Lease up (graceful shutdown), so another replica takes over at once.
    pub async fn release(&mut self) -> Result<()> {
        let name = &self.settings.name;
        let Some(mut lease) = self
            .api
            .get_opt(name)
            .await
            .map_err(kube_err(format!("reading Lease {name}")))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(kube_err(format!("releasing Lease {name}"))(e)),
        }
    }
}
