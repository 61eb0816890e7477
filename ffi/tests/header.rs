//! `include/lb.h` must be what cbindgen generates from the current sources.
//!
//! The header is checked in so C users need no Rust tooling; this test keeps it honest. Refresh it
//! with `LB_BLESS=1 cargo test -p lb-ffi --test header`.

use std::path::PathBuf;

#[test]
fn header_is_fresh() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");

    let path = crate_dir.join("include/lb.h");
    if std::env::var_os("LB_BLESS").is_some_and(|v| v != "0") {
        std::fs::write(&path, &generated).expect("write include/lb.h");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let line = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || current.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "ffi/include/lb.h is stale (first difference at line {line}).\n\
             Regenerate it with:\n\n    LB_BLESS=1 cargo test -p lb-ffi --test header\n"
        );
    }
}
