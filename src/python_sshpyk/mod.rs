//! The Python sshpyk (PyPI `sshpyk`), which this tool replaces: its kernelspecs, which `list`
//! recognises and `edit --adopt` turns into ours ([`kernelspec`]), and living beside it in one
//! environment ([`coexistence`]).

pub(crate) mod coexistence;
mod kernelspec;

pub(crate) use kernelspec::{forget, settings_of};
