//! Bounds for in-memory caches, by entries and by bytes at once, and their size gauges.
//!
//! moka bounds a cache by one total weight. Each entry weighs its estimated footprint, but at least
//! `max_bytes / max_entries`; with the total capped at `max_bytes`, the cache then holds at most
//! `max_entries` entries and at most `max_bytes` estimated bytes, whichever is reached first.

use crate::metrics as m;

/// What an entry costs besides its key and value: moka's bookkeeping (entry node, access-order and
/// write-order deque nodes, expiry timer node, hash table bucket, key `Arc`), allocator headers and
/// the fragmentation left by evictions. Measured by bench/ (`bench/run caches`): peak RSS with every
/// cache full, minus the same process's RSS without caches, divided by the entries held, was about
/// 1 KiB per entry with a 256 B estimate.
pub const ENTRY_OVERHEAD_BYTES: usize = 1024;

/// A cache's two limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheBounds {
    pub max_entries: u64,
    pub max_bytes: u64,
}

impl CacheBounds {
    /// The total weight to give moka's `max_capacity`.
    pub fn max_capacity(&self) -> u64 {
        self.max_bytes
    }

    /// The weight of an entry whose key and value take `payload_bytes` (heap and inline).
    pub fn weight(&self, payload_bytes: usize) -> u32 {
        let floor = self.max_bytes.div_ceil(self.max_entries.max(1));
        let estimated = (payload_bytes + ENTRY_OVERHEAD_BYTES) as u64;
        u32::try_from(estimated.max(floor)).unwrap_or(u32::MAX)
    }
}

/// Sets `ebg_cache_entries{cache}` and `ebg_cache_bytes{cache}` (the accounted weight: an upper bound of
/// the estimated bytes). `cache` is a fixed name (`contacts`, `tokens`).
pub fn record_cache_size(cache: &'static str, entries: u64, weighted_bytes: u64) {
    metrics::gauge!(m::CACHE_ENTRIES, "cache" => cache).set(entries as f64);
    metrics::gauge!(m::CACHE_BYTES, "cache" => cache).set(weighted_bytes as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_makes_the_byte_budget_cap_the_entry_count_too() {
        let bounds = CacheBounds { max_entries: 1_000, max_bytes: 10_000_000 };
        assert_eq!(bounds.weight(10), 10_000, "small entries weigh the floor: at most 1,000 fit");
        assert_eq!(bounds.weight(50_000), 50_000 + ENTRY_OVERHEAD_BYTES as u32, "large ones their size");
        let zero = CacheBounds { max_entries: 0, max_bytes: 10 };
        assert_eq!(zero.weight(0), ENTRY_OVERHEAD_BYTES as u32);
    }
}
