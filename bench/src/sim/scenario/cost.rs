//! Scenario 5 (stub).
use super::{Section, Settings};
pub(crate) async fn run(_s: &Settings) -> anyhow::Result<Section> { Ok(Section::new("5. stub")) }
