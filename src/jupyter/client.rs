//! A small async client for one kernel: DEALERs for shell and control, a SUB for iopub and a
//! heartbeat REQ made on first use. Every call is bounded by a timeout, since the `zeromq`
//! crate has no send/receive timeouts of its own.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};
use tracing::debug;
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, ReqSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqError,
    ZmqMessage,
};

use super::wire::{Message, Signer};
use crate::error::{Error, Result};
use crate::jupyter::connection::{Channel, ConnectionInfo};

/// How often `wait_for_ready` resends kernel_info_request, as jupyter_client does.
const READY_RETRY: Duration = Duration::from_millis(200);

/// The iopub messages this client reads, by `msg_type`; every other is `Other`.
#[derive(Debug, Deserialize)]
#[serde(tag = "msg_type", content = "content", rename_all = "snake_case")]
enum Iopub {
    Stream {
        name: StreamName,
        text: String,
    },
    ExecuteResult {
        data: MimeBundle,
    },
    Status {
        execution_state: ExecutionState,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StreamName {
    Stdout,
    Stderr,
}

#[derive(Debug, Deserialize)]
struct MimeBundle {
    #[serde(rename = "text/plain")]
    text_plain: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum ExecutionState {
    Idle,
    /// busy, starting: not what `execute` waits for.
    #[serde(other)]
    Other,
}

/// A reply's `status`, with what an error carries.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum ReplyStatus {
    Ok,
    Error { ename: String, evalue: String },
    Aborted,
}

impl Iopub {
    /// `msg` typed; a message of a known type with a malformed content is `Other`.
    fn of(msg: &Message) -> Self {
        let tagged = json!({ "msg_type": msg.msg_type(), "content": msg.content });
        serde_json::from_value(tagged).unwrap_or(Iopub::Other)
    }
}

/// What one `execute` produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecuteResult {
    /// "ok", "error" or "aborted", from execute_reply.
    pub status: String,
    /// Concatenated iopub `stream` output.
    pub stdout: String,
    pub stderr: String,
    /// text/plain of the execute_result, if the code produced a value.
    pub result: Option<String>,
    /// (ename, evalue) when status is "error".
    pub error: Option<(String, String)>,
}

pub struct KernelClient {
    signer: Signer,
    session: String,
    shell: DealerSocket,
    control: DealerSocket,
    iopub: SubSocket,
    hb_endpoint: String,
    /// None until first used, and again after a missed echo: REQ must strictly alternate.
    hb: Option<ReqSocket>,
}

impl KernelClient {
    /// Connects shell, control and iopub, each within `timeout`. The iopub subscription may not
    /// be live yet when this returns: call `wait_for_ready` before relying on iopub.
    pub async fn connect(info: &ConnectionInfo, timeout: Duration) -> Result<Self> {
        let signer = Signer::from_info(info)?;
        let session = uuid::Uuid::new_v4().to_string();
        // ipykernel routes replies by the DEALER's identity; the session id is a unique one.
        let identity =
            PeerIdentity::try_from(session.as_bytes()).expect("a uuid is a valid identity");
        let mut shell = DealerSocket::with_options(options(timeout, Some(identity.clone())));
        let mut control = DealerSocket::with_options(options(timeout, Some(identity)));
        let mut iopub = SubSocket::with_options(options(timeout, None));
        // Remembered by the socket and sent on every (re)connection.
        iopub
            .subscribe("")
            .await
            .map_err(|e| lost(Channel::Iopub, e))?;
        tokio::try_join!(
            connect_to(&mut shell, info, Channel::Shell),
            connect_to(&mut control, info, Channel::Control),
            connect_to(&mut iopub, info, Channel::Iopub),
        )?;
        Ok(KernelClient {
            signer,
            session,
            shell,
            control,
            iopub,
            hb_endpoint: info.endpoint(Channel::Hb),
            hb: None,
        })
    }

