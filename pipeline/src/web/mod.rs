//! HTTP serving with the limits a port open to strangers needs, shared by
//! the review app (`stockanomaly serve`) and the detector's `/metrics`.
//!
//! `axum::serve` accepts every connection and keeps it for as long as the
//! peer likes: a few hundred idle sockets exhaust the process's descriptors
//! and the server stops answering anyone. [`serve`] instead runs hyper's
//! HTTP/1 connection with its timer, so a connection that does not send a
//! complete request head within [`Limits::header_read_timeout`] (the first
//! request or the next one on a kept-alive connection) is closed; it holds
//! at most [`Limits::max_connections`] connections (capped below the
//! descriptor limit), leaving the rest in the kernel's backlog; it backs off
//! when `accept` fails instead of spinning; and every request gets a
//! deadline, a cap on requests in flight and on body size.

mod limits;
mod server;

pub use limits::{descriptor_budget, Limits};
pub use server::{serve, PeerAddr};
