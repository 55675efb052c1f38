//! The launcher's side of the sync agent's protocol (agent.py): each message is
//! `u32 length | JSON`, typed here; a `put` or `data` message is followed by the file's bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest JSON part of a message the agent may send (an index of 20,000 entries is a few
/// MiB); files come apart from it.
const MAX_JSON: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    File,
    Dir,
    Link,
}

/// One entry as either side sees it: kind, size, mtime (ns), mode, link target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta(
    pub(crate) Kind,
    pub(crate) u64,
    pub(crate) i64,
    pub(crate) u32,
    pub(crate) Option<String>,
);

impl Meta {
    pub(crate) fn kind(&self) -> Kind {
        self.0
    }

    pub(crate) fn size(&self) -> u64 {
        self.1
    }

    /// Whether both sides hold the same thing here: a file of the same size and mtime (each
    /// side sets the other's mtime on what it writes), a directory, a link to the same target.
    pub(crate) fn same(a: Option<&Meta>, b: Option<&Meta>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => match (a.0, b.0) {
                (Kind::File, Kind::File) => a.1 == b.1 && a.2 == b.2,
                (Kind::Dir, Kind::Dir) => true,
                (Kind::Link, Kind::Link) => a.4 == b.4,
                _ => false,
            },
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ToAgent {
    /// Followed by `size` bytes. Every change names what it `expect`s to replace: the agent
    /// refuses it when something else is there ([`FromAgent::Refused`]).
    Put {
        path: String,
        size: u64,
        mode: u32,
        mtime_ns: i64,
        expect: Option<Meta>,
    },
    Mkdir {
        path: String,
        expect: Option<Meta>,
    },
    Symlink {
        path: String,
        target: String,
        expect: Option<Meta>,
    },
    Remove {
        path: String,
        expect: Option<Meta>,
    },
    Get {
        path: String,
    },
    /// Scan now; answered with [`FromAgent::Flushed`] after what the scan found.
    Flush,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum FromAgent {
    Index {
        entries: BTreeMap<String, Meta>,
    },
    /// What the kernel (or anyone on the remote) changed; `None`: removed.
    Changed {
        entries: BTreeMap<String, Option<Meta>>,
    },
    /// A file asked for; followed by `size` bytes (`meta` is `None` when it is gone).
    Data {
        path: String,
        size: u64,
        meta: Option<Meta>,
    },
    Flushed,
    /// A change applied.
    Applied {
        path: String,
    },
    /// A change not applied: `meta` is there, not what the launcher `expected`.
    Refused {
        path: String,
        meta: Option<Meta>,
        expected: Option<Meta>,
    },
    Failed {
        path: Option<String>,
        message: String,
    },
    /// The copy cannot be made (one line that says what to fix).
    Error {
        message: String,
    },
}

pub(crate) async fn send<W: AsyncWrite + Unpin>(
    to: &mut W,
    msg: &ToAgent,
    data: &[u8],
) -> std::io::Result<()> {
    let json = serde_json::to_vec(msg).expect("messages serialise");
    let mut buf = Vec::with_capacity(4 + json.len() + data.len());
    buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    buf.extend_from_slice(&json);
    buf.extend_from_slice(data);
    to.write_all(&buf).await
}

/// The line the agent writes before its first message.
const MARKER: &[u8] = b"sshpyk-sync-1\n";
/// What a login shell may print before the agent starts (banners, notices).
const BEFORE_MARKER: usize = 16 << 20;

/// Skips what the remote login shell printed before the agent's marker line.
pub(crate) async fn skip_to_marker<R: AsyncBufRead + Unpin>(from: &mut R) -> std::io::Result<()> {
    let mut skipped = 0;
    loop {
        let mut line = Vec::new();
        let n = crate::bounded::read_line(from, &mut line, crate::bounded::MAX_LINE).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the sync agent ended before it started",
            ));
        }
        if line == MARKER {
            return Ok(());
        }
        skipped += n;
        if skipped > BEFORE_MARKER {
            return Err(invalid(format!(
                "more than {} MiB before it started",
                BEFORE_MARKER >> 20
            )));
        }
    }
}

/// The next message and the bytes after it; `Ok(None)` at the end.
pub(crate) async fn receive<R: AsyncRead + Unpin>(
    from: &mut R,
    max_file: u64,
) -> std::io::Result<Option<(FromAgent, Vec<u8>)>> {
    let mut len = [0u8; 4];
    if from.read_exact(&mut len).await.is_err() {
        return Ok(None);
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_JSON {
        return Err(invalid(format!("a message of {len} bytes")));
    }
    let mut json = vec![0; len];
    from.read_exact(&mut json).await?;
    let msg: FromAgent = serde_json::from_slice(&json)
        .map_err(|e| invalid(format!("a message sshpyk does not know: {e}")))?;
    let mut data = Vec::new();
    if let FromAgent::Data { size, .. } = &msg {
        if *size > max_file {
            return Err(invalid(format!("a file of {size} bytes")));
        }
        data.resize(*size as usize, 0);
        from.read_exact(&mut data).await?;
    }
    Ok(Some((msg, data)))
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the sync agent sent {what}"),
    )
}
