//! `GET /api/v1/events`: configuration changes as server-sent events (`event: config`, whose
//! `data` is a [`ConfigEvent`]; `event: lagged` when events were dropped). The broker's feed
//! reads the same events, so the types are `proto::control`'s.

pub use proto::control::{Action, ConfigEvent, Object};
