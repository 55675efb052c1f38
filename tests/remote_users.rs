//! Remote users whose shell start-up files print on stdout and stderr in every ssh session, as
//! many hosts' do (banners, `conda init` messages): sshpyk must not take that output for its own.

mod common;

use std::time::Duration;

use common::{ready_client, Env};
use sshpyk_testhost::TestUser;

#[tokio::test]
async fn a_kernel_of_a_user_with_talkative_start_up_files_runs_code() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the chatty test user needs root");
        return;
    }
    let env = Env::with_host_as(TestUser::Chatty);
    let (launcher, info) = env.start_kernel(&[]);
    let mut client = ready_client(&info).await;
    let reply = client
        .execute("print(6 * 7)", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        (reply.status.as_str(), reply.stdout.as_str()),
        ("ok", "42\n"),
        "{}",
        launcher.log()
    );
}
