//! The launcher's end of a mount's session: the session's stdout and stdin become one SFTP
//! stream, served on a thread of its own.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::handle_budget::HandleBudget;
use super::{export, sftp, wrapper, MountSpec};
use crate::error::{Error, Result};

/// How much a login script may print before the SFTP stream starts.
const MAX_NOISE: usize = 64 * 1024;

/// Serves one mount's SFTP on a thread of its own with its own small runtime: file system calls
/// are made inline there (fast), and a slow disk never stalls the launcher's runtime.
pub(crate) fn spawn_server(
    spec: &MountSpec,
    stdout: OwnedFd,
    stdin: OwnedFd,
    export: Arc<export::Export>,
    budget: Arc<HandleBudget>,
    stopped: oneshot::Receiver<()>,
) -> Result<()> {
    let what = format!("mount {}", spec.remote);
    std::thread::Builder::new()
        .name("sshpyk-sftp".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => return tracing::warn!("{what}: cannot start the SFTP server: {e}"),
            };
            runtime.block_on(serve(stdout, stdin, export, budget, stopped, &what));
        })
        .map_err(Error::io("cannot start a thread for the SFTP server"))?;
    Ok(())
}

/// Reads the session's stdout up to the start line, then serves SFTP on it until `stopped` (or
/// until the session ends).
async fn serve(
    stdout: OwnedFd,
    stdin: OwnedFd,
    export: Arc<export::Export>,
    budget: Arc<HandleBudget>,
    mut stopped: oneshot::Receiver<()>,
    what: &str,
) {
    let pipes = pipe::Receiver::from_owned_fd(stdout)
        .and_then(|r| Ok((r, pipe::Sender::from_owned_fd(stdin)?)));
    let (reader, writer) = match pipes {
        Ok(pipes) => pipes,
        Err(e) => return tracing::warn!("{what}: cannot serve the session's pipes: {e}"),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut line = Vec::new();
    let mut noise = 0;
    loop {
        line.clear();
        let read = tokio::select! {
            read = reader.read_until(b'\n', &mut line) => read,
            _ = &mut stopped => return,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if line == wrapper::SFTP_START => break,
            Ok(n) => {
                tracing::debug!("remote: {}", String::from_utf8_lossy(&line).trim_end());
                noise += n;
                if noise > MAX_NOISE {
                    tracing::warn!(
                        "{what}: the remote printed too much before the SFTP stream started"
                    );
                    return;
                }
            }
        }
    }
    // russh-sftp runs the server as a task of this runtime; the stream tells when it is over.
    let (done, over) = oneshot::channel();
    let stream = Stream {
        reader,
        writer,
        stopped: Some(stopped),
        _done: done,
    };
    sftp::run(
        stream,
        sftp::SftpServer::new(export, budget, what.to_string()),
    )
    .await;
    let _ = over.await;
}

/// The session's stdout and stdin as one SFTP stream, which reads as ended once asked to stop:
/// the server then drops it, which closes sshfs's input.
struct Stream {
    reader: BufReader<pipe::Receiver>,
    writer: pipe::Sender,
    stopped: Option<oneshot::Receiver<()>>,
    /// Dropped with the stream, when the server is done with it.
    _done: oneshot::Sender<()>,
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(stopped) = self.stopped.as_mut() {
            if Pin::new(stopped).poll(cx).is_ready() {
                self.stopped = None;
            }
        }
        if self.stopped.is_none() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}
