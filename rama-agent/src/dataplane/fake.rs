//! A recording dataplane for unit tests of code that drives a `Dataplane` (the agent
//! loop, the CNI server): it remembers every state it was given and can be told to fail.
use super::{ApplyReport, Dataplane};
use crate::{Error, Result, state::ValidState};

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
}
