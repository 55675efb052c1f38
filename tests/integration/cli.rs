//! The management CLI against a real sshd: add, edit, delete, list, and every bad input.

use crate::common::{self, Env};
use predicates::prelude::*;

/// Snapshot settings that make output stable: temp paths, addresses, versions, timings.
fn stable(env: &Env) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    let mut literal = |from: &str, to: &str| settings.add_filter(&regex::escape(from), to);
    literal(&env.dir.path().to_string_lossy(), "[TMP]");
    if let Some(host) = &env.host {
        literal(&host.dir().to_string_lossy(), "[HOST]");
        literal(&format!("{}:{}", host.address(), host.port()), "[ADDR]");
    }
    literal(&common::venv().to_string_lossy(), "[VENV]");
    literal(env!("CARGO_BIN_EXE_sshpyk"), "[SSHPYK]");
    settings.add_filter(r"OpenSSH_[^)]*", "[SSH VERSION]");
    settings.add_filter(r"works \([0-9.]+ s\)", "works ([T] s)");
    settings.add_filter(r"remote system: .*", "remote system: [UNAME]");
    settings.add_filter(
        r"Python [0-9.]+, jupyter_client [0-9.]+",
        "Python [V], jupyter_client [V]",
    );
    settings.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    settings.add_filter(r"\b\w+@(\[ADDR\]|127)", "[USER]@$1");
    settings
}

/// `sshpyk ARGS` about kernel 'ghost', which does not exist: refused in one line, exit code 3.
fn ghost_is_not_found(env: &Env, args: &[&str]) {
    env.sshpyk()
        .args(args)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("kernel 'ghost' not found"));
}

#[test]
fn add_writes_a_kernelspec_that_jupyter_lists() {
    let env = Env::with_host();
    env.add_command("python3", &[])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "added kernel 'ssh_remote_python3'",
        ));
    let spec = env.read_kernel_json("ssh_remote_python3");
    assert_eq!(spec["argv"][0], env!("CARGO_BIN_EXE_sshpyk"));
    assert_eq!(spec["argv"][4], "{connection_file}");
    assert_eq!(spec["language"], "python");
    assert_eq!(spec["interrupt_mode"], "signal");
    assert_eq!(spec["display_name"], "Python 3 (ipykernel) (remote)");
    let settings = &spec["metadata"]["sshpyk"];
    assert_eq!(settings["version"], 1);
    assert_eq!(
        settings["remote_python"],
        format!("{}/bin/python", common::venv().display())
    );
    assert_eq!(settings["launch_timeout"], 30.0);

    // Jupyter itself sees it.
    let mut cmd = std::process::Command::new(common::venv().join("bin/jupyter"));
    cmd.args(["kernelspec", "list", "--json"]);
    env.apply(&mut cmd);
    let out = cmd.output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed["kernelspecs"]["ssh_remote_python3"].is_object(),
        "{listed}"
    );

    // A second add of the same name is refused, then allowed with --replace.
    env.add_command("python3", &[]).assert().code(3).stderr(
        predicate::str::contains("already exists").and(predicate::str::contains("--replace")),
    );
    env.add_command("python3", &["--replace", "--display-name", "GPU"])
        .assert()
        .success();
    assert_eq!(
        env.read_kernel_json("ssh_remote_python3")["display_name"],
        "GPU"
    );
}

