//! Scenario 2 (stub).
use super::{Section, Settings};
use super::imbalance::Healthy;
pub(crate) async fn run(_s: &Settings, _h: Option<&Healthy>) -> anyhow::Result<Section> { Ok(Section::new("2. stub")) }
