//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does it: the holder renews `renewTime` well within
//! `leaseDurationSeconds`; another candidate takes the Lease over only once
//! it has expired, and every write carries the resourceVersion it read, so
//! two candidates racing for it cannot both win (the API server refuses the
//! second write with 409 Conflict).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

/// The Lease the agents elect their status leader with.
pub const LEASE_NAME: &str = "switchyard-status-leader";

pub struct LeaderLease {
    api: Api<Lease>,
    identity: String,
    duration: SignedDuration,
}

impl LeaderLease {
    /// Candidate `identity` (the node name) for the Lease in `namespace`,
    /// held for `duration_seconds` without renewal.
    pub fn new(client: Client, namespace: &str, identity: &str, duration_seconds: i32) -> Self {
        LeaderLease {
            api: Api::namespaced(client, namespace),
            identity: identity.to_string(),
            duration: SignedDuration::from_secs(duration_seconds.into()),
        }
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Take or renew the Lease. `Ok(true)` when this candidate leads now.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, 0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another candidate created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(r), Some(d)) => r.0 + SignedDuration::from_secs(d.into()) < now,
            _ => true,
        };
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, transitions, acquired));
        // `replace` sends the resourceVersion read above: a concurrent
        // writer makes this fail with 409, and it does not lead.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
