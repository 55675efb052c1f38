//! Who the client logs in as: the user running the tests, or a dedicated user whose shell
//! start-up files talk, as many real hosts' do (banners, `conda init` messages).
//!
//! A dedicated user exists only inside its test host: sshd runs in a mount namespace of its own
//! where private copies of /etc/passwd, /etc/shadow and /etc/group that add the user are
//! bind-mounted, and the user's home is in the host's directory. The machine's own account
//! files are never written, so nothing is left behind.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use nix::unistd::{chown, geteuid, Gid, Group, Uid, User};

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
/// The dedicated user of [`TestUser::Password`].
pub const PASSWORD_USER: &str = "sshpyk-password";

/// The password of [`PASSWORD_USER`]: drawn at random once per process, so that no password
/// is written anywhere but in the host's private shadow file (as a hash).
pub fn password_user_password() -> &'static str {
    static PASSWORD: OnceLock<String> = OnceLock::new();
    PASSWORD.get_or_init(|| hex(&random_bytes(12)))
}

/// The first uid (and gid) tried for the dedicated users: the top of Debian's range for
/// ordinary users, where a real account is unlikely. Each user takes the first id from here
/// (stepping by the number of users) that no user and no group of this machine has.
const FIRST_ID: u32 = 59_900;
const DEDICATED: [TestUser; 4] = [
    TestUser::Chatty,
    TestUser::Tcsh,
    TestUser::Fish,
    TestUser::Password,
];

/// The Unix user the host's client configuration logs in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TestUser {
    /// Whoever runs the tests.
    #[default]
    Current,
    /// [`CHATTY_USER`], login shell /bin/bash, whose `~/.bashrc` and `~/.profile` each print a
    /// line on stdout and one on stderr; the developer's own dotfiles are never touched. Like
    /// every dedicated user, it exists only inside its host (needs root).
    Chatty,
    /// [`TCSH_USER`], login shell /bin/tcsh, whose `~/.tcshrc` (read for every session) prints a
    /// line on stdout: a login shell that does not read POSIX sh.
    Tcsh,
    /// [`FISH_USER`], login shell /usr/bin/fish, whose `config.fish` prints a line on stdout.
    Fish,
    /// [`PASSWORD_USER`], login shell /bin/sh, whose password is [`password_user_password`]:
    /// for hosts that authenticate with a password (`PasswordAuthentication yes`).
    Password,
}

/// A dedicated user: name, login shell, and start-up files (path in the home, contents).
struct Dedicated {
    name: &'static str,
    shell: &'static str,
    comment: &'static str,
    files: Vec<(&'static str, String)>,
    /// Hashed into the private shadow file; otherwise no password can match.
    password: Option<&'static str>,
}

/// The private account files of a host whose login user is dedicated, to be bind-mounted over
/// /etc/passwd, /etc/shadow and /etc/group in sshd's mount namespace (in that order).
#[derive(Debug)]
pub(crate) struct PrivateEtc {
    pub files: [PathBuf; 3],
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

