//! Where one inference request's time went, stage by stage, from the moment a front
//! (the gateway's or an agent's HTTP, gRPC or bridge listener) had its head to the
//! moment its answer was encoded.
//!
//! Each process measures only on its own clock and only the stages it sees; the hops
//! between processes (gateway to agent, agent to page) are what a round trip took less
//! the span the far side reported. So the stages of one request tile its whole time
//! with no clock shared between machines, and adding them up gives the latency the
//! front saw. They travel back with the answer in the response frame's header
//! (`"stages"`), each hop adding its own.

use serde::{Deserialize, Serialize};

mod tail;
pub use tail::{SlowRequest, StageShare, TailReport, TailWindow};

/// One stage of a request's path, in the order a request passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// A front: the request's head arrived → the request is decoded (body read and
    /// parsed; on the bridge, the frame decoded).
    Receive,
    /// The gateway: decoded → sent on an agent's bridge (choosing a browser, waiting for
    /// one, failed attempts and their backoff).
    Route,
    /// Gateway ↔ agent, both ways: the bridge's round trip less the agent's span.
    Bridge,
    /// The agent: decoded → sent to the page (admission, the model's queue, the
    /// dynamic-batching window).
    AgentQueue,
    /// Agent ↔ page, both ways: the page socket's round trip less the page's span.
    PageLink,
    /// The page: frame received → an executor (the page or a page worker) starts it.
    PageQueue,
    /// The page: the frame decoded into onnxruntime tensors.
    Decode,
    /// onnxruntime running the model.
    Run,
    /// The page: outputs read back and the response frame encoded.
    Encode,
    /// The agent: the page's answer → the answer handed to its front.
    AgentReply,
    /// The gateway: the agent's answer → the answer handed to its front.
    GatewayReply,
    /// A front: encoding the response.
    Send,
}

impl Stage {
    pub const ALL: [Stage; 12] = [
        Self::Receive,
        Self::Route,
        Self::Bridge,
        Self::AgentQueue,
        Self::PageLink,
        Self::PageQueue,
        Self::Decode,
        Self::Run,
        Self::Encode,
        Self::AgentReply,
        Self::GatewayReply,
        Self::Send,
    ];

    /// The metric label and JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receive => "receive",
            Self::Route => "route",
            Self::Bridge => "bridge",
            Self::AgentQueue => "agent_queue",
            Self::PageLink => "page_link",
            Self::PageQueue => "page_queue",
            Self::Decode => "decode",
            Self::Run => "run",
            Self::Encode => "encode",
            Self::AgentReply => "agent_reply",
            Self::GatewayReply => "gateway_reply",
            Self::Send => "send",
        }
    }

    /// The stages the page measures: its span is their sum.
    pub const PAGE: [Stage; 4] = [Self::PageQueue, Self::Decode, Self::Run, Self::Encode];
}

/// Milliseconds per stage of one request; a stage nobody measured is `None` (a request
/// straight to an agent has no `route`; the gateway's own stages are not in an agent's
/// answer). The JSON form (`{"run": 0.41, ...}`) is what the page writes into its
/// response header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_queue: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_link: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_queue: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_reply: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_reply: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<f64>,
}

impl StageTimes {
    fn slot(&mut self, stage: Stage) -> &mut Option<f64> {
        match stage {
            Stage::Receive => &mut self.receive,
            Stage::Route => &mut self.route,
            Stage::Bridge => &mut self.bridge,
            Stage::AgentQueue => &mut self.agent_queue,
            Stage::PageLink => &mut self.page_link,
            Stage::PageQueue => &mut self.page_queue,
            Stage::Decode => &mut self.decode,
            Stage::Run => &mut self.run,
            Stage::Encode => &mut self.encode,
            Stage::AgentReply => &mut self.agent_reply,
            Stage::GatewayReply => &mut self.gateway_reply,
            Stage::Send => &mut self.send,
        }
    }

    /// The milliseconds of `stage`, when measured.
    pub fn get(&self, stage: Stage) -> Option<f64> {
        match stage {
            Stage::Receive => self.receive,
            Stage::Route => self.route,
            Stage::Bridge => self.bridge,
            Stage::AgentQueue => self.agent_queue,
            Stage::PageLink => self.page_link,
            Stage::PageQueue => self.page_queue,
            Stage::Decode => self.decode,
            Stage::Run => self.run,
            Stage::Encode => self.encode,
            Stage::AgentReply => self.agent_reply,
            Stage::GatewayReply => self.gateway_reply,
            Stage::Send => self.send,
        }
    }

    /// Sets `stage` to `ms` (never below zero: a difference of two clocks' readings can
    /// come out a hair negative).
    pub fn set(&mut self, stage: Stage, ms: f64) {
        *self.slot(stage) = Some(ms.max(0.0));
    }

    /// Adds `ms` to `stage` (a request through several models, or retried, passes a
    /// stage more than once).
    pub fn add(&mut self, stage: Stage, ms: f64) {
        let slot = self.slot(stage);
        *slot = Some(slot.unwrap_or(0.0) + ms.max(0.0));
    }

    /// Adds every measured stage of `other` into this one.
    pub fn accumulate(&mut self, other: &StageTimes) {
        for (stage, ms) in other.measured() {
            self.add(stage, ms);
        }
    }

    /// The measured stages, in path order.
    pub fn measured(&self) -> impl Iterator<Item = (Stage, f64)> + '_ {
        Stage::ALL
            .into_iter()
            .filter_map(|s| self.get(s).map(|ms| (s, ms)))
    }

    /// The sum of the measured stages: the span they cover.
    pub fn total(&self) -> f64 {
        self.measured().map(|(_, ms)| ms).sum()
    }
}

/// A duration in milliseconds.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_the_metric_labels_and_unmeasured_stages_are_left_out() {
        let mut t = StageTimes::default();
        for (i, s) in Stage::ALL.into_iter().enumerate() {
            t.set(s, i as f64);
        }
        let v = serde_json::to_value(t).unwrap();
        for (i, s) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(v[s.as_str()], serde_json::json!(i as f64), "{}", s.as_str());
        }
        let page: StageTimes = serde_json::from_str(r#"{"decode": 0.5, "run": 1.25}"#).unwrap();
        assert_eq!(
            page.measured().collect::<Vec<_>>(),
            [(Stage::Decode, 0.5), (Stage::Run, 1.25)]
        );
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            r#"{"decode":0.5,"run":1.25}"#
        );
        assert_eq!(page.total(), 1.75);
    }

    #[test]
    fn set_clamps_negative_differences_and_add_accumulates() {
        let mut t = StageTimes::default();
        t.set(Stage::Bridge, -0.01);
        assert_eq!(t.bridge, Some(0.0));
        t.add(Stage::Run, 1.0);
        t.add(Stage::Run, 2.0);
        let mut u = StageTimes::default();
        u.accumulate(&t);
        u.accumulate(&t);
        assert_eq!(u.run, Some(6.0));
        assert_eq!(u.bridge, Some(0.0));
        assert_eq!(u.receive, None);
    }
}
