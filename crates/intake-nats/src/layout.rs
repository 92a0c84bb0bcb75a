//! How a feed is laid out in a stream: its partitions, each a set of subjects, and the
//! checks that the stream holds them.

use std::fmt;

/// The partitions of a feed in one JetStream stream: each partition is a name and the
/// subjects its messages are published on. Each partition is read by exactly one
/// reader, in stream order, so the messages of one key must all go to one partition.
///
/// The publisher chooses the partition (for instance with [`partition_of`] over the
/// key), rather than a server-side subject transform: partitioning computed by the
/// publisher works on every server, while a transform in the stream's configuration is
/// silently ignored by servers before 2.10 (Debian's nats-server 2.9 among them), which
/// would put every message in one partition without a word.
///
/// # Examples
///
/// ```
/// use intake_nats::Partitions;
///
/// // Four partitions, "0" to "3", on subjects `orders.0` to `orders.3`.
/// let numbered = Partitions::numbered("orders", 4);
/// assert_eq!(numbered.subjects("2"), Some(&["orders.2".to_owned()][..]));
///
/// // Named partitions, each on the subjects of its region (with keys after them).
/// let regions = Partitions::new()
///     .partition("east", ["trades.east.>"])
///     .partition("west", ["trades.west.>"]);
/// assert_eq!(regions.names().collect::<Vec<_>>(), ["east", "west"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Partitions {
    partitions: Vec<Partition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Partition {
    name: String,
    subjects: Vec<String>,
}

impl Partitions {
    /// No partitions yet; add them with [`partition`](Self::partition).
    pub fn new() -> Self {
        Partitions::default()
    }

    /// `count` partitions named `0` to `count - 1`, partition `p` on the subject
    /// `prefix.p`: what a publisher gets with [`partition_subject`].
    ///
    /// # Panics
    ///
    /// If `count` is zero, or `prefix` is not a valid subject without wildcards.
    #[track_caller]
    pub fn numbered(prefix: &str, count: u32) -> Self {
        assert!(count > 0, "a feed needs at least one partition");
        assert!(
            is_literal_subject(prefix),
            "the partition prefix `{prefix}` must be a subject without wildcards or spaces"
        );
        (0..count).fold(Partitions::new(), |partitions, p| {
            partitions.partition(p.to_string(), [format!("{prefix}.{p}")])
        })
    }

    /// Adds a partition: its name (which keys its offset, so it must stay the same
    /// across restarts) and the subjects (wildcards allowed) its messages are
    /// published on. Several subjects in one partition need nats-server 2.10 or later.
    ///
    /// # Panics
    ///
    /// If the name is empty or contains `/`, is already used, or `subjects` is empty
    /// or holds an invalid subject.
    #[track_caller]
    pub fn partition<S: Into<String>>(
        mut self,
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        let name = name.into();
        assert!(
            !name.is_empty() && !name.contains('/'),
            "a partition name must not be empty or contain `/`, found `{name}`"
        );
        assert!(
            self.partitions.iter().all(|p| p.name != name),
            "partition `{name}` is listed twice"
        );
        let subjects: Vec<String> = subjects.into_iter().map(Into::into).collect();
        assert!(
            !subjects.is_empty(),
            "partition `{name}` needs at least one subject"
        );
        for subject in &subjects {
            assert!(
                is_valid_filter(subject),
                "partition `{name}`: `{subject}` is not a valid subject"
            );
        }
        self.partitions.push(Partition { name, subjects });
        self
    }

