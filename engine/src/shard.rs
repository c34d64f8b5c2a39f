//! Routing: which shard an account belongs to.
//!
//! `shard = fnv1a_64(account_id bytes) & (num_shards - 1)`, with `num_shards` a power of two.
//! FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) is fixed here forever:
//! changing it would move every account. It is written in `docs/wal-format.md` too, so other
//! teams can route by themselves.

/// Returns the FNV-1a 64-bit hash of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Returns the shard of an account ID among `num_shards` (a power of two).
pub fn shard_of(account_id: &str, num_shards: u32) -> u32 {
    assert!(
        num_shards.is_power_of_two(),
        "num_shards must be a power of two"
    );
    (fnv1a_64(account_id.as_bytes()) & u64::from(num_shards - 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_documented_fnv1a() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn accounts_spread_over_shards() {
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[shard_of(&format!("acct-{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