    /// The user's uid and gid (a dedicated user's, though it has no account outside its hosts).
    pub fn ids(self) -> Result<(Uid, Gid)> {
        let Some(index) = DEDICATED.iter().position(|&u| u == self) else {
            return Ok((geteuid(), nix::unistd::getegid()));
        };
        let step = DEDICATED.len() as u32;
        let mut id = FIRST_ID + index as u32;
        while id < FIRST_ID + 100 * step {
            let taken = User::from_uid(Uid::from_raw(id))
                .context("looking up a uid")?
                .is_some()
                || Group::from_gid(Gid::from_raw(id))
                    .context("looking up a gid")?
                    .is_some();
            if !taken {
                return Ok((Uid::from_raw(id), Gid::from_raw(id)));
            }
            id += step;
        }
        bail!("no free uid and gid from {FIRST_ID} on for the test user {self:?}")
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
                password: Some(password_user_password()),
            }),
        }
    }

    /// For a dedicated user: makes its home, with its start-up files, in `dir` (the host's
    /// directory) and writes the private account files there. `None` for the current user.
    pub(crate) fn prepare(self, dir: &Path) -> Result<Option<PrivateEtc>> {
        let Some(wanted) = self.dedicated() else {
            return Ok(None);
        };
        if !geteuid().is_root() {
            bail!(
                "the test user {} exists only in a test host's mount namespace, which needs root",
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
        let (uid, gid) = self.ids()?;
        let home = dir.join("home").join(wanted.name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&home)
            .with_context(|| format!("creating {}", home.display()))?;
        chown(&home, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to {}", home.display(), wanted.name))?;
        for (file, contents) in &wanted.files {
            let path = home.join(file);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
                chown(parent, Some(uid), Some(gid))
                    .with_context(|| format!("giving {} to {}", parent.display(), wanted.name))?;
            }
            write_file(&path, contents, 0o644)?;
            chown(&path, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to {}", path.display(), wanted.name))?;
        }
        let etc = dir.join("etc");
        fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
        let (name, uid, gid) = (wanted.name, uid.as_raw(), gid.as_raw());
        let passwd = format!(
            "{}{name}:x:{uid}:{gid}:{}:{}:{}\n",
            system_file("/etc/passwd", name)?,
            wanted.comment,
            home.display(),
            wanted.shell
        );
        // `*`: no password matches, yet the account is not locked (`!`), which sshd (without
        // PAM) would refuse even for key logins. Empty ageing fields: never expires. Only this
        // user is in it: the machine's password hashes are not copied anywhere.
        let hash = match wanted.password {
            Some(password) => crypt(password)?,
            None => "*".to_string(),
        };
        let shadow = format!("{name}:{hash}:::::::\n");
        let group = format!("{}{name}:x:{gid}:\n", system_file("/etc/group", name)?);
        let files = [etc.join("passwd"), etc.join("shadow"), etc.join("group")];
        write_file(&files[0], &passwd, 0o644)?;
        write_file(&files[1], &shadow, 0o600)?;
        write_file(&files[2], &group, 0o644)?;
        Ok(Some(PrivateEtc { files }))
    }

    /// Fails with an explanation when this user cannot import Jupyter from `venv` (say, a venv
    /// under /root, which other users cannot traverse).
    pub fn check_venv(self, venv: &Path) -> Result<()> {
        let Some(user) = self.dedicated() else {
            return Ok(());
        };
        let (uid, gid) = self.ids()?;
        let python = venv.join("bin/python");
        // Run with the user's ids (std drops supplementary groups too): the account itself
        // exists only inside the test hosts.
        let out = Command::new(&python)
            .args(["-c", "import jupyter_client, ipykernel"])
            .uid(uid.as_raw())
            .gid(gid.as_raw())
            .env("HOME", "/")
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} as {}", python.display(), user.name))?;
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

/// The machine's account file, to which a private copy adds a line for `name`: without any
/// entry of that name already there (an account left by an older sshpyk would come first).
fn system_file(path: &str, name: &str) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(text
        .lines()
        .filter(|line| line.split(':').next() != Some(name))
        .map(|line| format!("{line}\n"))
        .collect())
}

/// A SHA-512 crypt(3) hash of `password` with a random salt, by perl (Essential on Debian, and
/// its `crypt` is the libc one that sshd checks with); the password goes through stdin.
fn crypt(password: &str) -> Result<String> {
    const SALT_CHARS: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let salt: String = random_bytes(16)
        .iter()
        .map(|b| SALT_CHARS[usize::from(b % 64)] as char)
        .collect();
    let mut perl = Command::new("perl")
        .args(["-e", "chomp(my $p = <STDIN>); print crypt($p, $ARGV[0])"])
        .arg(format!("$6${salt}$"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running perl to hash the test password")?;
    perl.stdin
        .take()
        .context("perl's stdin")?
        .write_all(format!("{password}\n").as_bytes())
        .context("writing to perl")?;
    let out = perl.wait_with_output().context("waiting for perl")?;
    let hash = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || !hash.starts_with("$6$") {
        bail!(
            "perl's crypt gave no SHA-512 hash ({}): {hash:?}",
            out.status
        );
    }
    Ok(hash)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::write(path, contents)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .with_context(|| format!("writing {}", path.display()))
}
