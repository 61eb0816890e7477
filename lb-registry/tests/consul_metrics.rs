//! Consul's re-registration counter (`lb_registry_reregistrations_total{registry="consul"}`), read
//! back through a recorder installed for this test binary, which holds this one test so the count
//! is exact. Against the in-repo Consul double (a double: no Consul server can be installed here).

use std::time::Duration;

use lb_core::test_recorder;
use lb_core::Endpoint;
use lb_doubles::consul::ConsulDouble;
use lb_registry::consul::{ConsulRegistrar, REREGISTRATIONS};
use lb_registry::Registrar as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_an_agent_forgot_are_made_again_and_counted() {
    test_recorder::install();
    let double = ConsulDouble::start().await.expect("start the consul double");
    let r = ConsulRegistrar::builder()
        .address(double.authority())
        .ttl(Duration::from_millis(300))
        .deregister_critical_after(Duration::from_secs(2))
        .build()
        .expect("valid options");
    let _a = r.register("counted", Endpoint::new(([127, 0, 0, 1], 7901).into())).await.expect("register");
    let _b = r.register("counted", Endpoint::new(([127, 0, 0, 1], 7902).into())).await.expect("register");
    assert_eq!(test_recorder::recorded().counter(REREGISTRATIONS, &[("registry", "consul")]), 0);

    // The agent restarts without its data: each instance's next heartbeat finds its check unknown
    // and registers again.
    double.restart_with_reset_index();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while double.services().len() < 2 || test_recorder::recorded().counter(REREGISTRATIONS, &[("registry", "consul")]) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "not registered again: {:?}", double.services());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(test_recorder::recorded().counter(REREGISTRATIONS, &[("registry", "consul")]), 2, "one per forgotten instance");
    assert_eq!(double.registrations(), 4);
}