#[test]
fn list_marks_a_healthy_kernel_ok_and_an_unreachable_one_with_the_reason() {
    let env = Env::with_host();
    env.add_kernel("healthy", &[]);
    // Same settings, pointed at a host whose port refuses connections.
    let dead_config = env.path("dead_config");
    std::fs::write(
        &dead_config,
        format!(
            "Host dead\n  HostName 127.0.0.1\n  Port {}\n  BatchMode yes\n",
            sshpyk_testhost::free_port()
        ),
    )
    .unwrap();
    env.add_on("dead", "python3")
        .args([
            "--kernel-name",
            "dead",
            "--remote-python",
            "/usr/bin/python3",
        ])
        .arg("--ssh-config")
        .arg(&dead_config)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "could not check the remote kernel now",
        ));

    let started = std::time::Instant::now();
    let out = env.sshpyk().arg("list").output().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    // The dead kernel's (x) rows: the documented exit code, after the complete listing.
    assert_eq!(out.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("1 kernel(s) with errors (rows marked (x)): dead"));
    let text = String::from_utf8(out.stdout).unwrap();
    stable(&env).bind(|| insta::assert_snapshot!(text));

    let json = env
        .sshpyk()
        .args(["list", "--json", "--remote"])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(9));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let kernels = report["kernels"].as_array().unwrap();
    let healthy = kernels.iter().find(|k| k["name"] == "healthy").unwrap();
    assert!(
        healthy["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] != "error" && c["status"] != "warning"),
        "{healthy}"
    );
    let dead = kernels.iter().find(|k| k["name"] == "dead").unwrap();
    let connection = dead["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "connection")
        .unwrap();
    assert_eq!(connection["status"], "error");
    assert!(
        connection["message"]
            .as_str()
            .unwrap()
            .contains("refused the connection"),
        "{connection}"
    );
}

#[test]
fn a_healthy_list_takes_under_two_seconds() {
    let env = Env::with_host();
    env.add_kernel("a", &[]);
    env.add_kernel("b", &[]);
    let started = std::time::Instant::now();
    env.sshpyk()
        .args(["list", "-r"])
        .assert()
        .success()
        .stdout(predicate::str::contains("(x)").not());
    // A figure, not a benchmark: generous so that a loaded CI machine does not flake.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "list took {:?}",
        started.elapsed()
    );
}

