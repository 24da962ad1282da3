//! The wire: frames, the messages, the handshake and socket options. Both
//! sides use it; it knows neither.

pub(crate) mod auth;
pub(crate) mod frame;
pub(crate) mod message;
pub(crate) mod socket;
