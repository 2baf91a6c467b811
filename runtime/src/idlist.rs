//! The kernel's list format for CPU and NUMA node numbers ("0-3,7"), as
//! config.json uses it for `process.execCPUAffinity` and
//! `linux.memoryPolicy.nodes` and the cpuset controller use it, parsed into the bitmask
//! the syscalls take.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IdListError {
    #[error("{part:?} is not a number or a range N-M")]
    Syntax { part: String },
    #[error("range {first}-{last} runs backwards")]
    Backwards { first: u32, last: u32 },
    #[error("{id} is beyond the largest number this runtime accepts ({limit})")]
    TooLarge { id: u32, limit: u32 },
}

/// A set of small numbers as a bitmask of 64-bit words, bit `n % 64` of word
/// `n / 64` for number `n`: the layout of cpu_set_t and of nodemasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSet {
    words: Vec<u64>,
}

impl IdSet {
    /// Parses "0-3,7"; every number must be at most `limit`. An empty (or
    /// all-blank) text is the empty set.
    pub fn parse(text: &str, limit: u32) -> Result<IdSet, IdListError> {
        let mut set = IdSet::default();
        for part in text.split(',').map(str::trim) {
            if part.is_empty() && text.trim().is_empty() {
                continue;
            }
            let num = |s: &str| s.trim().parse::<u32>().map_err(|_| IdListError::Syntax { part: part.to_string() });
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(part)?, num(part)?),
            };
            if first > last {
                return Err(IdListError::Backwards { first, last });
            }
            if last > limit {
                return Err(IdListError::TooLarge { id: last, limit });
            }
            (first..=last).for_each(|n| set.insert(n));
        }
        Ok(set)
    }

    fn insert(&mut self, n: u32) {
        let word = n as usize / 64;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (n % 64);
    }

    pub fn contains(&self, n: u32) -> bool {
        self.words.get(n as usize / 64).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The largest number in the set.
    pub fn max(&self) -> Option<u32> {
        let i = self.words.iter().rposition(|w| *w != 0)?;
        Some(i as u32 * 64 + 63 - self.words[i].leading_zeros())
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The members, smallest first.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.words.len() as u32 * 64).filter(|&n| self.contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_singles() {
        let s = IdSet::parse("0-2,7,64", 1023).unwrap();
        assert_eq!(s.words(), &[0b1000_0111, 1]);
        assert!(s.contains(1) && s.contains(64) && !s.contains(3));
        assert_eq!(s.max(), Some(64));
        assert!(IdSet::parse("", 10).unwrap().is_empty());
        assert_eq!(IdSet::parse(" 1 , 3 ", 10).unwrap().words(), &[0b1010]);
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in ["a", "1,", ",1", "1-", "-1", "1--2", "1-2-3", "0x1"] {
            assert!(matches!(IdSet::parse(bad, 100), Err(IdListError::Syntax { .. })), "{bad:?}");
        }
        assert!(matches!(IdSet::parse("3-1", 100), Err(IdListError::Backwards { first: 3, last: 1 })));
        assert!(matches!(IdSet::parse("0,101", 100), Err(IdListError::TooLarge { id: 101, limit: 100 })));
    }
}
