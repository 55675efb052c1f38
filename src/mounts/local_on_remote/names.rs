//! File names that are not UTF-8, on their way in. russh-sftp decodes every name lossily, so
//! `a\xff` and `a\xfe` would both reach the server as `a\u{FFFD}`: one local file for two remote
//! names. Requests are therefore checked as raw packets, before russh-sftp decodes them, and one
//! that names a path with bytes that are not UTF-8 is rewritten into the private extended
//! request [`NAME_NOT_UTF8`], with the same id, which the server refuses.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The request a packet naming a non-UTF-8 path becomes.
pub(crate) const NAME_NOT_UTF8: &str = "name-not-utf8@sshpyk";

/// Largest request passed on: russh-sftp's own limit (256 KiB); a longer one is a broken client.
const MAX_PACKET: u32 = 256 * 1024;

const SSH_FXP_EXTENDED: u8 = 200;

/// How many path strings follow the request id, by request type.
fn paths_in(kind: u8) -> usize {
    match kind {
        // OPEN, LSTAT, SETSTAT, OPENDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, READLINK
        3 | 7 | 9 | 11 | 13 | 14 | 15 | 16 | 17 | 19 => 1,
        // RENAME, SYMLINK
        18 | 20 => 2,
        // Handles are ours (ASCII); extended requests decode their names strictly.
        _ => 0,
    }
}

/// Copies requests from `from` to `to` until `from` ends, rewriting those that name a path that
/// is not UTF-8, then shuts `to` down so that the server ends too. Ends early on an oversized
/// packet.
pub(crate) async fn check(from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    forward(from, &mut to).await;
    // Dropping `to` is not enough: the two ends of a simplex pipe share one buffer.
    let _ = to.shutdown().await;
}

async fn forward(mut from: impl AsyncRead + Unpin, to: &mut (impl AsyncWrite + Unpin)) {
    loop {
        let Ok(len) = from.read_u32().await else {
            return;
        };
        if len > MAX_PACKET {
            tracing::warn!("mount: the remote sent an SFTP packet of {len} bytes; closing");
            return;
        }
        let mut packet = vec![0; len as usize];
        if from.read_exact(&mut packet).await.is_err() {
            return;
        }
        refuse_names_not_utf8(&mut packet);
        let mut framed = Vec::with_capacity(4 + packet.len());
        framed.extend_from_slice(&(packet.len() as u32).to_be_bytes());
        framed.extend_from_slice(&packet);
        if to.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// `packet`: type, id, fields (without the length). A malformed packet is left for russh-sftp
/// to answer.
fn refuse_names_not_utf8(packet: &mut Vec<u8>) {
    let Some(&kind) = packet.first() else { return };
    let mut at = 5;
    for _ in 0..paths_in(kind) {
        let Some(len) = packet.get(at..at + 4) else {
            return;
        };
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(name) = packet.get(at + 4..at + 4 + len) else {
            return;
        };
        if std::str::from_utf8(name).is_err() {
            tracing::debug!(
                "mount: refusing a file name that is not UTF-8: {:?}",
                String::from_utf8_lossy(name)
            );
            let id = packet[1..5].to_vec();
            packet.clear();
            packet.push(SSH_FXP_EXTENDED);
            packet.extend_from_slice(&id);
            packet.extend_from_slice(&(NAME_NOT_UTF8.len() as u32).to_be_bytes());
            packet.extend_from_slice(NAME_NOT_UTF8.as_bytes());
            return;
        }
        at += 4 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &[u8]) -> Vec<u8> {
        [&(s.len() as u32).to_be_bytes()[..], s].concat()
    }

    #[test]
    fn only_requests_naming_a_path_that_is_not_utf8_are_rewritten() {
        let id = 7u32.to_be_bytes();
        let refused = [
            &[SSH_FXP_EXTENDED][..],
            &id,
            &string(NAME_NOT_UTF8.as_bytes()),
        ]
        .concat();
        // RENAME with a bad second name.
        let mut rename = [&[18][..], &id, &string(b"/ok"), &string(b"/a\xff")].concat();
        refuse_names_not_utf8(&mut rename);
        assert_eq!(rename, refused);
        // Valid names, including U+FFFD itself, pass untouched.
        let valid = [&[3][..], &id, &string("/a\u{FFFD}".as_bytes()), &[0; 8]].concat();
        let mut open = valid.clone();
        refuse_names_not_utf8(&mut open);
        assert_eq!(open, valid);
        // WRITE carries data, not names.
        let write = [&[6][..], &id, &string(b"1"), &[0; 8], &string(b"\xff\xfe")].concat();
        let mut unchanged = write.clone();
        refuse_names_not_utf8(&mut unchanged);
        assert_eq!(unchanged, write);
        // Truncated: left for russh-sftp.
        let mut short = vec![17, 0, 0, 0, 7, 0, 0, 0, 9, b'\xff'];
        refuse_names_not_utf8(&mut short);
        assert_eq!(short, [17, 0, 0, 0, 7, 0, 0, 0, 9, b'\xff']);
    }

    #[tokio::test]
    async fn the_end_of_the_requests_reaches_the_server() {
        let (mut checked, to_checked) = tokio::io::simplex(1024);
        check(tokio::io::empty(), to_checked).await;
        let mut rest = Vec::new();
        let end = std::time::Duration::from_secs(5);
        tokio::time::timeout(end, checked.read_to_end(&mut rest))
            .await
            .expect("the server would wait forever")
            .unwrap();
    }
}
