//! The dedicated test users exist only inside their hosts: logging in as one works, while the
//! machine's account files stay byte-identical and its name resolves outside as before (on a
//! clean machine: not at all).

use std::fs;
use std::process::{Command, Stdio};

use sshpyk_testhost::{Mode, RemoteHost, TestUser};

const ACCOUNT_FILES: [&str; 3] = ["/etc/passwd", "/etc/shadow", "/etc/group"];

fn getent_passwd(name: &str) -> Option<String> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn dedicated_users_exist_only_inside_their_host() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the dedicated test users need root");
        return;
    }
    let before = ACCOUNT_FILES.map(|f| fs::read(f).unwrap());
    // Loopback too: sshd then gets a mount namespace without a network one.
    for (user, mode) in [
        (TestUser::Chatty, Mode::Netns),
        (TestUser::Tcsh, Mode::Netns),
        (TestUser::Fish, Mode::Netns),
        (TestUser::Password, Mode::Netns),
        (TestUser::Chatty, Mode::Loopback),
    ] {
        let name = user.name().unwrap();
        let outside = getent_passwd(&name);
        let host = RemoteHost::builder()
            .mode(mode)
            .login_user(user)
            .start()
            .unwrap();
        let out = Command::new("ssh")
            .arg("-F")
            .arg(host.ssh_config())
            .args([host.alias(), "id -un; id -u; echo $HOME"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Start-up files may talk first: the answers are the last three lines.
        let lines: Vec<&str> = said.lines().collect();
        let home = host.dir().join("home").join(&name);
        assert_eq!(
            lines[lines.len() - 3..],
            [
                name.as_str(),
                &host.login_ids().0.to_string(),
                home.to_str().unwrap()
            ],
            "{said}"
        );
        assert_eq!(
            getent_passwd(&name),
            outside,
            "{name} leaked out of its host"
        );
        if outside.is_some() {
            eprintln!("note: an account {name} exists on this machine (left by an older sshpyk)");
        }
        host.stop().unwrap();
    }
    let after = ACCOUNT_FILES.map(|f| fs::read(f).unwrap());
    for (file, (b, a)) in ACCOUNT_FILES.iter().zip(before.iter().zip(&after)) {
        assert!(b == a, "{file} changed");
    }
}
