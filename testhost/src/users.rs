//! Who the client logs in as: the user running the tests, or a dedicated user whose shell
//! start-up files talk, as many real hosts' do (banners, `conda init` messages).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use nix::unistd::{chown, geteuid, User};

use crate::registry;
use crate::venv::run;

/// The dedicated user of [`TestUser::Chatty`].
pub const CHATTY_USER: &str = "sshpyk-chatty";
/// The dedicated user of [`TestUser::Password`], and its password.
pub const PASSWORD_USER: &str = "sshpyk-password";
pub const PASSWORD_USER_PASSWORD: &str = "sshpyk test password 1";
/// Printed on stdout by the chatty user's `~/.bashrc`, which Debian's bash reads for every ssh
/// session with a command (sshd runs `$SHELL -c COMMAND`).
pub const CHATTY_BASHRC_STDOUT: &str = "sshpyk-chatty: ~/.bashrc says hello on stdout";
/// Printed on stderr by the chatty user's `~/.bashrc`.
pub const CHATTY_BASHRC_STDERR: &str = "sshpyk-chatty: ~/.bashrc says hello on stderr";
/// Printed on stdout by the chatty user's `~/.profile`, read by login shells.
pub const CHATTY_PROFILE_STDOUT: &str = "sshpyk-chatty: ~/.profile says hello on stdout";
/// Printed on stderr by the chatty user's `~/.profile`.
pub const CHATTY_PROFILE_STDERR: &str = "sshpyk-chatty: ~/.profile says hello on stderr";

/// The Unix user the host's client configuration logs in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TestUser {
    /// Whoever runs the tests.
    #[default]
    Current,
    /// [`CHATTY_USER`], login shell /bin/bash, real home in /home, whose `~/.bashrc` and
    /// `~/.profile` each print a line on stdout and one on stderr. Created once per machine by
    /// the first host that needs it (needs root); the developer's own dotfiles are never touched.
    Chatty,
    /// [`PASSWORD_USER`], login shell /bin/sh, whose password is [`PASSWORD_USER_PASSWORD`]:
    /// for hosts that authenticate with a password (`PasswordAuthentication yes`). Created once
    /// per machine (needs root).
    Password,
}

impl TestUser {
    /// The login name.
    pub fn name(self) -> Result<String> {
        match self {
            TestUser::Current => User::from_uid(geteuid())
                .context("looking up the current user")?
                .map(|u| u.name)
                .or_else(|| std::env::var("USER").ok())
                .context("the current user has no name"),
            TestUser::Chatty => Ok(CHATTY_USER.to_string()),
            TestUser::Password => Ok(PASSWORD_USER.to_string()),
        }
    }

    /// Creates the user and its start-up files if missing. Parallel test processes serialise
    /// on the registry lock, so `useradd` runs once per machine.
    pub(crate) fn ensure_exists(self) -> Result<()> {
        if self == TestUser::Current {
            return Ok(());
        }
        let name = self.name()?;
        if !geteuid().is_root() {
            bail!("the test user {name} can only be created (and logged in as) by root");
        }
        let _lock = registry::lock()?;
        if self == TestUser::Password {
            return ensure_password_user();
        }
        if User::from_name(CHATTY_USER)?.is_none() {
            // `-p '*'`: no password can match, yet the account is not locked ('!'), which sshd
            // (without PAM) would refuse even for key logins.
            run(Command::new("useradd").args([
                "--create-home",
                "--shell",
                "/bin/bash",
                "--password",
                "*",
                "--comment",
                "sshpyk test user with talkative start-up files",
                CHATTY_USER,
            ]))?;
        }
        let user = User::from_name(CHATTY_USER)?
            .with_context(|| format!("{CHATTY_USER} missing right after useradd"))?;
        for (file, stdout, stderr) in [
            (".bashrc", CHATTY_BASHRC_STDOUT, CHATTY_BASHRC_STDERR),
            (".profile", CHATTY_PROFILE_STDOUT, CHATTY_PROFILE_STDERR),
        ] {
            let contents = format!(
                "# Written by sshpyk-testhost: start-up output that sshpyk must cope with.\n\
                 echo '{stdout}'\necho '{stderr}' >&2\n"
            );
            write_owned(&user.dir.join(file), &contents, &user)?;
        }
        Ok(())
    }

    /// Fails with an explanation when this user cannot import Jupyter from `venv` (say, a venv
    /// under /root, which other users cannot traverse).
    pub fn check_venv(self, venv: &Path) -> Result<()> {
        if self == TestUser::Current {
            return Ok(());
        }
        let python = venv.join("bin/python");
        let name = self.name()?;
        let out = Command::new("runuser")
            .args(["-u", &name, "--"])
            .arg(&python)
            .args(["-c", "import jupyter_client, ipykernel"])
            .stdin(Stdio::null())
            .output()
            .context("running runuser")?;
        if !out.status.success() {
            bail!(
                "{name} cannot use the test venv {}: the venv and the python it was \
                 made from must be reachable by other users (not under /root, say); delete it \
                 to have it rebuilt from /usr/bin/python3, or set SSHPYK_TEST_VENV: {}",
                venv.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Creates [`PASSWORD_USER`] if missing and (re)sets its password. Under the registry lock.
fn ensure_password_user() -> Result<()> {
    if User::from_name(PASSWORD_USER)?.is_none() {
        run(Command::new("useradd").args([
            "--create-home",
            "--shell",
            "/bin/sh",
            "--comment",
            "sshpyk test user that logs in with a password",
            PASSWORD_USER,
        ]))?;
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running chpasswd")?;
    {
        use std::io::Write;
        let mut stdin = chpasswd.stdin.take().context("chpasswd's stdin")?;
        writeln!(stdin, "{PASSWORD_USER}:{PASSWORD_USER_PASSWORD}")
            .context("writing to chpasswd")?;
    }
    let status = chpasswd.wait().context("waiting for chpasswd")?;
    if !status.success() {
        bail!("chpasswd failed ({status}) setting the password of {PASSWORD_USER}");
    }
    Ok(())
}

/// Replaces `path` (atomically, for sessions reading it meanwhile) unless it already holds
/// `contents`, and gives it to `user`.
fn write_owned(path: &Path, contents: &str, user: &User) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("sshpyk-testhost.tmp");
    fs::write(&tmp, contents)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)))
        .with_context(|| format!("writing {}", tmp.display()))?;
    chown(&tmp, Some(user.uid), Some(user.gid))
        .with_context(|| format!("giving {} to {}", tmp.display(), user.name))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}
