//! The remote environment flags of `add`/`edit`: `--remote-env`, `--remote-cwd`, `--remote-init`.

use crate::cli::SpecArgs;
use crate::error::{Error, Result};
use crate::settings::require_remote_absolute;
use crate::settings::Settings;

/// Applies the environment flags given; `clear_env` empties the variables first. An empty
/// `--remote-cwd` or `--remote-init` removes the setting.
pub(crate) fn apply(settings: &mut Settings, args: &SpecArgs, clear_env: bool) -> Result<()> {
    if clear_env {
        settings.remote_env.clear();
    }
    for assignment in &args.remote_env {
        let (key, value) = parse_assignment(assignment)?;
        settings.remote_env.insert(key, value);
    }
    if let Some(cwd) = &args.remote_cwd {
        if cwd.is_empty() {
            settings.remote_cwd = None;
        } else if cwd == "~" {
            settings.remote_cwd = Some(cwd.clone());
        } else {
            require_remote_absolute(cwd, "--remote-cwd")?;
            settings.remote_cwd = Some(cwd.clone());
        }
    }
    if let Some(init) = &args.remote_init {
        if init.contains('\0') {
            return Err(Error::Invalid(
                "--remote-init holds a NUL byte; give shell code".into(),
            ));
        }
        settings.remote_init = Some(init.clone()).filter(|s| !s.trim().is_empty());
    }
    Ok(())
}

/// `KEY=VALUE`: a name the remote shell and Python accept, and any value without NUL.
fn parse_assignment(text: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "--remote-env '{text}' {why}; write KEY=VALUE with KEY made of letters, digits and '_' (not starting with a digit)"
        ))
    };
    let (key, value) = text.split_once('=').ok_or_else(|| bad("has no '='"))?;
    let valid_key = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_key {
        return Err(bad("has an invalid name"));
    }
    if value.contains('\0') {
        return Err(bad("holds a NUL byte"));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_keep_values_literally() {
        assert_eq!(
            parse_assignment(r#"A_1=x "y" 'z' $HOME=1"#).unwrap(),
            ("A_1".into(), r#"x "y" 'z' $HOME=1"#.into())
        );
        assert_eq!(parse_assignment("E=").unwrap(), ("E".into(), "".into()));
        for bad in ["noequals", "=v", "1A=v", "A-B=v", "A B=v"] {
            assert!(parse_assignment(bad).is_err(), "{bad}");
        }
    }
}