    /// Sends kernel_info_request every 200 ms until one is answered on shell and one has shown
    /// up on iopub (so the subscription is live), like jupyter_client's `wait_for_ready`.
    /// Returns the kernel_info_reply content.
    pub async fn wait_for_ready(&mut self, timeout: Duration) -> Result<Value> {
        let KernelClient {
            signer,
            session,
            shell,
            iopub,
            ..
        } = self;
        let mut sent = HashSet::new();
        let mut next_send = Instant::now();
        let (mut reply, mut iopub_live) = (None, false);
        let wait = async {
            loop {
                if iopub_live {
                    if let Some(content) = reply.take() {
                        return Ok(content);
                    }
                }
                tokio::select! {
                    _ = sleep_until(next_send) => {
                        let request = Message::new(session, "kernel_info_request", json!({}));
                        sent.insert(request.msg_id().to_owned());
                        let frames = to_zmq(signer.encode(&[], &request));
                        shell.send(frames).await.map_err(|e| lost(Channel::Shell, e))?;
                        next_send += READY_RETRY;
                    }
                    msg = recv(shell, signer, Channel::Shell) => {
                        let msg = msg?;
                        if msg.parent_msg_id().is_some_and(|id| sent.contains(id)) {
                            reply = Some(msg.content);
                        }
                    }
                    msg = recv(iopub, signer, Channel::Iopub) => {
                        let msg = msg?;
                        if matches!(Iopub::of(&msg), Iopub::Status { .. })
                            && msg.parent_msg_id().is_some_and(|id| sent.contains(id))
                        {
                            iopub_live = true;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| timed_out("waiting for the kernel to be ready", timeout))?
    }

    /// kernel_info_request on shell; returns the reply content.
    pub async fn kernel_info(&mut self, timeout: Duration) -> Result<Value> {
        let reply = self
            .request(Channel::Shell, "kernel_info_request", json!({}), timeout)
            .await?;
        Ok(reply.content)
    }

    /// Runs `code` and collects its output until both the execute_reply and the iopub
    /// `idle` status for it have arrived.
    pub async fn execute(&mut self, code: &str, timeout: Duration) -> Result<ExecuteResult> {
        let request = Message::new(
            &self.session,
            "execute_request",
            json!({
                "code": code,
                "silent": false,
                "store_history": true,
                "user_expressions": {},
                "allow_stdin": false,
                // One request at a time: nothing queued behind it to abort. (With true, ipykernel 7
                // may abort the next request when it arrives right after an error reply.)
                "stop_on_error": false,
            }),
        );
        let id = request.msg_id();
        let frames = to_zmq(self.signer.encode(&[], &request));
        let KernelClient {
            signer,
            shell,
            iopub,
            ..
        } = self;
        let mut out = ExecuteResult::default();
        let collect = async {
            shell
                .send(frames)
                .await
                .map_err(|e| lost(Channel::Shell, e))?;
            let (mut replied, mut idle) = (false, false);
            while !(replied && idle) {
                tokio::select! {
                    msg = recv(shell, signer, Channel::Shell), if !replied => {
                        let msg = msg?;
                        if msg.parent_msg_id() == Some(id) {
                            replied = true;
                            let status = reply_status(&msg)?;
                            out.status = status.name().to_owned();
                            if let ReplyStatus::Error { ename, evalue } = status {
                                out.error = Some((ename, evalue));
                            }
                        }
                    }
                    msg = recv(iopub, signer, Channel::Iopub), if !idle => {
                        let msg = msg?;
                        if msg.parent_msg_id() == Some(id) {
                            match Iopub::of(&msg) {
                                Iopub::Stream { name: StreamName::Stdout, text } => out.stdout += &text,
                                Iopub::Stream { name: StreamName::Stderr, text } => out.stderr += &text,
                                Iopub::ExecuteResult { data } => out.result = data.text_plain,
                                Iopub::Status { execution_state } => {
                                    idle = execution_state == ExecutionState::Idle
                                }
                                Iopub::Other => {}
                            }
                        }
                    }
                }
            }
            Ok::<_, Error>(())
        };
        tokio::time::timeout(timeout, collect)
            .await
            .map_err(|_| timed_out("execute_request", timeout))??;
        Ok(out)
    }

    /// interrupt_request on control; ipykernel then raises KeyboardInterrupt in the running code.
    pub async fn interrupt(&mut self, timeout: Duration) -> Result<()> {
        let reply = self
            .request(Channel::Control, "interrupt_request", json!({}), timeout)
            .await?;
        expect_ok(&reply)
    }

    /// shutdown_request on control; the kernel process exits soon after replying.
    pub async fn shutdown(&mut self, restart: bool, timeout: Duration) -> Result<()> {
        let reply = self
            .request(
                Channel::Control,
                "shutdown_request",
                json!({ "restart": restart }),
                timeout,
            )
            .await?;
        expect_ok(&reply)
    }

    /// Sends b"ping" on hb and expects it back. `Ok(false)` when no echo came within
    /// `timeout` (including not connecting in time); `Err` when the channel broke.
    pub async fn heartbeat(&mut self, timeout: Duration) -> Result<bool> {
        const PING: &[u8] = b"ping";
        // Taken out so that a timeout leaves None: a REQ stuck mid-request is unusable.
        let hb = self.hb.take();
        let endpoint = &self.hb_endpoint;
        let exchange = async {
            let mut socket = match hb {
                Some(socket) => socket,
                None => {
                    let mut socket = ReqSocket::with_options(options(timeout, None));
                    socket.connect(endpoint).await?;
                    socket
                }
            };
            socket.send(ZmqMessage::from(PING.to_vec())).await?;
            let echo = socket.recv().await?;
            Ok::<_, ZmqError>((socket, echo))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) | Ok(Err(ZmqError::ConnectTimeout(_))) => Ok(false),
            Ok(Err(e)) => Err(lost(Channel::Hb, e)),
            Ok(Ok((socket, echo))) => {
                self.hb = Some(socket);
                Ok(echo.len() == 1 && echo.get(0).is_some_and(|f| f.as_ref() == PING))
            }
        }
    }

    /// Closes every socket (dropping the client does the same).
    pub fn close(self) {
        drop(self)
    }

    /// Sends one request on shell or control and waits for the reply to it, discarding
    /// replies to earlier requests that timed out.
    async fn request(
        &mut self,
        channel: Channel,
        msg_type: &str,
        content: Value,
        timeout: Duration,
    ) -> Result<Message> {
        let socket = match channel {
            Channel::Shell => &mut self.shell,
            Channel::Control => &mut self.control,
            other => unreachable!("{} is not a request channel", other.name()),
        };
        let request = Message::new(&self.session, msg_type, content);
        let frames = to_zmq(self.signer.encode(&[], &request));
        let signer = &self.signer;
        let exchange = async {
            socket.send(frames).await.map_err(|e| lost(channel, e))?;
            loop {
                let reply = recv(socket, signer, channel).await?;
                if reply.parent_msg_id() == Some(request.msg_id()) {
                    return Ok(reply);
                }
                debug!(
                    msg_type = reply.msg_type(),
                    channel = channel.name(),
                    "discarding a reply to an earlier request"
                );
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| timed_out(&format!("{msg_type} on {}", channel.name()), timeout))?
    }
}

fn options(connect_timeout: Duration, identity: Option<PeerIdentity>) -> SocketOptions {
    let mut options = SocketOptions::default();
    // The crate's default is to keep retrying for 30 s.
    options.connect_timeout(connect_timeout);
    if let Some(identity) = identity {
        options.peer_identity(identity);
    }
    options
}

async fn connect_to<S: Socket>(
    socket: &mut S,
    info: &ConnectionInfo,
    channel: Channel,
) -> Result<()> {
    let endpoint = info.endpoint(channel);
    socket.connect(&endpoint).await.map_err(|e| match e {
        ZmqError::ConnectTimeout(after) => Error::Timeout {
            what: format!(
                "connecting to the kernel's {} channel at {endpoint}",
                channel.name()
            ),
            secs: after.as_secs_f64(),
            hint: "is the kernel (or its tunnel) running?".into(),
        },
        e => Error::KernelLost(format!(
            "cannot connect to the kernel's {} channel at {endpoint}: {e}",
            channel.name()
        )),
    })
}

async fn recv<S: SocketRecv>(socket: &mut S, signer: &Signer, channel: Channel) -> Result<Message> {
    let frames = socket
        .recv()
        .await
        .map_err(|e| lost(channel, e))?
        .into_vec();
    Ok(signer.decode(&frames)?.1)
}

fn to_zmq(frames: Vec<Vec<u8>>) -> ZmqMessage {
    let mut frames = frames.into_iter();
    let mut message = ZmqMessage::from(frames.next().expect("an encoded message has frames"));
    for frame in frames {
        message.push_back(frame.into());
    }
    message
}

impl ReplyStatus {
    fn name(&self) -> &'static str {
        match self {
            ReplyStatus::Ok => "ok",
            ReplyStatus::Error { .. } => "error",
            ReplyStatus::Aborted => "aborted",
        }
    }
}

fn reply_status(reply: &Message) -> Result<ReplyStatus> {
    serde_json::from_value(reply.content.clone()).map_err(|e| {
        Error::Remote(format!(
            "the kernel answered {} with no valid status ({e}): {}",
            reply.msg_type(),
            reply.content
        ))
    })
}

fn expect_ok(reply: &Message) -> Result<()> {
    match reply_status(reply)? {
        ReplyStatus::Ok => Ok(()),
        status => Err(Error::Remote(format!(
            "the kernel answered {} with status {:?}: {}",
            reply.msg_type(),
            status.name(),
            reply.content
        ))),
    }
}

fn lost(channel: Channel, e: ZmqError) -> Error {
    Error::KernelLost(format!(
        "the kernel's {} channel failed: {e}",
        channel.name()
    ))
}

fn timed_out(what: &str, timeout: Duration) -> Error {
    Error::Timeout {
        what: what.to_owned(),
        secs: timeout.as_secs_f64(),
        hint: "the kernel may be busy, still starting, or gone".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::net::TcpListener;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    const T: Duration = Duration::from_secs(30);

    /// A running ipykernel, killed when dropped whatever happened; its log is shown on failure.
    struct Kernel {
        child: Child,
        dir: tempfile::TempDir,
        info: ConnectionInfo,
    }

    impl Drop for Kernel {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if std::thread::panicking() {
                let log = std::fs::read_to_string(self.dir.path().join("kernel.log"));
                eprintln!("--- kernel log ---\n{}", log.unwrap_or_default());
            }
        }
    }

    fn python() -> PathBuf {
        if let Some(python) = std::env::var_os("SSHPYK_TEST_PYTHON") {
            return python.into();
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        ["target/venv-probe/bin/python", "target/test-venv/bin/python"]
            .map(|p| root.join(p))
            .into_iter()
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!(
                    "no Python with ipykernel for this test: set SSHPYK_TEST_PYTHON, or run \
                     `python3 -m venv target/test-venv && target/test-venv/bin/pip install ipykernel`"
                )
            })
    }

    fn start_kernel() -> Kernel {
        // Held together so the five ports differ; released just before the kernel binds them.
        let listeners: Vec<_> = (0..5)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let p: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let text = json!({
            "ip": "127.0.0.1",
            "transport": "tcp",
            "shell_port": p[0],
            "iopub_port": p[1],
            "stdin_port": p[2],
            "control_port": p[3],
            "hb_port": p[4],
            "key": uuid::Uuid::new_v4().to_string(),
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        })
        .to_string();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kernel.json");
        std::fs::write(&file, &text).unwrap();
        let log = File::create(dir.path().join("kernel.log")).unwrap();
        let python = python();
        let child = Command::new(&python)
            .args(["-m", "ipykernel_launcher", "-f"])
            .arg(&file)
            .env("IPYTHONDIR", dir.path().join("ipython"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // ipykernel may signal its whole process group on interrupt: keep ours out of it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        Kernel {
            child,
            dir,
            info: ConnectionInfo::parse(&text).unwrap(),
        }
    }

    #[tokio::test]
    async fn connect_times_out_when_nothing_listens() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let info = ConnectionInfo {
            ip: "127.0.0.1".into(),
            transport: "tcp".into(),
            shell_port: port,
            iopub_port: port,
            stdin_port: port,
            control_port: port,
            hb_port: port,
            key: "k".into(),
            signature_scheme: "hmac-sha256".into(),
            kernel_name: String::new(),
        };
        let started = Instant::now();
        let err = KernelClient::connect(&info, Duration::from_millis(300))
            .await
            .err()
            .expect("nothing listens");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn drives_a_real_ipykernel() {
        let mut kernel = start_kernel();
        let mut client = KernelClient::connect(&kernel.info, T).await.unwrap();
        let info = client
            .wait_for_ready(Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(info["status"], "ok", "{info}");
        assert!(info["protocol_version"].as_str().unwrap().starts_with("5."));
        assert_eq!(
            client.kernel_info(T).await.unwrap()["implementation"],
            "ipython"
        );

        let r = client.execute("x = 6*7", T).await.unwrap();
        assert_eq!(
            (r.status.as_str(), r.stdout.as_str(), &r.result),
            ("ok", "", &None)
        );
        let r = client.execute("print(x)", T).await.unwrap();
        assert_eq!((r.status.as_str(), r.stdout.as_str()), ("ok", "42\n"));
        let r = client.execute("x", T).await.unwrap();
        assert_eq!(r.result.as_deref(), Some("42"));
        let r = client
            .execute("import sys; sys.stderr.write('oops\\n')", T)
            .await
            .unwrap();
        assert_eq!(r.stderr, "oops\n");
        let r = client.execute("1/0", T).await.unwrap();
        assert_eq!(r.status, "error");
        assert_eq!(r.error.unwrap().0, "ZeroDivisionError");

        assert!(client.heartbeat(Duration::from_secs(5)).await.unwrap());
        assert!(
            client.heartbeat(Duration::from_secs(5)).await.unwrap(),
            "REQ reused"
        );

        // execute holds `client`, so a second client interrupts, as a launcher would.
        let mut other = KernelClient::connect(&kernel.info, T).await.unwrap();
        let started = Instant::now();
        let (run, interrupted) =
            tokio::join!(client.execute("import time; time.sleep(30)", T), async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                other.interrupt(T).await
            });
        interrupted.unwrap();
        let run = run.unwrap();
        assert_eq!(run.status, "error", "{run:?}");
        assert_eq!(run.error.unwrap().0, "KeyboardInterrupt");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        other.close();

        client.shutdown(false, T).await.unwrap();
        // A liveness bound, generous for a loaded machine (ipykernel usually exits in 0.1 s).
        let deadline = Instant::now() + Duration::from_secs(20);
        while kernel.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "kernel still running 20 s after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!matches!(
            client.heartbeat(Duration::from_secs(1)).await,
            Ok(true)
        ));
        client.close();
    }
}
