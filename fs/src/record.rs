//! What the spool holds: one request, as the trigger described it when the write came in.

use rkyv::{Archive, Deserialize, Serialize};

/// One spooled request. The trigger's plugin, service, arguments and timeout are taken at
/// write time (the original's rule: a write runs what the trigger says then), so a request
/// replayed after a restart runs as it would have.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SpooledRequest {
    /// The trigger's id in the control plane (for its hits and its responses).
    pub trigger_id: i64,
    /// `/directory/name` when written.
    pub path: String,
    /// The service.
    pub service: String,
    /// The plugin.
    pub plugin: String,
    /// The trigger's arguments.
    pub args: Vec<(String, String)>,
    /// 0: the service's timeout.
    pub timeout_ms: u64,
    /// The bytes written (or a batch of complete lines).
    pub payload: Vec<u8>,
}

/// A spool record that does not decode: the spool's CRC passed, so only a record written by
/// another version of this program can be one.
#[derive(Debug, thiserror::Error)]
#[error("a spooled request does not decode: {0}")]
pub struct BadRecord(String);

impl SpooledRequest {
    /// The record's bytes.
    pub fn encode(&self) -> bytes::Bytes {
        match rkyv::to_bytes::<rkyv::rancor::Error>(self) {
            Ok(bytes) => bytes::Bytes::from(bytes.into_vec()),
            // Serializing owned strings and vectors into a growable buffer cannot fail.
            Err(e) => unreachable!("serializing a spooled request: {e}"),
        }
    }

    /// Decodes (and validates) a record's bytes.
    pub fn decode(bytes: &[u8]) -> Result<SpooledRequest, BadRecord> {
        // The workspace's rkyv reads unaligned archives, so the record is read where it lies.
        rkyv::from_bytes::<SpooledRequest, rkyv::rancor::Error>(bytes)
            .map_err(|e| BadRecord(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let req = SpooledRequest {
            trigger_id: 7,
            path: "/logs/nginx".into(),
            service: "ship".into(),
            plugin: "append".into(),
            args: vec![("path".into(), "/var/log/x".into())],
            timeout_ms: 0,
            payload: b"a\nb\n".to_vec(),
        };
        let bytes = req.encode();
        assert_eq!(SpooledRequest::decode(&bytes).unwrap(), req);
        assert_eq!(SpooledRequest::decode(&bytes[1..]).ok(), None);
        assert!(SpooledRequest::decode(b"garbage!").is_err());
    }
}
