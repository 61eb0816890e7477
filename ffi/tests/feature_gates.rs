//! Which registry integration tests this build left out, said out loud.
//!
//! A registry's tests need its cargo feature (`required-features` in Cargo.toml). Without it cargo
//! does not build them and says nothing, so `cargo test -p ffi` would look complete. This test
//! reports each left-out group as a skip: on stdout, and in the list `scripts/test-all.sh` prints
//! at the end (which passes `--all-features`, so there it reports nothing).

#[test]
fn every_registry_test_is_built() {
    for (feature, on, files) in [("etcd", cfg!(feature = "etcd"), "etcd_registration.rs"), ("consul", cfg!(feature = "consul"), "consul_registration.rs")] {
        if !on {
            lb_core::test_util::skip(&format!(
                "tests/{files} not built: they need the `{feature}` feature (cargo test -p ffi --features {feature}, or --all-features)"
            ));
        }
    }
}
