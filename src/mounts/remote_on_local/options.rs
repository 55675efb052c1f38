//! The sshfs command line: sshpyk's defaults and the user's `-o` values, ordered so that the
//! user's win for both kinds of option. sshfs hands ssh options to ssh in the order it sees
//! them, and OpenSSH keeps the first value of an option: the user's ssh options go before ours.
//! FUSE and sshfs keep the last value: the user's sshfs options go after ours.

use std::path::Path;

/// Options sshfs passes to ssh rather than to FUSE (sshfs.c `ssh_opts`, compared the way
/// sshfs does: case-insensitively, followed by `=`).
const SSH_OPTIONS: &[&str] = &[
    "AddressFamily",
    "BatchMode",
    "BindAddress",
    "BindInterface",
    "CertificateFile",
    "ChallengeResponseAuthentication",
    "CheckHostIP",
    "Cipher",
    "Ciphers",
    "Compression",
    "CompressionLevel",
    "ConnectionAttempts",
    "ConnectTimeout",
    "ControlMaster",
    "ControlPath",
    "ControlPersist",
    "FingerprintHash",
    "GlobalKnownHostsFile",
    "GSSAPIAuthentication",
    "GSSAPIDelegateCredentials",
    "HostbasedAuthentication",
    "HostbasedKeyTypes",
    "HostKeyAlgorithms",
    "HostKeyAlias",
    "HostName",
    "IdentitiesOnly",
    "IdentityFile",
    "IdentityAgent",
    "IPQoS",
    "KbdInteractiveAuthentication",
    "KbdInteractiveDevices",
    "KexAlgorithms",
    "LocalCommand",
    "LogLevel",
    "MACs",
    "NoHostAuthenticationForLocalhost",
    "NumberOfPasswordPrompts",
    "PasswordAuthentication",
    "PermitLocalCommand",
    "PKCS11Provider",
    "Port",
    "PreferredAuthentications",
    "ProxyCommand",
    "ProxyJump",
    "ProxyUseFdpass",
    "PubkeyAcceptedKeyTypes",
    "PubkeyAuthentication",
    "RekeyLimit",
    "RevokedHostKeys",
    "RhostsRSAAuthentication",
    "RSAAuthentication",
    "ServerAliveCountMax",
    "ServerAliveInterval",
    "SmartcardDevice",
    "StrictHostKeyChecking",
    "TCPKeepAlive",
    "UpdateHostKeys",
    "UsePrivilegedPort",
    "UserKnownHostsFile",
    "VerifyHostKeyDNS",
    "VisualHostKey",
];

/// sshpyk's sshfs options, before the user's (documented in `--help` and README.rst).
/// `auto_unmount`: the mount goes with sshfs, however sshfs ends. `idmap=user`: the remote
/// user's files show as the local user's.
pub(crate) const SSHFS_DEFAULTS: &[&str] = &["auto_unmount", "idmap=user"];
/// With `--direct`, ssh options after the user's: notice a dead link within about 45 s.
pub(crate) const DIRECT_SSH_DEFAULTS: &[&str] =
    &["ServerAliveInterval=15", "ServerAliveCountMax=3"];

/// Shown after `sshpyk mount --help`.
pub(crate) const OPTIONS_HELP: &str = "\
sshpyk's defaults (your -o values win):
  sshfs: auto_unmount, idmap=user
  ssh, riding the alias's ControlMaster: ControlPath=<the master's>, ControlMaster=no, BatchMode=yes
  ssh, with --direct: ControlMaster=no, ControlPath=none, ServerAliveInterval=15, ServerAliveCountMax=3
Common options: -o reconnect, -o ro, -o cache=yes, -o allow_other, -o follow_symlinks,
  -o ServerAliveInterval=15, -o StrictHostKeyChecking=yes";

/// How sshfs reaches the host.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// Through the alias's ControlMaster (its ControlPath as ssh takes it in `-o`).
    Master { control_path: String },
    /// sshfs's ssh opens a connection of its own.
    Direct,
}

/// Everything the sshfs command line is made of.
#[derive(Debug, Clone)]
pub(crate) struct SshfsCommand<'a> {
    pub(crate) ssh: &'a str,
    pub(crate) ssh_config: &'a Path,
    /// `alias:path` as sshfs takes it.
    pub(crate) source: String,
    pub(crate) mountpoint: &'a Path,
    pub(crate) route: Route,
    pub(crate) user_options: &'a [String],
}

