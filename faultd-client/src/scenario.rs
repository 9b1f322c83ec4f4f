//! Timed scenarios ([`faultd_api::scenario`]) played through a [`Client`]: the same TOML
//! files as `faultctl run`, their faults bound to the client's session.
//!
//! ```no_run
//! use faultd_client::{Client, Scenario};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect().await?;
//! let scenario = Scenario::from_path("examples/scenarios/flapping-link.toml")?;
//! scenario.run(&client, |row| println!("{row}")).await?;
//! # Ok(()) }
//! ```
//!
//! A run removes what it added when it ends, when a step is refused, and when the future
//! given to [`Scenario::run_until`] finishes; should the process die, the session takes
//! the faults with it (unless the client was built with `session(false)`).

use faultd_api::scenario::FaultApi;

use crate::{Client, proto};

impl FaultApi for Client {
    async fn add(&self, spec: proto::FaultSpec) -> Result<u64, tonic::Status> {
        let request = proto::AddFaultRequest {
            spec: Some(spec),
            session_id: self.session_id().unwrap_or(0),
        };
        Ok(self.rpc.clone().add_fault(request).await?.into_inner().id)
    }

    async fn remove(&self, id: u64) -> Result<(), tonic::Status> {
        let request = proto::RemoveFaultRequest { id };
        self.rpc.clone().remove_fault(request).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scenario;

    /// What a scenario step sends through the client is the spec the builder of the same
    /// fault sends.
    #[tokio::test]
    async fn a_step_sends_what_the_builder_sends() {
        let scenario = Scenario::from_str(
            "[[step]]\nat = \"0s\"\nfault = { action = \"limit-bytes\", port = 5432, bytes = 1000, then = \"reset\", label = \"x\" }\n",
            "test",
        )
        .unwrap();
        let faultd_api::scenario::StepAction::Add(faults) = &scenario.steps[0].action else {
            panic!("the step adds");
        };
        let client = Client::disconnected();
        let built = client
            .limit_bytes(5432, 1000)
            .then(crate::Then::Reset)
            .label("x")
            .spec();
        assert_eq!(faults[0].spec, built);
    }
}
