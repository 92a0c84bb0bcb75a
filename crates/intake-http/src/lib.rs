//! HTTP sources for [intake](intake_core): poll a REST API, or follow a server-sent
//! event stream, into a table.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
