//! The embedded adapters: the same ports as [`crate::aws`], on one machine, with no AWS
//! account. So far: [`db`], the durable store and inbox on SQLite.

pub mod db;

pub use db::{DeadLetter, LocalDb, QueueOptions};
