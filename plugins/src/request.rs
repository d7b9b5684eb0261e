//! [`PluginRequest`]: what a plugin reads on stdin, one JSON object.
//!
//! ```json
//! {"request_id": 7, "service": "demo", "plugin": "command", "worker": "w1",
//!  "command": ["ls", "-l"], "args": {"path": "/tmp/x"}, "payload": "text",
//!  "payload_base64": null, "timeout_ms": 30000}
//! ```
//!
//! `payload` is the payload as text when it is valid UTF-8; otherwise it is `""` and
//! `payload_base64` holds the bytes (standard base64), so that any payload survives JSON.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// stdin could not be read.
    #[error("cannot read the request from stdin: {0}")]
    Io(#[from] std::io::Error),
    /// stdin did not hold a request object.
    #[error("the request on stdin is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// stdin was empty.
    #[error("no request on stdin")]
    NoRequest,
    /// `payload_base64` is not base64.
    #[error("payload_base64 is invalid: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// The request a plugin serves. Missing fields read as their defaults, so that a hand-written
/// `{"command": ["ls"]}` is a valid request too.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(default)]
pub struct PluginRequest {
    /// The broker's dispatch id.
    pub request_id: u64,
    /// The service the request was sent to.
    pub service: String,
    /// The plugin name as requested.
    pub plugin: String,
    /// The identity of the worker running the plugin.
    pub worker: String,
    /// The command words.
    pub command: Vec<String>,
    /// Plugin arguments.
    pub args: BTreeMap<String, String>,
    /// The payload when it is valid UTF-8, else empty.
    pub payload: String,
    /// The payload in base64 when it is not valid UTF-8, else null.
    pub payload_base64: Option<String>,
    /// How long the worker lets the plugin run; 0 means no worker-side limit.
    pub timeout_ms: u64,
}

impl PluginRequest {
    /// Sets `payload`/`payload_base64` from raw bytes: text when valid UTF-8, else base64.
    pub fn set_payload(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                self.payload = text.to_string();
                self.payload_base64 = None;
            }
            Err(_) => {
                self.payload = String::new();
                self.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
    }

    /// Reads one request object from stdin. It does not need stdin to be closed: reading
    /// stops after the first JSON value.
    pub fn read_stdin() -> Result<Self, PluginError> {
        Self::read_from(std::io::stdin().lock())
    }

    /// Reads one request object from `reader` (what [`PluginRequest::read_stdin`] does).
    pub fn read_from(reader: impl Read) -> Result<Self, PluginError> {
        let mut values = serde_json::Deserializer::from_reader(reader).into_iter::<Self>();
        match values.next() {
            Some(request) => Ok(request?),
            None => Err(PluginError::NoRequest),
        }
    }

    /// The payload bytes, whichever field carries them.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, PluginError> {
        match &self.payload_base64 {
            Some(encoded) => Ok(base64::engine::general_purpose::STANDARD.decode(encoded)?),
            None => Ok(self.payload.as_bytes().to_vec()),
        }
    }

    /// The command words joined by a space.
    pub fn command_line(&self) -> String {
        self.command.join(" ")
    }

    /// The value of the first of `names` present in `args`.
    pub fn arg(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .find_map(|name| self.args.get(*name).map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_payload_is_text() {
        let mut req = PluginRequest::default();
        req.set_payload("héllo".as_bytes());
        assert_eq!(req.payload, "héllo");
        assert_eq!(req.payload_base64, None);
        assert_eq!(req.payload_bytes().unwrap(), "héllo".as_bytes());
    }

    #[test]
    fn binary_payload_is_base64() {
        let mut req = PluginRequest::default();
        req.set_payload(&[0xff, 0x00, b'a']);
        assert_eq!(req.payload, "");
        assert_eq!(req.payload_base64.as_deref(), Some("/wBh"));
        assert_eq!(req.payload_bytes().unwrap(), vec![0xff, 0x00, b'a']);
    }

    #[test]
    fn json_shape_and_partial_objects() {
        let mut req = PluginRequest {
            request_id: 7,
            service: "demo".into(),
            plugin: "echo".into(),
            worker: "w1".into(),
            command: vec!["ls".into(), "-l".into()],
            timeout_ms: 100,
            ..Default::default()
        };
        req.args.insert("path".into(), "/tmp/x".into());
        req.set_payload(b"hi");
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "request_id": 7, "service": "demo", "plugin": "echo", "worker": "w1",
                "command": ["ls", "-l"], "args": {"path": "/tmp/x"}, "payload": "hi",
                "payload_base64": null, "timeout_ms": 100
            })
        );
        assert_eq!(req.command_line(), "ls -l");

        // Reading stops after the first value: trailing bytes (or an open stdin) do not matter.
        let text = format!("{}\n{{garbage", serde_json::to_string(&req).unwrap());
        assert_eq!(PluginRequest::read_from(text.as_bytes()).unwrap(), req);

        let partial = PluginRequest::read_from(&br#"{"command":["a","b"]}"#[..]).unwrap();
        assert_eq!(partial.command_line(), "a b");
        assert!(matches!(
            PluginRequest::read_from(&b""[..]),
            Err(PluginError::NoRequest)
        ));
        assert!(matches!(
            PluginRequest::read_from(&b"42"[..]),
            Err(PluginError::Json(_))
        ));
    }
}
