//! `--mount-local-on-remote "/local/path:/remote/path[:sshfs_options]"`.
//!
//! Fields are separated by `:`; a literal `:` or `\` inside a path is written `\:` or `\\`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MountSpec {
    pub(crate) local: String,
    pub(crate) remote: String,
    /// sshfs `-o` options, comma separated (`ro`, `allow_other`, ...).
    #[serde(default)]
    pub(crate) options: Vec<String>,
}

impl MountSpec {
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "mount spec '{text}' is invalid: {why}; expected \"/local/path:/remote/path[:sshfs_options]\" (write a ':' inside a path as '\\:')"
            ))
        };
        let fields = split_escaped(text).map_err(|why| bad(&why))?;
        let (local, remote, options) = match fields.as_slice() {
            [l, r] => (l, r, ""),
            [l, r, o] => (l, r, o.as_str()),
            _ => return Err(bad("it needs two or three ':'-separated fields")),
        };
        if !local.starts_with('/') {
            return Err(bad("the local path must be absolute"));
        }
        if !(remote.starts_with('/') || remote.starts_with("~/")) {
            return Err(bad("the remote path must be absolute or start with '~/'"));
        }
        let options = options
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        Ok(MountSpec {
            local: local.clone(),
            remote: remote.clone(),
            options,
        })
    }

    pub(crate) fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

impl fmt::Display for MountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        write!(f, "{}:{}", esc(&self.local), esc(&self.remote))?;
        if !self.options.is_empty() {
            write!(f, ":{}", self.options.join(","))?;
        }
        Ok(())
    }
}

fn split_escaped(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ (':' | '\\')) => fields.last_mut().unwrap().push(e),
                Some(other) => {
                    return Err(format!(
                        "'\\{other}' is not an escape (only '\\:' and '\\\\')"
                    ))
                }
                None => return Err("it ends with a lone '\\'".into()),
            },
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_options_and_escapes() {
        let m = MountSpec::parse(r"/data/a\:b:/mnt/x:ro,follow_symlinks").unwrap();
        assert_eq!(m.local, "/data/a:b");
        assert_eq!(m.remote, "/mnt/x");
        assert_eq!(m.options, ["ro", "follow_symlinks"]);
        assert!(m.read_only());
        assert_eq!(MountSpec::parse(&m.to_string()).unwrap(), m);
        assert!(MountSpec::parse("/a:~/b").unwrap().options.is_empty());
    }

    #[test]
    fn rejects_malformed_specs() {
        for bad in ["/a", "a:/b", "/a:b", "/a:/b:c:d", r"/a\x:/b", "/a:/b\\"] {
            assert!(MountSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
