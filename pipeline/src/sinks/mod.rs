//! Where the detector's results go outside the lake: alerts, dead letters,
//! offsets and statistics in PostgreSQL ([`postgres`]).

pub mod postgres;
