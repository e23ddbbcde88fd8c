//! The page side of the agent: the routes that serve the in-page runtime and the
//! loopback WebSocket it opens back to the agent.

pub mod link;
pub mod server;

pub use link::PageLink;