#[test]
fn list_without_checks_and_local_kernels() {
    let env = Env::with_host();
    env.add_kernel("remote_one", &[]);
    let local = env.kernel_dir("plain");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("kernel.json"), r#"{"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Plain", "language": "python"}"#).unwrap();
    let out = env.sshpyk().args(["list", "--no-check"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    stable(&env).bind(|| insta::assert_snapshot!(text));
    let out = env.sshpyk().args(["list", "-l"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("plain") && !text.contains("remote_one"),
        "{text}"
    );
}

#[test]
fn edit_changes_exactly_the_given_settings() {
    let env = Env::with_host();
    env.add_kernel("k", &["--display-name", "Mine"]);
    let before = env.read_kernel_json("k");
    env.sshpyk()
        .args([
            "edit",
            "--kernel-name",
            "k",
            "--launch-timeout",
            "12",
            "--orphan-timeout",
            "60",
        ])
        .assert()
        .success();
    let after = env.read_kernel_json("k");
    assert_eq!(after["metadata"]["sshpyk"]["launch_timeout"], 12.0);
    assert_eq!(after["metadata"]["sshpyk"]["orphan_timeout"], 60.0);
    assert_eq!(after["display_name"], "Mine");
    let mut expected = before.clone();
    expected["metadata"]["sshpyk"]["launch_timeout"] = 12.0.into();
    expected["metadata"]["sshpyk"]["orphan_timeout"] = 60.0.into();
    assert_eq!(after, expected);

    // --ssh-config is honoured (and re-validated): a config without the alias is refused.
    let other = env.path("other_config");
    std::fs::write(&other, "Host elsewhere\n  HostName 127.0.0.1\n").unwrap();
    env.sshpyk()
        .args(["edit", "--kernel-name", "k", "--ssh-config"])
        .arg(&other)
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "ssh alias 'remote' is not defined in",
        ));
    assert_eq!(
        env.read_kernel_json("k"),
        after,
        "a refused edit must not change the file"
    );

    // A remote kernel that does not exist is refused with the available ones.
    env.sshpyk()
        .args(["edit", "--kernel-name", "k", "--remote-kernel-name", "nope"])
        .assert()
        .code(5)
        .stderr(
            predicate::str::contains("remote kernel 'nope' not found")
                .and(predicate::str::contains("python3")),
        );

    // Mounts: add, replace, clear.
    let project = env.path("project");
    std::fs::create_dir_all(&project).unwrap();
    let spec = format!("{}:/tmp/sshpyk-mnt:ro", project.display());
    env.sshpyk()
        .args([
            "edit",
            "--kernel-name",
            "k",
            "--mount-local-on-remote",
            &spec,
        ])
        .assert()
        .success();
    assert_eq!(
        env.read_kernel_json("k")["metadata"]["sshpyk"]["mounts"][0]["options"][0],
        "ro"
    );
    env.sshpyk()
        .args(["edit", "--kernel-name", "k", "--clear-mounts"])
        .assert()
        .success();
    assert_eq!(
        env.read_kernel_json("k")["metadata"]["sshpyk"]["mounts"],
        serde_json::json!([])
    );
}

#[test]
fn delete_removes_sshpyk_kernels_and_refuses_others_without_force() {
    let env = Env::with_host();
    env.add_kernel("mine", &[]);
    let other = env.kernel_dir("theirs");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("kernel.json"),
        r#"{"argv": ["x"], "display_name": "X", "language": "python"}"#,
    )
    .unwrap();

    env.sshpyk()
        .args(["delete", "mine", "theirs"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("'theirs'").and(predicate::str::contains("--force")));
    assert!(
        env.kernel_dir("mine").exists(),
        "a refused delete must delete nothing"
    );
    env.sshpyk().args(["delete", "mine"]).assert().success();
    assert!(!env.kernel_dir("mine").exists());
    env.sshpyk()
        .args(["delete", "theirs", "--force"])
        .assert()
        .success();
    assert!(!other.exists());
    ghost_is_not_found(&env, &["delete", "ghost"]);
}

/// `args` with the flags of `changes` (flag, value pairs) set: a flag there gets the new value
/// in place (clap lets later flags win only for repeated options), one with an empty value is
/// dropped, others are added.
fn changed<'a>(args: &[&'a str], changes: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    for pair in changes.chunks(2) {
        match args.iter().position(|a| *a == pair[0]) {
            Some(i) if pair[1].is_empty() => drop(args.drain(i..i + 2)),
            Some(i) => args[i + 1] = pair[1],
            None => args.extend_from_slice(pair),
        }
    }
    args
}

#[test]
fn bad_input_gets_one_clear_line_and_writes_nothing() {
    let env = Env::with_host();
    let config = env.ssh_config();
    let venv = common::venv();
    let (config, venv) = (config.to_str().unwrap(), venv.to_str().unwrap());
    let missing_config = env.path("nope/config");
    let unparsable_config = env.path("unparsable_config");
    std::fs::write(&unparsable_config, "Host remote\n  Port notanumber\n").unwrap();
    let missing = missing_config.to_str().unwrap();
    let unparsable = unparsable_config.to_str().unwrap();
    // A good `add`, and per case the flags that differ from it (see `changed`).
    let good = [
        "add",
        "--ssh-host-alias",
        "remote",
        "--remote-kernel-name",
        "python3",
        "--remote-python-prefix",
        venv,
        "--ssh-config",
        config,
    ];
    let cases: [(&[&str], i32, &str); 11] = [
        (
            &["--ssh-host-alias", "foo"],
            3,
            "ssh alias 'foo' is not defined in",
        ),
        (
            &["--remote-python-prefix", "relative/env"],
            3,
            "is relative",
        ),
        (
            &["--kernel-name", "bad name"],
            3,
            "kernel name 'bad name' is invalid",
        ),
        (&["--ssh-config", missing], 3, "cannot be read"),
        (
            &["--remote-python-prefix", "/nonexistent/env"],
            5,
            "does not exist on 'remote'",
        ),
        (
            &["--remote-python-prefix", "", "--remote-python", "/bin/sh"],
            5,
            "does not run",
        ),
        (
            &["--remote-kernel-name", "nope"],
            5,
            "remote kernel 'nope' not found on 'remote' (available:",
        ),
        (
            &["--mount-local-on-remote", "rel:/x"],
            3,
            "mount spec 'rel:/x' is invalid",
        ),
        (
            &["--mount-local-on-remote", "/no/such/dir:/x"],
            3,
            "local mount directory /no/such/dir does not exist",
        ),
        (&["--ssh", "/no/ssh"], 3, "ssh client '/no/ssh' not found"),
        (
            &["--ssh-config", unparsable],
            3,
            "cannot be parsed: expected port number; fix the file",
        ),
    ];
    for (changes, code, message) in cases {
        let args = changed(&good, changes);
        let out = env.sshpyk().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected, got {stderr}");
        assert!(lines[0].contains(message), "{args:?}: {stderr}");
        assert!(
            !env.path("data/kernels").exists()
                || std::fs::read_dir(env.path("data/kernels")).unwrap().count() == 0,
            "{args:?} wrote something"
        );
    }
    ghost_is_not_found(
        &env,
        &["edit", "--kernel-name", "ghost", "--launch-timeout", "3"],
    );
}

