//! The Jupyter message model and its signed multipart framing:
//! `[ids..., "<IDS|MSG>", hexsig, header, parent_header, metadata, content, buffers...]`.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::jupyter::connection::{ConnectionInfo, SIGNATURE_SCHEME};
use crate::utc::UtcTime;

/// Separates routing ids from the message proper.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";
/// The messaging protocol version we speak.
pub const PROTOCOL_VERSION: &str = "5.3";

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: Value,
    pub parent_header: Value,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Vec<u8>>,
}

impl Message {
    /// A new request with a fresh msg_id and no parent.
    pub fn new(session: &str, msg_type: &str, content: Value) -> Self {
        Message {
            header: json!({
                "msg_id": uuid::Uuid::new_v4().to_string(),
                "session": session,
                "username": "sshpyk",
                "date": rfc3339_utc(SystemTime::now()),
                "msg_type": msg_type,
                "version": PROTOCOL_VERSION,
            }),
            parent_header: json!({}),
            metadata: json!({}),
            content,
            buffers: Vec::new(),
        }
    }

    pub fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or("")
    }

    pub fn msg_id(&self) -> &str {
        self.header["msg_id"].as_str().unwrap_or("")
    }

    /// The msg_id of the request this message answers, if any.
    pub fn parent_msg_id(&self) -> Option<&str> {
        self.parent_header["msg_id"].as_str()
    }
}

/// HMAC-SHA256 signer keyed with the connection file's `key`; an empty key disables signing.
#[derive(Clone)]
pub struct Signer {
    // Only the keyed HMAC state is kept, never the key itself.
    mac: Option<Hmac<Sha256>>,
}

