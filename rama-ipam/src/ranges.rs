//! A set of addresses as sorted, disjoint, inclusive ranges: a /16 or a /64 costs one
//! range until it fragments, never one entry per address (the original Rama capped
//! subnets at 65,536 addresses because it materialised them).

/// Addresses of one family as integers (IPv4 in the low 32 bits).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// Sorted by start; disjoint and non-adjacent.
    ranges: Vec<(u128, u128)>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of addresses in the set.
    pub fn len(&self) -> u128 {
        self.ranges.iter().map(|(lo, hi)| hi - lo + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of ranges (fragmentation).
    pub fn fragments(&self) -> usize {
        self.ranges.len()
    }

    /// Index of the first range whose end is ≥ `a`.
    fn search(&self, a: u128) -> usize {
        self.ranges.partition_point(|(_, hi)| *hi < a)
    }

    pub fn contains(&self, a: u128) -> bool {
        let i = self.search(a);
        i < self.ranges.len() && self.ranges[i].0 <= a
    }

    /// Adds `lo..=hi`, merging with neighbours.
    pub fn insert_range(&mut self, lo: u128, hi: u128) {
        if lo > hi {
            return;
        }
        let mut lo = lo;
        let mut hi = hi;
        // First range that could touch [lo, hi]: its end ≥ lo - 1.
        let start = self
            .ranges
            .partition_point(|(_, e)| e.saturating_add(1) < lo);
        let mut end = start;
        while end < self.ranges.len() && self.ranges[end].0 <= hi.saturating_add(1) {
            lo = lo.min(self.ranges[end].0);
            hi = hi.max(self.ranges[end].1);
            end += 1;
        }
        self.ranges.splice(start..end, [(lo, hi)]);
    }

    pub fn insert(&mut self, a: u128) {
        self.insert_range(a, a);
    }

    /// Removes `lo..=hi` (whatever part of it is present).
    pub fn remove_range(&mut self, lo: u128, hi: u128) {
        if lo > hi {
            return;
        }
        let start = self.search(lo);
        let mut replacement = Vec::with_capacity(2);
        let mut end = start;
        while end < self.ranges.len() && self.ranges[end].0 <= hi {
            let (s, e) = self.ranges[end];
            if s < lo {
                replacement.push((s, lo - 1));
            }
            if e > hi {
                replacement.push((hi + 1, e));
            }
            end += 1;
        }
        self.ranges.splice(start..end, replacement);
    }

    /// Removes `a`; whether it was present.
    pub fn remove(&mut self, a: u128) -> bool {
        if !self.contains(a) {
            return false;
        }
        self.remove_range(a, a);
        true
    }

    /// The smallest address ≥ `a`, if any.
    pub fn first_at_or_after(&self, a: u128) -> Option<u128> {
        let i = self.search(a);
        self.ranges.get(i).map(|(lo, _)| (*lo).max(a))
    }

    pub fn first(&self) -> Option<u128> {
        self.ranges.first().map(|(lo, _)| *lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut s = RangeSet::new();
        s.insert_range(10, 20);
        s.insert_range(22, 30);
        assert_eq!(s.fragments(), 2);
        s.insert(21);
        assert_eq!(s.fragments(), 1);
        assert_eq!(s.len(), 21);
        assert!(s.remove(15));
        assert!(!s.remove(15));
        assert_eq!(s.fragments(), 2);
        assert_eq!(s.first_at_or_after(15), Some(16));
        assert_eq!(s.first_at_or_after(31), None);
        s.remove_range(0, 100);
        assert!(s.is_empty());
    }

    #[test]
    fn a_slash_64_is_one_range() {
        let mut s = RangeSet::new();
        s.insert_range(1, u128::from(u64::MAX));
        assert_eq!(s.fragments(), 1);
        assert_eq!(s.len(), u128::from(u64::MAX));
        s.remove(1 << 40);
        assert_eq!(s.fragments(), 2);
    }
}