#[test]
fn timeouts_out_of_range_are_refused() {
    let env = Env::local();
    for value in ["0", "1e300", "-5", "soon"] {
        env.add_on("x", "k")
            .args(["--remote-python", "/p"])
            .arg(format!("--orphan-timeout={value}"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "is not a number of seconds from 0.1 to 31536000",
            ));
    }
}

/// `add` names every missing required flag in one line; its help marks them, and leaves the
/// `""` resets (which only `edit` has) and the global -v out of its own flags.
#[test]
fn add_names_every_required_flag_at_once_and_its_help_marks_them() {
    let env = Env::local();
    let out = env.sshpyk().arg("add").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sshpyk: error: sshpyk add needs --ssh-host-alias ALIAS, --remote-kernel-name NAME, \
         --remote-python-prefix DIR (or --remote-python PATH)\n"
    );
    let help = env.sshpyk().args(["add", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flag_then_help = |flag: &str| {
        let at = help.find(&format!("      {flag} <")).unwrap();
        help[at..].lines().nth(1).unwrap().to_string()
    };
    assert!(flag_then_help("--ssh-host-alias").ends_with("[required]"));
    assert!(flag_then_help("--remote-kernel-name").ends_with("[required]"));
    assert!(
        flag_then_help("--remote-python-prefix").ends_with("[required: this or --remote-python]")
    );
    assert!(!help.contains("\"\" "), "{help}");
    assert!(!help.contains("ephemeral key"), "{help}");
    assert!(help.find("--replace").unwrap() < help.find("--verbose").unwrap());
    let edit = env.sshpyk().args(["edit", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&edit.stdout).contains("; \"\" resets it"));
}

/// Output of other commands speaks as errors do: warnings prefixed, nothing left blank.
#[test]
fn warnings_are_prefixed_and_an_empty_mounts_list_says_so() {
    let env = Env::local();
    env.sshpyk()
        .args(["mounts", "list"])
        .assert()
        .success()
        .stdout("(none)\n");
    // Nothing listens there: `add` cannot check the remote, which is only a warning.
    let config = env.path("ssh_config");
    let port = sshpyk_testhost::free_port();
    std::fs::write(
        &config,
        format!("Host down\n    HostName 127.0.0.1\n    Port {port}\n    BatchMode yes\n"),
    )
    .unwrap();
    let out = env
        .add_on("down", "python3")
        .args(["--remote-python-prefix", "/opt/env", "--ssh-config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        assert!(line.starts_with("sshpyk: warning: "), "{stderr}");
    }
}
