//! `sparsebak verify`: a restore that writes nothing (see `restore`).

use super::restore::read_back;
use crate::context::Ctx;
use crate::target::Target;
use anyhow::Result;

pub fn run(ctx: &Ctx, volume: &str, session: Option<&str>) -> Result<i32> {
    let s = read_back(ctx, volume, session, Target::Nothing)?;
    println!("verified {s}");
    Ok(0)
}
