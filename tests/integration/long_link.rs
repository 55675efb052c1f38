//! sshpyk over a long link: the remote host 50 ms away, behind sshpyk-testhost's delay proxy.

use std::time::Duration;

use crate::common::{self, Env};

#[tokio::test]
async fn a_kernel_50_ms_away_starts_runs_and_stops() {
    let env = Env::remote_host().rtt(Duration::from_millis(50)).build();
    assert!(env.host().proxy_port().is_some());
    let kernel = env.add_kernel("far", &[]);
    common::runs_and_stops(&env, &kernel).await;
}