// The key is a secret: a `{:?}` must not reveal anything derived from it.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("signing", &self.mac.is_some())
            .finish()
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        let mac = (!key.is_empty())
            .then(|| Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length"));
        Signer { mac }
    }

    /// Refuses a signature scheme we do not implement rather than guessing.
    pub fn from_info(info: &ConnectionInfo) -> Result<Self> {
        if info.signature_scheme != SIGNATURE_SCHEME {
            return Err(Error::Invalid(format!(
                "signature_scheme '{}' is not supported (only '{SIGNATURE_SCHEME}')",
                info.signature_scheme
            )));
        }
        Ok(Signer::new(info.key.as_bytes()))
    }

    fn keyed(&self, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
        let mut mac = self.mac.clone()?;
        for part in parts {
            mac.update(part);
        }
        Some(mac)
    }

    /// Hex signature of the four JSON frames; "" when signing is disabled.
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        self.keyed(parts)
            .map(|mac| hex::encode(mac.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// Constant-time check of a hex signature; always true when signing is disabled.
    pub fn verify(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        match self.keyed(parts) {
            None => true,
            Some(mac) => hex::decode(signature).is_ok_and(|sig| mac.verify_slice(&sig).is_ok()),
        }
    }

    pub fn encode(&self, ids: &[Vec<u8>], msg: &Message) -> Vec<Vec<u8>> {
        let parts = [&msg.header, &msg.parent_header, &msg.metadata, &msg.content]
            .map(|v| v.to_string().into_bytes());
        let signature = self.sign(&parts.each_ref().map(Vec::as_slice));
        let mut frames = ids.to_vec();
        frames.push(DELIMITER.to_vec());
        frames.push(signature.into_bytes());
        frames.extend(parts);
        frames.extend(msg.buffers.iter().cloned());
        frames
    }

    /// Splits off the routing ids and returns the message, rejecting a bad signature.
    pub fn decode<F: AsRef<[u8]>>(&self, frames: &[F]) -> Result<(Vec<Vec<u8>>, Message)> {
        let malformed = |why: &str| Error::Remote(format!("malformed Jupyter message: {why}"));
        let delim = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or_else(|| malformed("no <IDS|MSG> delimiter"))?;
        let rest = &frames[delim + 1..];
        if rest.len() < 5 {
            return Err(malformed("fewer than five frames after the delimiter"));
        }
        let parts: Vec<&[u8]> = rest[1..5].iter().map(AsRef::as_ref).collect();
        if !self.verify(&parts, rest[0].as_ref()) {
            return Err(Error::Remote(
                "a kernel message has an invalid signature (is the connection file key the kernel's?)"
                    .into(),
            ));
        }
        let json = |i: usize| {
            serde_json::from_slice::<Value>(parts[i]).map_err(|e| malformed(&e.to_string()))
        };
        let msg = Message {
            header: json(0)?,
            parent_header: json(1)?,
            metadata: json(2)?,
            content: json(3)?,
            buffers: rest[5..].iter().map(|f| f.as_ref().to_vec()).collect(),
        };
        let ids = frames[..delim]
            .iter()
            .map(|f| f.as_ref().to_vec())
            .collect();
        Ok((ids, msg))
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn rfc3339_utc(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let u = UtcTime::from_unix(since.as_secs());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        u.year,
        u.month,
        u.day,
        u.hour,
        u.minute,
        u.second,
        since.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Message {
        let mut msg = Message::new("sess", "execute_request", json!({"code": "1+1"}));
        msg.buffers.push(b"raw".to_vec());
        msg
    }

    #[test]
    fn round_trip_with_ids_and_buffers() {
        let signer = Signer::new(b"secret-key");
        let msg = sample();
        let frames = signer.encode(&[b"id1".to_vec(), b"id2".to_vec()], &msg);
        assert_eq!(frames[2], DELIMITER);
        assert_eq!(frames[3].len(), 64, "hex of a SHA-256 HMAC");
        let (ids, back) = signer.decode(&frames).unwrap();
        assert_eq!(ids, vec![b"id1".to_vec(), b"id2".to_vec()]);
        assert_eq!(back, msg);
        assert_eq!(back.msg_type(), "execute_request");
        assert_eq!(back.msg_id().len(), 36);
        assert_eq!(back.parent_msg_id(), None);
        assert_eq!(back.header["version"], PROTOCOL_VERSION);
        assert_eq!(back.header["username"], "sshpyk");
    }

    #[test]
    fn signature_matches_python_hmac() {
        // hmac.new(b"key", b'{"a":1}{}{}{}', hashlib.sha256).hexdigest()
        let parts: [&[u8]; 4] = [br#"{"a":1}"#, b"{}", b"{}", b"{}"];
        assert_eq!(
            Signer::new(b"key").sign(&parts),
            "f1128388193e4dd1aa760827bd756a1b40b627676b5efe22c0e8297919bfa218"
        );
    }

    #[test]
    fn tampered_frames_are_rejected() {
        let signer = Signer::new(b"secret-key");
        let frames = signer.encode(&[], &sample());
        for i in 1..5 {
            let mut bad = frames.clone();
            bad[1 + i][0] ^= 1;
            assert!(signer.decode(&bad).is_err(), "frame {i} tampered");
        }
        let mut bad_sig = frames.clone();
        bad_sig[1][0] = if bad_sig[1][0] == b'0' { b'1' } else { b'0' };
        assert!(signer.decode(&bad_sig).is_err());
        let mut not_hex = frames.clone();
        not_hex[1] = b"zz".to_vec();
        assert!(signer.decode(&not_hex).is_err());
        // A different key is a bad signature too.
        assert!(Signer::new(b"other").decode(&frames).is_err());
        assert!(signer.decode(&frames[..5]).is_err(), "truncated");
        assert!(signer.decode(&frames[1..]).is_err(), "no delimiter");
    }

    #[test]
    fn empty_key_means_no_signature() {
        let signer = Signer::new(b"");
        let frames = signer.encode(&[], &sample());
        assert!(frames[1].is_empty());
        assert!(signer.decode(&frames).is_ok());
        // Signed messages are accepted too: there is nothing to check them against.
        let signed = Signer::new(b"k").encode(&[], &sample());
        assert!(signer.decode(&signed).is_ok());
    }

    #[test]
    fn debug_does_not_leak_the_key() {
        let shown = format!("{:?}", Signer::new(b"super-secret"));
        assert!(!shown.contains("super-secret"), "{shown}");
        assert_eq!(shown, "Signer { signing: true }");
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        let at = |s: u64, us: u64| {
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_700_000_000, 123_456), "2023-11-14T22:13:20.123456Z");
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
    }
}
