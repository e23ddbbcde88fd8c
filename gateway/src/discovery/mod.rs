//! Where the agents are and what they hold. Two sources publish the same thing, a
//! [`Fleet`] (the current set of [`Endpoint`]s): [`static_list`] (agents given on the
//! command line or by local mode, whose models and state are read from the agents) and
//! [`kubernetes`] (the browser pods of every BrowserPool, watched). Beside the agents,
//! a source that knows the deployments publishes which models are deployed and which
//! are cut into stages ([`Pipelines`]).

pub mod kubernetes;
pub mod static_list;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;

/// One agent the gateway may route to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable identity: `namespace/pod` for pods, the URL for static agents.
    pub id: String,
    /// `http://host:port` of the agent.
    pub url: String,
    pub token: Option<String>,
    pub pool: String,
    pub pod: String,
    /// Ready and not draining: may take new requests.
    pub serving: bool,
    /// The models it holds, loaded and serving.
    pub models: BTreeSet<String>,
    /// The backend each model runs on there (`wasm`, `webgpu`, `webnn:gpu`), when known.
    pub backends: BTreeMap<String, String>,
    /// The browser and its version (`Chrome/156.0...`), when known.
    pub browser: String,
}

pub type Endpoints = BTreeMap<String, Endpoint>;

/// Models that are meant to be served (their deployments exist) even while no browser
/// holds them: requests for them wait for a browser (scale from zero) rather than
/// being refused as unknown.
pub type Deployed = BTreeSet<String>;

/// Models cut into stages: each served name (a deployment's) with its stages' model
/// names on the agents, in pipeline order.
pub type Pipelines = BTreeMap<String, Vec<String>>;

/// The fleet as last published by a discovery source.
#[derive(Debug, Clone)]
pub struct Fleet {
    rx: watch::Receiver<Arc<Endpoints>>,
    deployed: Option<watch::Receiver<Arc<Deployed>>>,
    pipelines: Option<watch::Receiver<Arc<Pipelines>>>,
}

/// Resolves at the next change of `rx` (`false` once its sender is gone); never without
/// one.
async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Fleet {
    pub fn new(rx: watch::Receiver<Arc<Endpoints>>) -> Self {
        Self {
            rx,
            deployed: None,
            pipelines: None,
        }
    }

    /// A fleet whose source also knows which models are deployed.
    pub fn with_deployed(mut self, deployed: watch::Receiver<Arc<Deployed>>) -> Self {
        self.deployed = Some(deployed);
        self
    }

    /// A fleet whose source also knows which models are cut into stages.
    pub fn with_pipelines(mut self, pipelines: watch::Receiver<Arc<Pipelines>>) -> Self {
        self.pipelines = Some(pipelines);
        self
    }

    /// The deployed models, when the source knows them.
    pub fn deployed(&self) -> Option<Arc<Deployed>> {
        self.deployed.as_ref().map(|d| d.borrow().clone())
    }

    /// The models cut into stages, when the source knows them.
    pub fn pipelines(&self) -> Option<Arc<Pipelines>> {
        self.pipelines.as_ref().map(|p| p.borrow().clone())
    }

    /// A fleet its owner sets directly (tests, embedding): the sender and the fleet.
    pub fn manual(endpoints: Endpoints) -> (watch::Sender<Arc<Endpoints>>, Self) {
        let (tx, rx) = watch::channel(Arc::new(endpoints));
        (tx, Self::new(rx))
    }

    pub fn current(&self) -> Arc<Endpoints> {
        self.rx.borrow().clone()
    }

    /// Resolves at the next change of any; `false` once the source is gone.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.rx.changed() => r.is_ok(),
            r = changed(&mut self.deployed) => r,
            r = changed(&mut self.pipelines) => r,
        }
    }
}
