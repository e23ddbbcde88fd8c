//! The agent's side of the in-page runtime: the link to a page over the loopback
//! WebSocket it opens back to the agent, and the control protocol spoken on it. (The
//! routes that serve the page are in `http::page`.)

#[cfg(test)]
mod categories;
pub mod link;
pub mod protocol;

pub use link::{HelloError, PageLink};
