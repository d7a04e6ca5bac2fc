//! Which task a customer belongs to: the partition a Kafka producer keyed by customer id would
//! pick, so a customer fed by both Kafka and HTTP lands in one task.

use std::fmt;
use std::str::FromStr;

/// The partitioner the producers of the input topics use.
///
/// A task is partition index `p` of the input topics; HTTP and file input go to the task of
/// the partition a producer would have written the customer's records to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// The Java clients' default (`murmur2` of the key, seed `0x9747b28c`, sign bit cleared,
    /// modulo the partition count); librdkafka's `murmur2_random` for keyed records.
    #[default]
    Murmur2,
    /// librdkafka's `consistent` (and the key path of its default `consistent_random`): CRC-32
    /// of the key modulo the partition count.
    Crc32,
}

/// The partitioner name is neither `murmur2` nor `crc32`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown partitioner `{0}`: expected `murmur2` (Java clients) or `crc32` (librdkafka `consistent`)")]
pub struct UnknownPartitioner(pub String);

impl FromStr for Partitioner {
    type Err = UnknownPartitioner;
    fn from_str(s: &str) -> Result<Partitioner, UnknownPartitioner> {
        match s {
            "murmur2" => Ok(Partitioner::Murmur2),
            "crc32" => Ok(Partitioner::Crc32),
            other => Err(UnknownPartitioner(other.to_string())),
        }
    }
}

impl fmt::Display for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Crc32 => "crc32",
        })
    }
}

impl Partitioner {
    /// The partition (task) in `0..partitions` for `key`; `partitions` of 0 is taken as 1.
    pub fn partition(self, key: &[u8], partitions: u32) -> u32 {
        let n = partitions.max(1);
        match self {
            // Kafka's `Utils.toPositive(Utils.murmur2(key)) % numPartitions`.
            Partitioner::Murmur2 => (murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff) % n,
            Partitioner::Crc32 => crc32fast::hash(key) % n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_clients() {
        // Kafka's UtilsTest.testMurmur2 (signed Java ints).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, java) in cases {
            assert_eq!(
                murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32,
                java,
                "{}",
                String::from_utf8_lossy(key)
            );
            let expected = ((java as u32) & 0x7fff_ffff) % 24;
            assert_eq!(Partitioner::Murmur2.partition(key, 24), expected);
        }
    }

    #[test]
    fn names_parse_and_print() {
        for p in [Partitioner::Murmur2, Partitioner::Crc32] {
            assert_eq!(p.to_string().parse::<Partitioner>(), Ok(p));
        }
        assert_eq!(
            "random".parse::<Partitioner>().unwrap_err().to_string(),
            "unknown partitioner `random`: expected `murmur2` (Java clients) or `crc32` (librdkafka `consistent`)"
        );
    }

    #[test]
    fn every_partition_gets_customers() {
        for p in [Partitioner::Murmur2, Partitioner::Crc32] {
            let mut counts = [0; 6];
            for i in 0..6000 {
                counts[p.partition(format!("c{i}").as_bytes(), 6) as usize] += 1;
            }
            assert!(counts.iter().all(|&n| n > 800), "{p}: {counts:?}");
        }
    }
}
