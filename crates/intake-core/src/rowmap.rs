//! The map behind a table's rows: keys in insertion order (until a removal swaps the
//! last entry into the hole, as `IndexMap::swap_remove` does), each at a stable
//! position while no entry is removed, looked up through a hash index.
//!
//! The entries sit in reference-counted chunks of [`CHUNK`]. [`RowMap::view`] clones
//! the chunk pointers, not the entries, so a reader can take every row as of a commit
//! in a time that does not grow with the rows (one pointer per chunk) and copy them at
//! leisure after releasing the table's lock. While a view lives, the writer copies a
//! chunk the first time it changes it (copy on write): a commit pays in proportion to
//! the entries it touches, never to the table's size, and nothing at all when no view
//! is alive.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::row::Key;

/// Entries per chunk. Smaller chunks make a copy on write cheaper and a view dearer:
/// at 32, a view of 1,000,000 rows clones 31,250 pointers, and a commit that touches
/// k keys while a view lives copies at most 32·k entries.
const CHUNK: usize = 32;

#[derive(Clone)]
struct Entry<V> {
    /// The key's hash, kept so that growing the index or moving an entry never hashes
    /// a key again.
    hash: u64,
    key: Key,
    value: V,
}

type Chunk<V> = Arc<Vec<Entry<V>>>;

/// A hash map from [`Key`] to `V` with stable positions and cheap [views](Self::view).
pub(crate) struct RowMap<V> {
    hasher: foldhash::fast::RandomState,
    /// The position of every entry, found by its key's hash.
    index: HashTable<usize>,
    /// Every chunk is full but the last, which holds at least one entry.
    chunks: Vec<Chunk<V>>,
    len: usize,
}

impl<V> Default for RowMap<V> {
    fn default() -> Self {
        RowMap {
            hasher: foldhash::fast::RandomState::default(),
            index: HashTable::new(),
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<V: Clone> RowMap<V> {
    /// An empty map with room for `capacity` entries in its index.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        RowMap {
            index: HashTable::with_capacity(capacity),
            chunks: Vec::with_capacity(capacity.div_ceil(CHUNK)),
            ..RowMap::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn entry(&self, index: usize) -> Option<&Entry<V>> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    /// The entry at `index`, copying its chunk first if a view shares it.
    fn entry_mut(&mut self, index: usize) -> Option<&mut Entry<V>> {
        Arc::make_mut(self.chunks.get_mut(index / CHUNK)?).get_mut(index % CHUNK)
    }

    /// The position of `key`, if the map holds it.
    pub(crate) fn get_index_of(&self, key: &Key) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        let chunks = &self.chunks;
        self.index
            .find(hash, |&i| chunks[i / CHUNK][i % CHUNK].key == *key)
            .copied()
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&V> {
        let index = self.get_index_of(key)?;
        self.entry(index).map(|entry| &entry.value)
    }

    pub(crate) fn get_index(&self, index: usize) -> Option<(&Key, &V)> {
        self.entry(index).map(|entry| (&entry.key, &entry.value))
    }

    pub(crate) fn get_index_mut(&mut self, index: usize) -> Option<(&Key, &mut V)> {
        self.entry_mut(index).map(|entry| (&entry.key, &mut entry.value))
    }

    /// Sets the value under `key`: returns its position and the value it replaced, or
    /// `None` for a new key, which goes last.
    pub(crate) fn insert_full(&mut self, key: Key, value: V) -> (usize, Option<V>) {
        if let Some(index) = self.get_index_of(&key)
            && let Some(entry) = self.entry_mut(index)
        {
            return (index, Some(std::mem::replace(&mut entry.value, value)));
        }
        let hash = self.hasher.hash_one(&key);
        let index = self.len;
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(Entry { hash, key, value }),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(Entry { hash, key, value });
                self.chunks.push(Arc::new(chunk));
            }
        }
        self.len += 1;
        let chunks = &self.chunks;
        self.index
            .insert_unique(hash, index, |&i| chunks[i / CHUNK][i % CHUNK].hash);
        (index, None)
    }

    pub(crate) fn insert(&mut self, key: Key, value: V) -> Option<V> {
        self.insert_full(key, value).1
    }

    /// Removes the entry at `index` and moves the last entry into its place.
    pub(crate) fn swap_remove_index(&mut self, index: usize) -> Option<(Key, V)> {
        let hash = self.entry(index)?.hash;
        if let Ok(found) = self.index.find_entry(hash, |&i| i == index) {
            found.remove();
        }
        let last = self.len - 1;
        if index != last {
            let moved = self.entry(last).map(|entry| entry.hash);
            if let Some(position) = moved.and_then(|hash| self.index.find_mut(hash, |&i| i == last)) {
                *position = index;
            }
        }
        let chunk = self.chunks.last_mut()?;
        let popped = Arc::make_mut(chunk).pop()?;
        if chunk.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        let removed = match self.entry_mut(index) {
            Some(hole) if index != last => std::mem::replace(hole, popped),
            _ => popped,
        };
        Some((removed.key, removed.value))
    }

    pub(crate) fn swap_remove(&mut self, key: &Key) -> Option<V> {
        let index = self.get_index_of(key)?;
        self.swap_remove_index(index).map(|(_, value)| value)
    }

    /// The entries as they are now, unaffected by later changes to the map. Costs one
    /// reference count per chunk.
    pub(crate) fn view(&self) -> RowView<V> {
        RowView {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

/// The entries of a [`RowMap`] at one moment; see [`RowMap::view`].
pub(crate) struct RowView<V> {
    chunks: Vec<Chunk<V>>,
    len: usize,
}

impl<V> RowView<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every entry, in position order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .map(|entry| (&entry.key, &entry.value))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(i64, u32),
        Remove(i64),
        RemoveAt(usize),
        View,
        DropViews,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..200i64, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0..200i64).prop_map(Op::Remove),
            1 => any::<usize>().prop_map(Op::RemoveAt),
            1 => Just(Op::View),
            1 => Just(Op::DropViews),
        ]
    }

