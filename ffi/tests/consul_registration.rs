//! Registration and discovery through the C ABI against the in-repo Consul double (feature `consul`).
//!
//! `lb-doubles` serves Consul's HTTP API (agent registration, TTL checks, health blocking queries)
//! on 127.0.0.1. It is a double, not Consul: no Consul server can be installed where tests run.

mod support;

use std::ffi::CString;
use std::ptr;
use std::time::{Duration, Instant};

use lb_doubles::consul::ConsulDouble;
use lb_ffi::*;
use support::handle::{addr, last_error, Bal};
use support::Backend;

fn listed(b: &Bal) -> Vec<String> {
    let mut v: Vec<String> = b.endpoints()["endpoints"]
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["addr"].as_str().expect("addr").to_string())
        .collect();
    v.sort();
    v
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn register(target: &str, instance: &str) -> *mut lb_registration {
    let t = CString::new(target).expect("no NUL");
    let i = CString::new(instance).expect("no NUL");
    let mut out = ptr::null_mut();
    // SAFETY: valid C strings and a writable out-pointer.
    let s = unsafe { lb_registration_new(t.as_ptr(), i.as_ptr(), &mut out) };
    assert_eq!(s, lb_status::LB_OK, "{}", last_error());
    out
}

#[test]
fn registered_instances_are_discovered_and_free_deregisters() {
    let rt = tokio::runtime::Runtime::new().expect("runtime for the double");
    let double = rt
        .block_on(ConsulDouble::start())
        .expect("start the Consul double");
    let (a, b) = (Backend::start(false), Backend::start(false));
    let service = format!("consul://{}/ffi-greeter", double.authority());
    let reg_target = format!("{service}?ttl=300ms&deregister_after=2s");
    let reg_a = register(
        &reg_target,
        &format!(r#"{{"addr":"{}","zone":"z1"}}"#, a.addr),
    );
    let reg_b = register(
        &reg_target,
        &format!(r#"{{"addr":"{}","zone":"z2"}}"#, b.addr),
    );

    let bal =
        Bal::new(&format!("{service}?wait=2s"), r#"{"policy":"rr"}"#).expect("a Consul balancer");
    assert_eq!(bal.ready(30_000), lb_status::LB_OK, "{}", last_error());
    let mut both = vec![a.addr.to_string(), b.addr.to_string()];
    both.sort();
    wait_until("both instances are listed", || listed(&bal) == both);
    let p = bal.pick(None).expect("pick");
    assert!(both.contains(&addr(&p)));
    assert_eq!(bal.report(p.token, 0, -1), lb_status::LB_OK);

    // Freeing deregisters through the agent API; discovery drops the instance.
    // SAFETY: from lb_registration_new, freed once.
    unsafe { lb_registration_free(reg_a) };
    assert!(
        double.deregistrations() >= 1,
        "the double saw the deregistration"
    );
    wait_until("the freed instance is gone", || {
        listed(&bal) == vec![b.addr.to_string()]
    });
    // SAFETY: as above.
    unsafe { lb_registration_free(reg_b) };
    drop(bal);
    drop(double);
}

/// An agent with ACLs (default policy deny) and a balancer without a token: Consul answers an empty
/// list, not an error. The C caller's pick fails `LB_ERR_UNAVAILABLE`, and its last error says why
/// discovery has nothing instead of only "no endpoint".
#[test]
fn a_pick_that_acls_starved_names_the_cause_in_the_last_error() {
    let rt = tokio::runtime::Runtime::new().expect("runtime for the double");
    let double = rt
        .block_on(ConsulDouble::start_with(lb_doubles::consul::DoubleConfig {
            acl_token: Some("management-token".into()),
            ..Default::default()
        }))
        .expect("start the Consul double");
    let bal = Bal::new(
        &format!("consul://{}/acl-starved?wait=2s", double.authority()),
        r#"{"policy":"rr","endpoint_wait_ms":50}"#,
    )
    .expect("a Consul balancer");
    // The first answer may not be in before the first pick gives up: pick until it is named.
    let mut message = String::new();
    wait_until("the last error names the ACL cause", || {
        assert_eq!(bal.pick(None).err(), Some(lb_status::LB_ERR_UNAVAILABLE));
        message = last_error();
        message.contains("discovery error")
    });
    assert!(
        message.contains("acl-starved")
            && message.contains("without an ACL token")
            && message.contains("default ACL policy is deny"),
        "{message}"
    );
    drop(bal);
    drop(double);
}
