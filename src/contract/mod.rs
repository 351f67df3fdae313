//! The wire contract (SPEC §5): inbound EventBridge envelopes, routing them to the
//! decision core's inputs, and outbound events.

pub mod inbound;
pub mod outbound;
pub mod route;

pub use inbound::{Body, Envelope, Message, ParseError, Sources, parse, parse_str};
pub use outbound::Entry;
pub use route::{OPERATOR_EVENT_MAX_AGE, Rejection, Routed, check_age, parse_image, route};
