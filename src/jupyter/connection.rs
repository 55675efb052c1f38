//! The Jupyter connection file: what jupyter_client (or VS Code) hands the launcher.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The one signature scheme we implement; anything else is refused rather than guessed.
pub const SIGNATURE_SCHEME: &str = "hmac-sha256";

/// The five kernel channels, in connection-file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Shell,
    Iopub,
    Stdin,
    Control,
    Hb,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Shell,
        Channel::Iopub,
        Channel::Stdin,
        Channel::Control,
        Channel::Hb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Channel::Shell => "shell",
            Channel::Iopub => "iopub",
            Channel::Stdin => "stdin",
            Channel::Control => "control",
            Channel::Hb => "hb",
        }
    }
}

/// A parsed connection file. Only the `tcp` transport is accepted locally: the five
/// ports are what the launcher binds and forwards.
#[derive(Clone, Deserialize)]
pub struct ConnectionInfo {
    pub ip: String,
    pub transport: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    pub key: String,
    pub signature_scheme: String,
    #[serde(default)]
    pub kernel_name: String,
}

// The key is a secret: never let a `{:?}` print it.
impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("ip", &self.ip)
            .field("transport", &self.transport)
            .field("ports", &self.ports())
            .field("key", &"<redacted>")
            .field("signature_scheme", &self.signature_scheme)
            .finish()
    }
}

impl ConnectionInfo {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConnectionFile {
            path: path.to_owned(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text).map_err(|reason| Error::ConnectionFile {
            path: path.to_owned(),
            reason,
        })
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let info: ConnectionInfo =
            serde_json::from_str(text).map_err(|e| format!("not a valid connection file: {e}"))?;
        if info.transport != "tcp" {
            return Err(format!(
                "transport '{}' is not supported (only 'tcp' can be forwarded)",
                info.transport
            ));
        }
        if info.signature_scheme != SIGNATURE_SCHEME {
            return Err(format!(
                "signature_scheme '{}' is not supported (only '{SIGNATURE_SCHEME}')",
                info.signature_scheme
            ));
        }
        if info.ports().iter().any(|(_, p)| *p == 0) {
            return Err("a port is 0: the launcher needs the five ports chosen in advance".into());
        }
        if info.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("ip '{}' is not an IP address", info.ip));
        }
        Ok(info)
    }

    pub fn port(&self, channel: Channel) -> u16 {
        match channel {
            Channel::Shell => self.shell_port,
            Channel::Iopub => self.iopub_port,
            Channel::Stdin => self.stdin_port,
            Channel::Control => self.control_port,
            Channel::Hb => self.hb_port,
        }
    }

    pub fn ports(&self) -> [(Channel, u16); 5] {
        Channel::ALL.map(|c| (c, self.port(c)))
    }

    /// `tcp://ip:port` for a channel, as a zmq client connects to it.
    pub fn endpoint(&self, channel: Channel) -> String {
        format!("tcp://{}:{}", self.ip, self.port(channel))
    }
}
