//! What crosses stickyd on the client's side: the rules for request and response heads
//! ([`head`]: validation, hop-by-hop fields, forwarding fields, upgrades) and the client's
//! request body ([`body`]).

pub mod body;
pub mod head;

pub use head::{HeadRules, Peer};
