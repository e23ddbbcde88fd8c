//! Where the agents are and what they hold. Two sources publish the same thing, a
//! [`Fleet`] (the current set of [`Endpoint`]s): [`static_list`] (agents given on the
//! command line or by local mode, whose models and state are read from the agents) and
//! [`kubernetes`] (the browser pods of every BrowserPool, watched).

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

/// The fleet as last published by a discovery source.
#[derive(Debug, Clone)]
pub struct Fleet {
    rx: watch::Receiver<Arc<Endpoints>>,
}

impl Fleet {
    pub fn new(rx: watch::Receiver<Arc<Endpoints>>) -> Self {
        Self { rx }
    }

    /// A fleet its owner sets directly (tests, embedding): the sender and the fleet.
    pub fn manual(endpoints: Endpoints) -> (watch::Sender<Arc<Endpoints>>, Self) {
        let (tx, rx) = watch::channel(Arc::new(endpoints));
        (tx, Self::new(rx))
    }

    pub fn current(&self) -> Arc<Endpoints> {
        self.rx.borrow().clone()
    }

    /// Resolves at the next change; `false` once the source is gone.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}
