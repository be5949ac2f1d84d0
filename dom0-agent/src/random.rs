//! Random bytes from the kernel (getrandom(2)): keys, ids, salts, nonces.

use anyhow::Result;

pub fn bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)
        .map_err(|e| anyhow::anyhow!("unable to get random bytes from the kernel: {e}"))?;
    Ok(b)
}
