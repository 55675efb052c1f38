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
/// Printed on stdout by the chatty user's `~/.bashrc`, which Debian's bash reads for every ssh
/// session with a command (sshd runs `$SHELL -c COMMAND`).
pub const CHATTY_BASHRC_STDOUT: &str = "sshpyk-chatty: ~/.bashrc says hello on stdout";
/// Printed on stderr by the chatty user's `~/.bashrc`.
pub const CHATTY_BASHRC_STDERR: &str = "sshpyk-chatty: ~/.bashrc says hello on stderr";
/// Printed on stdout by the chatty user's `~/.profile`, read by login shells.
pub const CHATTY_PROFILE_STDOUT: &str = "sshpyk-chatty: ~/.profile says hello on stdout";
/// Printed on stderr by the chatty user's `~/.profile`.
pub const CHATTY_PROFILE_STDERR: &str = "sshpyk-chatty: ~/.profile says hello on stderr";
/// The dedicated user of [`TestUser::Tcsh`].
pub const TCSH_USER: &str = "sshpyk-tcsh";
/// The dedicated user of [`TestUser::Fish`].
pub const FISH_USER: &str = "sshpyk-fish";
/// The dedicated user of [`TestUser::Password`], and its password.
pub const PASSWORD_USER: &str = "sshpyk-password";
pub const PASSWORD_USER_PASSWORD: &str = "sshpyk test password 1";

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
    /// [`TCSH_USER`], login shell /bin/tcsh, whose `~/.tcshrc` (read for every session) prints a
    /// line on stdout: a login shell that does not read POSIX sh.
    Tcsh,
    /// [`FISH_USER`], login shell /usr/bin/fish, whose `config.fish` prints a line on stdout.
    Fish,
    /// [`PASSWORD_USER`], login shell /bin/sh, whose password is [`PASSWORD_USER_PASSWORD`]:
    /// for hosts that authenticate with a password (`PasswordAuthentication yes`).
    Password,
}

/// A dedicated user: name, login shell, and start-up files (path in the home, contents).
struct Dedicated {
    name: &'static str,
    shell: &'static str,
    comment: &'static str,
    files: Vec<(&'static str, String)>,
    /// Set with chpasswd; otherwise no password can match.
    password: Option<&'static str>,
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
            other => Ok(other.dedicated().expect("not Current").name.to_string()),
        }
    }

    fn dedicated(self) -> Option<Dedicated> {
        let talk = |stdout: &str, stderr: &str| {
            format!(
                "# Written by sshpyk-testhost: start-up output that sshpyk must cope with.\n\
                 echo '{stdout}'\necho '{stderr}' >&2\n"
            )
        };
        match self {
            TestUser::Current => None,
            TestUser::Chatty => Some(Dedicated {
                name: CHATTY_USER,
                shell: "/bin/bash",
                comment: "sshpyk test user with talkative start-up files",
                files: vec![
                    (".bashrc", talk(CHATTY_BASHRC_STDOUT, CHATTY_BASHRC_STDERR)),
                    (
                        ".profile",
                        talk(CHATTY_PROFILE_STDOUT, CHATTY_PROFILE_STDERR),
                    ),
                ],
                password: None,
            }),
            // csh has no `>&2`: its start-up file talks on stdout only.
            TestUser::Tcsh => Some(Dedicated {
                name: TCSH_USER,
                shell: "/bin/tcsh",
                comment: "sshpyk test user with tcsh as login shell",
                files: vec![(
                    ".tcshrc",
                    "echo 'sshpyk-tcsh: ~/.tcshrc says hello'\n".into(),
                )],
                password: None,
            }),
            TestUser::Fish => Some(Dedicated {
                name: FISH_USER,
                shell: "/usr/bin/fish",
                comment: "sshpyk test user with fish as login shell",
                files: vec![(
                    ".config/fish/config.fish",
                    "echo 'sshpyk-fish: config.fish says hello'\n".into(),
                )],
                password: None,
            }),
            TestUser::Password => Some(Dedicated {
                name: PASSWORD_USER,
                shell: "/bin/sh",
                comment: "sshpyk test user that logs in with a password",
                files: Vec::new(),
                password: Some(PASSWORD_USER_PASSWORD),
            }),
        }
    }

    /// Creates the user and its start-up files if missing. Parallel test processes serialise
    /// on the registry lock, so `useradd` runs once per machine.
    pub(crate) fn ensure_exists(self) -> Result<()> {
        let Some(wanted) = self.dedicated() else {
            return Ok(());
        };
        if !geteuid().is_root() {
            bail!(
                "the test user {} can only be created (and logged in as) by root",
                wanted.name
            );
        }
        if !Path::new(wanted.shell).exists() {
            bail!(
                "{} is missing: the test user {} needs it as login shell (run scripts/setup)",
                wanted.shell,
                wanted.name
            );
        }
        let _lock = registry::lock()?;
        if User::from_name(wanted.name)?.is_none() {
            // `-p '*'`: no password can match, yet the account is not locked ('!'), which sshd
            // (without PAM) would refuse even for key logins.
            run(Command::new("useradd").args([
                "--create-home",
                "--shell",
                wanted.shell,
                "--password",
                "*",
                "--comment",
                wanted.comment,
                wanted.name,
            ]))?;
        }
        let user = User::from_name(wanted.name)?
            .with_context(|| format!("{} missing right after useradd", wanted.name))?;
        for (file, contents) in &wanted.files {
            let path = user.dir.join(file);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
                chown(parent, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("giving {} to {}", parent.display(), user.name))?;
            }
            write_owned(&path, contents, &user)?;
        }
        if let Some(password) = wanted.password {
            set_password(wanted.name, password)?;
        }
        Ok(())
    }

    /// Fails with an explanation when this user cannot import Jupyter from `venv` (say, a venv
    /// under /root, which other users cannot traverse).
    pub fn check_venv(self, venv: &Path) -> Result<()> {
        let Some(user) = self.dedicated() else {
            return Ok(());
        };
        let python = venv.join("bin/python");
        let out = Command::new("runuser")
            .args(["-u", user.name, "--"])
            .arg(&python)
            .args(["-c", "import jupyter_client, ipykernel"])
            .stdin(Stdio::null())
            .output()
            .context("running runuser")?;
        if !out.status.success() {
            bail!(
                "{} cannot use the test venv {}: the venv and the python it was \
                 made from must be reachable by other users (not under /root, say); delete it \
                 to have it rebuilt from /usr/bin/python3, or set SSHPYK_TEST_VENV: {}",
                user.name,
                venv.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

fn set_password(name: &str, password: &str) -> Result<()> {
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running chpasswd")?;
    {
        use std::io::Write;
        let mut stdin = chpasswd.stdin.take().context("chpasswd's stdin")?;
        writeln!(stdin, "{name}:{password}").context("writing to chpasswd")?;
    }
    let status = chpasswd.wait().context("waiting for chpasswd")?;
    if !status.success() {
        bail!("chpasswd failed ({status}) setting the password of {name}");
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
