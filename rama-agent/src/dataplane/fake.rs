//! A recording dataplane for unit tests of code that drives a `Dataplane` (the agent
//! loop, the CNI server): it remembers every state it was given and can be told to fail.
use super::{ApplyReport, Dataplane};
use crate::{
    Error, Result,
    state::{LocalEndpoint, ValidState},
};

#[derive(Default)]
pub struct FakeDataplane {
    /// Every state applied, in order.
    pub applied: Vec<ValidState>,
    pub teardowns: usize,
    /// When set, the next apply fails with this message (and records nothing).
    pub fail_next: Option<String>,
}

impl Dataplane for FakeDataplane {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn apply(&mut self, state: &ValidState) -> Result<ApplyReport> {
        if let Some(msg) = self.fail_next.take() {
            return Err(Error::InvalidState(msg));
        }
        self.applied.push(state.clone());
        Ok(ApplyReport {
            endpoints: state.state.endpoints.len(),
            remote_endpoints: state.state.remote_endpoints.len(),
            subnets: state.state.subnets.len(),
            notes: Vec::new(),
        })
    }

    async fn teardown(&mut self) -> Result<()> {
        self.teardowns += 1;
        Ok(())
    }

    async fn check_endpoint(&mut self, ep: &LocalEndpoint) -> Result<()> {
        match self.applied.last() {
            Some(s) if s.state.endpoints.contains(ep) => Ok(()),
            _ => Err(Error::CheckFailed(format!(
                "endpoint {:?} is not in the last state applied",
                ep.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeState;

    fn state() -> ValidState {
        serde_json::from_value::<NodeState>(serde_json::json!({
            "node": {"name": "n1", "uplink": "up0", "vtepIp": "10.0.0.1", "vtepMac": "02:00:00:00:00:01"},
            "subnets": [{"name": "o", "cidr": "10.244.0.0/24", "fabric": {"type": "overlay", "vni": 7}}]
        }))
        .expect("state")
        .validate()
        .expect("valid")
    }

    #[tokio::test]
    async fn records_states_and_fails_on_request() {
        let mut fake = FakeDataplane::default();
        let report = fake.apply(&state()).await.expect("apply");
        assert_eq!(report.subnets, 1);
        fake.fail_next = Some("injected".into());
        let err = fake.apply(&state()).await.expect_err("must fail once");
        assert!(err.to_string().contains("injected"));
        fake.apply(&state()).await.expect("recovers");
        assert_eq!(fake.applied.len(), 2, "the failed apply recorded nothing");
        fake.teardown().await.expect("teardown");
        assert_eq!(fake.teardowns, 1);
    }
}
