//! The README's "Use it" program: the README shows exactly `src/bin/readme.rs` (below its marker),
//! and that program, run against two greeter servers, gets an answer.

mod support;

use std::process::Command;

use support::{static_target, Server};

#[test]
fn the_readme_shows_the_program_the_tests_run() {
    let source = include_str!("../src/bin/readme.rs");
    let program = source.split_once("// README: begin\n").map(|(_, p)| p).expect("the marker line");
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(program.trim_end()),
        "README.md's `Use it` block differs from examples/src/bin/readme.rs; paste the program below the marker into the README"
    );
}

#[test]
fn the_readme_program_gets_an_answer() {
    let servers = [Server::start(&[]), Server::start(&[])];
    let target = static_target(&servers.iter().collect::<Vec<_>>());
    let out = Command::new(env!("CARGO_BIN_EXE_readme"))
        .arg(&target)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the readme program runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("lb"), "the greeting names the caller: {stdout}");
    assert!(servers.iter().any(|s| stdout.contains(&s.addr.to_string())), "answered by one of the servers: {stdout}");
}