impl SshfsCommand<'_> {
    /// sshfs's arguments (without the program), sshfs in the foreground.
    pub(crate) fn args(&self) -> Vec<String> {
        let (user_ssh, user_sshfs) = split_user_options(self.user_options);
        let mut args = vec![
            self.source.clone(),
            self.mountpoint.to_string_lossy().into_owned(),
            "-f".into(),
            "-F".into(),
            self.ssh_config.to_string_lossy().into_owned(),
        ];
        if self.ssh != "ssh" {
            // sshfs splits ssh_command on spaces not preceded by a backslash.
            args.push(format!("-ossh_command={}", self.ssh.replace(' ', "\\ ")));
        }
        let ours_ssh: Vec<String> = match &self.route {
            Route::Master { control_path } => vec![
                format!("ControlPath={control_path}"),
                "ControlMaster=no".into(),
                "BatchMode=yes".into(),
            ],
            Route::Direct => ["ControlMaster=no", "ControlPath=none"]
                .iter()
                .chain(DIRECT_SSH_DEFAULTS)
                .map(|o| o.to_string())
                .collect(),
        };
        let ordered = user_ssh
            .into_iter()
            .chain(ours_ssh)
            .chain(SSHFS_DEFAULTS.iter().map(|o| o.to_string()))
            .chain(user_sshfs);
        for option in ordered {
            args.push("-o".into());
            args.push(option);
        }
        args
    }
}

/// Splits the user's `-o` values (each maybe `a,b,c`, with `\,` for a literal comma, as FUSE
/// reads them) into ssh options and sshfs/FUSE options, each in the order given.
fn split_user_options(values: &[String]) -> (Vec<String>, Vec<String>) {
    let mut ssh = Vec::new();
    let mut sshfs = Vec::new();
    for value in values {
        for option in split_commas(value) {
            if is_ssh_option(&option) {
                ssh.push(option);
            } else if !option.is_empty() {
                sshfs.push(option);
            }
        }
    }
    (ssh, sshfs)
}

fn split_commas(value: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let last = parts.last_mut().expect("never empty");
                last.push(c);
                if let Some(next) = chars.next() {
                    last.push(next);
                }
            }
            ',' => parts.push(String::new()),
            _ => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

pub(crate) fn is_ssh_option(option: &str) -> bool {
    option.split_once('=').is_some_and(|(key, _)| {
        SSH_OPTIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(key))
    })
}

/// The user's sshfs options without `name` (for the `allow_other` retry).
pub(crate) fn without(values: &[String], name: &str) -> Vec<String> {
    values
        .iter()
        .map(|value| {
            split_commas(value)
                .into_iter()
                .filter(|o| o != name)
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|v| !v.is_empty())
        .collect()
}

pub(crate) fn asks_for(values: &[String], name: &str) -> bool {
    values
        .iter()
        .any(|v| split_commas(v).iter().any(|o| o == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(route: Route, user: &[String]) -> Vec<String> {
        SshfsCommand {
            ssh: "ssh",
            ssh_config: Path::new("/cfg"),
            source: "gpu:data".into(),
            mountpoint: Path::new("/mnt/x"),
            route,
            user_options: user,
        }
        .args()
    }

    fn options(args: &[String]) -> Vec<&str> {
        args.windows(2)
            .filter(|w| w[0] == "-o")
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn user_ssh_options_come_first_and_user_sshfs_options_last() {
        let user = vec![
            "ro,ServerAliveInterval=15".to_string(),
            "idmap=none".to_string(),
            "batchmode=no".to_string(),
        ];
        let args = command(
            Route::Master {
                control_path: "\"/rt/cm-%C\"".into(),
            },
            &user,
        );
        assert_eq!(
            options(&args),
            [
                "ServerAliveInterval=15",
                "batchmode=no",
                "ControlPath=\"/rt/cm-%C\"",
                "ControlMaster=no",
                "BatchMode=yes",
                "auto_unmount",
                "idmap=user",
                "ro",
                "idmap=none",
            ]
        );
        assert_eq!(&args[..5], ["gpu:data", "/mnt/x", "-f", "-F", "/cfg"]);
    }

    #[test]
    fn direct_opens_its_own_connection() {
        let args = command(Route::Direct, &[]);
        let opts = options(&args);
        assert!(opts.contains(&"ControlPath=none"));
        assert!(!opts.iter().any(|o| o.starts_with("BatchMode")));
    }

    #[test]
    fn escaped_commas_stay_in_one_option() {
        assert_eq!(split_commas(r"a\,b,c"), [r"a\,b", "c"]);
        assert_eq!(without(&["ro,allow_other".into()], "allow_other"), ["ro"]);
        assert!(without(&["allow_other".into()], "allow_other").is_empty());
        assert!(asks_for(&["ro,allow_other".into()], "allow_other"));
    }
}
