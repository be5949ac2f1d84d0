//! `sparsebak verify`: a restore that writes nothing (see `restore`).

use super::restore::{read_back, report_summary};
use crate::context::Ctx;
use crate::target::Target;
use anyhow::Result;

pub fn run(ctx: &Ctx, volume: &str, session: Option<&str>, all: bool) -> Result<i32> {
    // --all: every chunk is read and checked, failures listed, not the
    // first one only (a salvage that writes nothing).
    let s = read_back(ctx, volume, session, Target::Nothing, all)?;
    Ok(report_summary("verified", &s, None))
}