    /// The partition names, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.partitions.iter().map(|p| p.name.as_str())
    }

    /// The subjects of partition `name`, if there is one.
    pub fn subjects(&self, name: &str) -> Option<&[String]> {
        self.partitions
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.subjects.as_slice())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// Whether some partition reads several subjects (a server 2.10 feature).
    pub(crate) fn uses_several_subjects(&self) -> bool {
        self.partitions.iter().any(|p| p.subjects.len() > 1)
    }

    /// Checks the layout against the stream's subjects: every partition subject must
    /// be in the stream, and no two partitions may share a subject (a message read by
    /// two partitions would be applied twice).
    pub(crate) fn check(&self, stream_subjects: &[String]) -> Result<(), String> {
        for partition in &self.partitions {
            for subject in &partition.subjects {
                if !stream_subjects.iter().any(|s| is_subset(subject, s)) {
                    return Err(format!(
                        "partition `{}` reads `{subject}`, which is not (wholly) among the stream's subjects {stream_subjects:?}",
                        partition.name
                    ));
                }
            }
        }
        for (i, a) in self.partitions.iter().enumerate() {
            for b in &self.partitions[i + 1..] {
                for sa in &a.subjects {
                    if let Some(sb) = b.subjects.iter().find(|sb| intersects(sa, sb)) {
                        return Err(format!(
                            "partitions `{}` (`{sa}`) and `{}` (`{sb}`) share subjects, so their messages would be read twice",
                            a.name, b.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Partitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.partitions.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}: {}", p.name, p.subjects.join(" "))?;
        }
        Ok(())
    }
}

/// The partition (of `count`) a key belongs to: FNV-1a (64 bits) of the key's bytes,
/// modulo `count`. The function is fixed (it will not change between versions), so
/// publishers in any language can compute the same partition.
///
/// # Panics
///
/// If `count` is zero.
///
/// # Examples
///
/// ```
/// use intake_nats::{partition_of, partition_subject};
///
/// let p = partition_of(b"AAPL", 4);
/// assert!(p < 4);
/// assert_eq!(partition_subject("trades", b"AAPL", 4), format!("trades.{p}"));
/// ```
#[track_caller]
pub fn partition_of(key: &[u8], count: u32) -> u32 {
    assert!(count > 0, "a feed needs at least one partition");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The remainder is below `count`, a u32.
    (hash % u64::from(count)) as u32
}

/// The subject to publish a message with this key on, for a feed laid out as
/// [`Partitions::numbered(prefix, count)`](Partitions::numbered): `prefix.p` with
/// `p` = [`partition_of(key, count)`](partition_of).
///
/// # Panics
///
/// If `count` is zero.
#[track_caller]
pub fn partition_subject(prefix: &str, key: &[u8], count: u32) -> String {
    format!("{prefix}.{}", partition_of(key, count))
}

fn is_literal_subject(subject: &str) -> bool {
    is_valid_filter(subject) && subject.split('.').all(|t| t != "*" && t != ">")
}

fn is_valid_filter(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    !subject.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.chars().any(char::is_whitespace)
                && (*t != ">" || i == tokens.len() - 1)
                && (t.len() == 1 || !t.contains(['*', '>']))
        })
}

/// Whether every subject matching `filter` also matches `pattern`.
fn is_subset(filter: &str, pattern: &str) -> bool {
    let filter: Vec<&str> = filter.split('.').collect();
    let pattern: Vec<&str> = pattern.split('.').collect();
    for (i, p) in pattern.iter().enumerate() {
        match (*p, filter.get(i).copied()) {
            (">", Some(_)) => return true,
            (_, None) | (_, Some(">")) => return false,
            ("*", Some(_)) => {}
            (p, Some(f)) if p == f => {}
            _ => return false,
        }
    }
    filter.len() == pattern.len()
}

/// Whether some subject matches both `a` and `b`.
fn intersects(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    let mut i = 0;
    loop {
        match (a.get(i).copied(), b.get(i).copied()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (None, None) => return true,
            (None, _) | (_, None) => return false,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => i += 1,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_follow_the_wildcards() {
        assert!(is_subset("feed.3", "feed.3"));
        assert!(is_subset("feed.3", "feed.*"));
        assert!(is_subset("feed.3", "feed.>"));
        assert!(is_subset("feed.3.>", "feed.>"));
        assert!(is_subset("feed.3.>", "feed.*.>"));
        assert!(is_subset("feed.*", "feed.>"));
        assert!(!is_subset("feed.3.>", "feed.*"));
        assert!(!is_subset("feed.>", "feed.*"));
        assert!(!is_subset("feed.*", "feed.3"));
        assert!(!is_subset("feed", "feed.>"));
        assert!(!is_subset("feed.3", "other.>"));
        assert!(!is_subset("feed.3.x", "feed.3"));
    }

    #[test]
    fn overlaps_are_found() {
        assert!(intersects("feed.1", "feed.*"));
        assert!(intersects("feed.>", "feed.1.x"));
        assert!(intersects("feed.*.x", "feed.1.*"));
        assert!(!intersects("feed.1", "feed.2"));
        assert!(!intersects("feed.1", "feed.1.>"));
        assert!(!intersects("feed.1.x", "feed.*"));
    }

    #[test]
    fn a_layout_outside_the_stream_or_overlapping_is_refused() {
        let layout = Partitions::numbered("feed", 3);
        assert_eq!(layout.check(&["feed.*".into()]), Ok(()));
        assert_eq!(
            layout.check(&["feed.0".into(), "feed.1".into(), "feed.2".into()]),
            Ok(())
        );
        let error = layout.check(&["feed.0".into(), "feed.1".into()]).unwrap_err();
        assert!(error.contains("`2`") && error.contains("feed.2"), "{error}");
        let overlapping = Partitions::new()
            .partition("a", ["feed.>"])
            .partition("b", ["feed.1"]);
        let error = overlapping.check(&["feed.>".into()]).unwrap_err();
        assert!(error.contains("share subjects"), "{error}");
    }

    #[test]
    fn partition_of_is_fixed() {
        // FNV-1a 64 of "" and of "a", the published test vectors.
        assert_eq!(
            partition_of(b"", u32::MAX),
            (0xcbf2_9ce4_8422_2325u64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(
            partition_of(b"a", u32::MAX),
            (0xaf63_dc4c_8601_ec8cu64 % u64::from(u32::MAX)) as u32
        );
        let spread: std::collections::BTreeSet<u32> = (0..100)
            .map(|k| partition_of(format!("k{k}").as_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn filters_are_validated() {
        assert!(is_valid_filter("a.b.>"));
        assert!(is_valid_filter("a.*.c"));
        assert!(!is_valid_filter("a.>.c"));
        assert!(!is_valid_filter("a..b"));
        assert!(!is_valid_filter("a b"));
        assert!(!is_valid_filter("a.b*"));
        assert!(!is_valid_filter(""));
    }
}
