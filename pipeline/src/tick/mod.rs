//! The tick: the one Arrow schema every stage speaks, its deterministic key,
//! validation with named reasons, and a columnar builder.
//!
//! Decoders (CSV, simulator, feeds) fill a [`TickRecord`] per decoded record,
//! borrowing from their input, and hand it to [`TickBuilder::push`], which
//! validates it, assigns the key's ordinal and appends it to Arrow builders.
//! A record that fails validation is returned as a [`Rejection`] naming the
//! reason; the caller attaches where it came from ([`Reject`]) and writes it
//! somewhere visible. Nothing is dropped silently.

mod builder;
mod reject;
pub mod schema;
mod seq;
mod time;
mod validate;
mod view;

pub use builder::{TickBuilder, TickRecord};
pub use reject::{Reject, RejectCounts, RejectWriter};
pub use schema::{col, tick_schema, ts_type, TICK_KEY};
pub use seq::SeqAssigner;
pub use time::{now_us, DAY_US};
pub use validate::{
    Clock, ManualClock, RejectReason, Rejection, SystemClock, Validator, DEFAULT_MAX_FUTURE,
    MIN_TS_US,
};
pub use view::{event_times, seqs, symbols, NotTickBatch, TickView, OPTIONAL_FLOATS};
