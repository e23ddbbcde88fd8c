//! Agents from the Kubernetes API. (Being written.)

use tokio_util::sync::CancellationToken;

use super::Fleet;
use crate::waiting::{WaitingByModel, WaitingSink};

/// Publishes waiting counts as BrowserPool annotations.
#[derive(Debug)]
pub struct PoolAnnotations;

impl WaitingSink for PoolAnnotations {
    fn publish(&self, _waiting: &WaitingByModel) {}
}

pub fn start(
    _client: kube::Client,
    _namespace: Option<String>,
    _stop: CancellationToken,
) -> (Fleet, PoolAnnotations) {
    let (_tx, fleet) = Fleet::manual(Default::default());
    (fleet, PoolAnnotations)
}
