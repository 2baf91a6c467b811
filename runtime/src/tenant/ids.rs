//! The host id ranges of tenants' user namespaces: a pool from host.toml, each range given
//! to one tenant at a time. The tenants' records are the allocation table (no second file
//! to drift from them): a range is taken while a record names it, free once it is removed.

use warren_config::{IdPool, IDS_PER_TENANT};

/// The lowest free range's first host id, None when every range is taken.
pub fn pick(pool: IdPool, taken: &[u32]) -> Option<u32> {
    (0..pool.ranges).map(|i| pool.first_id + i * IDS_PER_TENANT).find(|base| !taken.contains(base))
}

/// The uid/gid mapping of a tenant whose range starts at `base`: ids 0..65536 inside.
pub fn mapping(base: u32) -> serde_json::Value {
    serde_json::json!([{ "containerID": 0, "hostID": base, "size": IDS_PER_TENANT }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_lowest_free_range_and_none_when_full() {
        let pool = IdPool { first_id: 200_000, ranges: 3 };
        assert_eq!(pick(pool, &[]), Some(200_000));
        assert_eq!(pick(pool, &[200_000]), Some(265_536));
        assert_eq!(pick(pool, &[265_536]), Some(200_000), "a returned range is given again");
        assert_eq!(pick(pool, &[200_000, 265_536, 331_072]), None);
        // An id from an older, other pool does not block one of this pool.
        assert_eq!(pick(pool, &[100_000]), Some(200_000));
    }
}
