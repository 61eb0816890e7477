//! The C ABI's picks and reports in lb's metrics (lb_core::metrics): a pick is one call of one
//! attempt, recorded when it is reported, with the latency the caller measured.

mod support;

use lb_core::metrics::{ATTEMPTS_STARTED, ATTEMPT_DURATION, CALL_DURATION, ENDPOINT_PICKS};
use lb_core::test_recorder;
use lb_ffi::lb_status;
use support::handle::Bal;
use support::{static_target, Backend};

#[test]
fn reports_are_attempts_and_calls_with_the_callers_latency() {
    test_recorder::install();
    let backend = Backend::start(false);
    let target = static_target(&[&backend]);
    let b = Bal::new(&target, r#"{"metrics_endpoint_labels":true}"#).expect("a balancer");
    assert_eq!(b.ready(5000), lb_status::LB_OK);
    for outcome in [0, 0, 1, 2] {
        let pick = b.pick(None).expect("picked");
        assert_eq!(b.report(pick.token, outcome, 2_000), lb_status::LB_OK);
    }
    let seen = test_recorder::recorded();
    let endpoint = backend.addr.to_string();
    let of = |status| [("grpc.target", target.as_str()), ("grpc.status", status), ("lb.endpoint", endpoint.as_str())];
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &of("success")), 2);
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &of("failure")), 1);
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &of("cancelled")), 1);
    let latencies = seen.samples(ATTEMPT_DURATION, &of("success"));
    assert!(latencies.iter().all(|s| (*s - 0.002).abs() < 1e-9), "the caller's 2 ms: {latencies:?}");
    let calls = [("grpc.target", target.as_str()), ("grpc.status", "success")];
    assert_eq!(seen.histogram_count(CALL_DURATION, &calls), 2);
    assert!(seen.samples(CALL_DURATION, &calls).iter().all(|s| *s >= 0.002), "a call lasts at least its attempt");
    assert_eq!(seen.counter(ATTEMPTS_STARTED, &[("grpc.target", target.as_str())]), 4);
    assert_eq!(seen.counter(ENDPOINT_PICKS, &[("target", target.as_str()), ("endpoint", endpoint.as_str())]), 4);
}
