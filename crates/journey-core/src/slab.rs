//! A growable array of customer records in fixed-size chunks.
//!
//! A `Vec` doubles when full, so a shard holding 83 k customers sits in a 131 072-slot
//! allocation: 36 % of its customer memory idle, and with one shard per task that slack is
//! paid per task (docs/benchmarks.md, "Tasks"). Chunks of [`CHUNK`] records never move once
//! full and leave at most one chunk's growth idle; only the last chunk grows, by doubling.
//! Serialized as one flat sequence, as the `Vec` was, so snapshots keep their format.

use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

/// Records per chunk: a power of two, so an index splits with a shift and a mask. At the
/// customer record's 88 bytes a full chunk is 352 KiB.
pub(crate) const CHUNK: usize = 4096;
const SHIFT: u32 = CHUNK.trailing_zeros();

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slab<T> {
    /// Every chunk but the last holds exactly [`CHUNK`] records.
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends a record; its index is the previous [`Slab::len`].
    pub(crate) fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => self.chunks.push(vec![value]),
        }
        self.len += 1;
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for Slab<T> {
    type Output = T;

    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> SHIFT][i & (CHUNK - 1)]
    }
}

impl<T> IndexMut<usize> for Slab<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> SHIFT][i & (CHUNK - 1)]
    }
}

impl<T> IntoIterator for Slab<T> {
    type Item = T;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

impl<T> FromIterator<T> for Slab<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut slab = Slab::default();
        for v in iter {
            slab.push(v);
        }
        slab
    }
}

impl<T: Serialize> Serialize for Slab<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len))?;
        for v in self.iter() {
            seq.serialize_element(v)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Slab<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Chunk by chunk, so a restore never holds the flat vector and the chunks at once.
        struct Seq<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Seq<T> {
            type Value = Slab<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of records")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Slab<T>, A::Error> {
                let mut slab = Slab::default();
                while let Some(v) = seq.next_element()? {
                    slab.push(v);
                }
                Ok(slab)
            }
        }
        d.deserialize_seq(Seq(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_across_chunks_and_serialises_flat() {
        let n = 2 * CHUNK + 5;
        let mut slab: Slab<u32> = (0..n as u32).collect();
        assert_eq!(slab.len(), n);
        assert_eq!(slab.chunks.len(), 3);
        assert!(slab.chunks[..2].iter().all(|c| c.len() == CHUNK));
        assert_eq!(slab[CHUNK - 1], CHUNK as u32 - 1);
        assert_eq!(slab[CHUNK], CHUNK as u32);
        slab[2 * CHUNK + 4] = 7;
        assert_eq!(slab[n - 1], 7);
        assert_eq!(slab.iter().count(), n);

        // The bytes of the `Vec` the slab replaced.
        let flat: Vec<u32> = slab.iter().copied().collect();
        let bytes = bincode::serialize(&slab).unwrap();
        assert_eq!(bytes, bincode::serialize(&flat).unwrap());
        let back: Slab<u32> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, slab);
        assert_eq!(back.chunks.len(), 3);
    }

    #[test]
    fn a_full_chunk_never_moves() {
        let mut slab = Slab::default();
        for i in 0..CHUNK as u64 {
            slab.push(i);
        }
        let first = &slab[0] as *const u64;
        for i in 0..CHUNK as u64 {
            slab.push(i);
        }
        assert_eq!(first, &slab[0] as *const u64);
    }
}