    /// The map's entries as a sorted model, checking that every position and every
    /// key lookup agree.
    fn contents(map: &RowMap<u32>) -> BTreeMap<i64, u32> {
        let mut model = BTreeMap::new();
        for (position, (key, value)) in map.view().iter().enumerate() {
            assert_eq!(
                map.get_index_of(key),
                Some(position),
                "the index points elsewhere"
            );
            assert_eq!(map.get_index(position).map(|(_, v)| *v), Some(*value));
            let key = key.values()[0].as_int().expect("int keys");
            assert!(model.insert(key, *value).is_none(), "a key is held twice");
        }
        assert_eq!(model.len(), map.len());
        model
    }

    proptest! {
        /// Against a `BTreeMap`: every operation agrees, and every view keeps the
        /// entries it was taken with, whatever the map does afterwards.
        #[test]
        fn behaves_as_a_map_and_views_do_not_move(ops in proptest::collection::vec(op(), 0..400)) {
            let mut map = RowMap::default();
            let mut model = BTreeMap::new();
            let mut views: Vec<(RowView<u32>, BTreeMap<i64, u32>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let (position, old) = map.insert_full(Key::from(k), v);
                        prop_assert_eq!(old, model.insert(k, v));
                        prop_assert_eq!(map.get_index(position).map(|(_, v)| *v), Some(v));
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(map.swap_remove(&Key::from(k)), model.remove(&k));
                    }
                    Op::RemoveAt(at) => {
                        if !map.is_empty() {
                            let at = at % map.len();
                            let (key, value) = map.swap_remove_index(at).expect("in range");
                            let key = key.values()[0].as_int().expect("int keys");
                            prop_assert_eq!(model.remove(&key), Some(value));
                        } else {
                            prop_assert!(map.swap_remove_index(at).is_none());
                        }
                    }
                    Op::View => views.push((map.view(), model.clone())),
                    Op::DropViews => views.clear(),
                }
                prop_assert_eq!(&contents(&map), &model);
                for (view, expected) in &views {
                    let seen: BTreeMap<i64, u32> = view
                        .iter()
                        .map(|(k, v)| (k.values()[0].as_int().expect("int keys"), *v))
                        .collect();
                    prop_assert_eq!(view.len(), expected.len());
                    prop_assert_eq!(&seen, expected);
                }
            }
        }
    }

    #[test]
    fn a_view_shares_chunks_until_the_writer_changes_them() {
        let mut map = RowMap::default();
        for k in 0..(CHUNK as i64 * 4) {
            map.insert(Key::from(k), k);
        }
        let view = map.view();
        map.insert(Key::from(0), -1);
        // Only the first chunk was copied; the other three are still shared.
        let shared = map
            .chunks
            .iter()
            .zip(&view.chunks)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, 3);
        assert_eq!(view.iter().next().map(|(_, v)| *v), Some(0));
        assert_eq!(map.get(&Key::from(0)), Some(&-1));
    }
}
