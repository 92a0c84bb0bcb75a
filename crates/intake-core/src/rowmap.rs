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

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use crate::row::Key;

/// Entries per chunk. Smaller chunks make a copy on write cheaper and a view dearer:
/// at 16, a view of 1,000,000 rows clones 62,500 pointers, and a commit that touches
/// k keys while a view lives copies at most 16·k entries. Measured with
/// `bench_snapshot` (a 1,000,000-row table updated at 100,000 keys/s while another
/// thread snapshots it back to back), p99 commit latency rose by 30–37 ms over no
/// reader at 32, 13–16 ms at 16, 4–11 ms at 8 (whose views cost twice 16's).
const CHUNK: usize = 16;

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

    /// Every entry, by value, in position order.
    pub(crate) fn into_entries(self) -> impl Iterator<Item = (Key, V)> {
        self.chunks
            .into_iter()
            .flat_map(|chunk| Arc::unwrap_or_clone(chunk).into_iter())
            .map(|entry| (entry.key, entry.value))
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

/// The rows of a table without a primary key, by generated number: a slot for every
/// number from the oldest row held to the newest, in reference-counted chunks like
/// [`RowMap`]'s, with neither a hash index nor stored keys (the number is the key).
/// An append table holds its rows in about a third of the memory a [`RowMap`] entry
/// takes, and an append costs no hashing.
///
/// A removed row leaves an empty slot until every slot of its chunk is empty and the
/// chunk is the oldest: removing the oldest rows first (a retention bound) frees them
/// chunk by chunk, while rows removed in the middle cost a slot each until then.
pub(crate) struct AppendLog<V> {
    /// The number of the first slot of the first chunk.
    base: u64,
    /// Every chunk is full but the last.
    chunks: VecDeque<Arc<Vec<Option<V>>>>,
    /// Occupied slots.
    len: usize,
}

impl<V> Default for AppendLog<V> {
    fn default() -> Self {
        AppendLog {
            base: 0,
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<V: Clone> AppendLog<V> {
    /// One past the number of the last slot.
    fn end(&self) -> u64 {
        match self.chunks.back() {
            Some(last) => self.base + ((self.chunks.len() - 1) * CHUNK + last.len()) as u64,
            None => self.base,
        }
    }

    fn slot(&self, id: u64) -> Option<&Option<V>> {
        let offset = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.chunks.get(offset / CHUNK)?.get(offset % CHUNK)
    }

    fn slot_mut(&mut self, id: u64) -> Option<&mut Option<V>> {
        let offset = usize::try_from(id.checked_sub(self.base)?).ok()?;
        Arc::make_mut(self.chunks.get_mut(offset / CHUNK)?).get_mut(offset % CHUNK)
    }

    pub(crate) fn get(&self, id: u64) -> Option<&V> {
        self.slot(id)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        self.slot_mut(id)?.as_mut()
    }

    /// Puts `value` under `id`, which must not be held; returns `false` (and changes
    /// nothing) if it is. A number past the end extends the log, leaving empty slots
    /// for any numbers skipped.
    pub(crate) fn insert(&mut self, id: u64, value: V) -> bool {
        if self.len == 0 {
            // Nothing is held: start afresh at `id`, whatever came before.
            self.chunks.clear();
            self.base = id;
        }
        if id < self.base {
            // Older than every row held, which a table never asks for (its numbers
            // only grow): start again from `id` and put the rows back after it.
            let held = std::mem::take(self);
            self.insert(id, value);
            let base = held.base;
            for (offset, slot) in held.chunks.into_iter().flat_map(Arc::unwrap_or_clone).enumerate() {
                if let Some(value) = slot {
                    self.insert(base + offset as u64, value);
                }
            }
            return true;
        }
        if id < self.end() {
            return match self.slot_mut(id) {
                Some(slot @ None) => {
                    *slot = Some(value);
                    self.len += 1;
                    true
                }
                _ => false,
            };
        }
        for _ in self.end()..id {
            self.push(None);
        }
        self.push(Some(value));
        self.len += 1;
        true
    }

    fn push(&mut self, slot: Option<V>) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(slot),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(slot);
                self.chunks.push_back(Arc::new(chunk));
            }
        }
    }

    /// Empties the slot of `id` and returns what it held; frees the oldest chunks once
    /// all their slots are empty.
    pub(crate) fn remove(&mut self, id: u64) -> Option<V> {
        let removed = self.slot_mut(id)?.take()?;
        self.len -= 1;
        if self.len == 0 {
            self.base = self.end();
            self.chunks.clear();
        } else {
            while self
                .chunks
                .front()
                .is_some_and(|chunk| chunk.len() == CHUNK && chunk.iter().all(Option::is_none))
            {
                self.chunks.pop_front();
                self.base += CHUNK as u64;
            }
        }
        Some(removed)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The number of the oldest row held.
    pub(crate) fn first(&self) -> Option<u64> {
        // Empty chunks in front are freed, so this looks at fewer than two chunks.
        let offset = self
            .chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .position(Option::is_some)?;
        Some(self.base + offset as u64)
    }

    /// The rows as they are now; see [`RowMap::view`].
    pub(crate) fn view(&self) -> LogView<V> {
        LogView {
            base: self.base,
            chunks: self.chunks.iter().cloned().collect(),
            len: self.len,
        }
    }
}

/// The rows of an [`AppendLog`] at one moment.
pub(crate) struct LogView<V> {
    base: u64,
    chunks: Vec<Arc<Vec<Option<V>>>>,
    len: usize,
}

impl<V> LogView<V> {
    /// Every row with its number, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        let base = self.base;
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .enumerate()
            .filter_map(move |(offset, slot)| slot.as_ref().map(|value| (base + offset as u64, value)))
    }
}

/// A table's rows: keyed by primary key in a [`RowMap`], or by generated number in an
/// [`AppendLog`] for a table without one. Positions are stable while a commit is
/// applied: a [`RowMap`] position until an entry is removed, an [`AppendLog`] position
/// (the row's number) always.
pub(crate) enum Rows<V> {
    Keyed(RowMap<V>),
    Appended(AppendLog<V>),
}

impl<V: Clone> Rows<V> {
    /// Empty rows for a table with (`keyed`) or without a primary key.
    pub(crate) fn new(keyed: bool) -> Self {
        match keyed {
            true => Rows::Keyed(RowMap::default()),
            false => Rows::Appended(AppendLog::default()),
        }
    }

    /// The rows storage restored, in the form a table with (`keyed`) or without a
    /// primary key keeps them.
    pub(crate) fn restored(keyed: bool, map: RowMap<V>) -> Self {
        if keyed {
            return Rows::Keyed(map);
        }
        let mut rows: Vec<(u64, V)> = map
            .into_entries()
            .filter_map(|(key, value)| Some((key.generated_id()?, value)))
            .collect();
        rows.sort_unstable_by_key(|(id, _)| *id);
        let mut log = AppendLog::default();
        for (id, value) in rows {
            log.insert(id, value);
        }
        Rows::Appended(log)
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Rows::Keyed(map) => map.len(),
            Rows::Appended(log) => log.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The generated number of the oldest row of an append table, or `None` for a
    /// keyed table or an empty one.
    pub(crate) fn oldest_generated(&self) -> Option<u64> {
        match self {
            Rows::Keyed(_) => None,
            Rows::Appended(log) => log.first(),
        }
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&V> {
        match self {
            Rows::Keyed(map) => map.get(key),
            Rows::Appended(log) => log.get(key.generated_id()?),
        }
    }

    /// The position of `key`, if held.
    pub(crate) fn get_index_of(&self, key: &Key) -> Option<usize> {
        match self {
            Rows::Keyed(map) => map.get_index_of(key),
            Rows::Appended(log) => {
                let id = key.generated_id()?;
                log.get(id)?;
                usize::try_from(id).ok()
            }
        }
    }

    /// Adds `key`, which is not held, with `value`; returns its position, or `None`
    /// if these rows cannot hold such a key (a primary key in an append table).
    pub(crate) fn insert_new(&mut self, key: Key, value: V) -> Option<usize> {
        match self {
            Rows::Keyed(map) => Some(map.insert_full(key, value).0),
            Rows::Appended(log) => {
                let id = key.generated_id()?;
                let position = usize::try_from(id).ok()?;
                log.insert(id, value).then_some(position)
            }
        }
    }

    /// The key and value at `position`.
    pub(crate) fn get_index(&self, position: usize) -> Option<(Key, &V)> {
        match self {
            Rows::Keyed(map) => map.get_index(position).map(|(key, value)| (key.clone(), value)),
            Rows::Appended(log) => {
                let id = position as u64;
                log.get(id).map(|value| (Key::generated(id), value))
            }
        }
    }

    pub(crate) fn get_index_mut(&mut self, position: usize) -> Option<&mut V> {
        match self {
            Rows::Keyed(map) => map.get_index_mut(position).map(|(_, value)| value),
            Rows::Appended(log) => log.get_mut(position as u64),
        }
    }

    /// Removes the entry at `position`. In a [`RowMap`] the last entry moves into its
    /// place, so remove positions from the highest down.
    pub(crate) fn remove_index(&mut self, position: usize) -> Option<V> {
        match self {
            Rows::Keyed(map) => map.swap_remove_index(position).map(|(_, value)| value),
            Rows::Appended(log) => log.remove(position as u64),
        }
    }

    /// The rows as they are now, unaffected by later changes; costs a reference count
    /// per chunk.
    pub(crate) fn view(&self) -> RowsView<V> {
        match self {
            Rows::Keyed(map) => RowsView::Keyed(map.view()),
            Rows::Appended(log) => RowsView::Appended(log.view()),
        }
    }
}

/// [`Rows`] at one moment; see [`Rows::view`].
pub(crate) enum RowsView<V> {
    Keyed(RowView<V>),
    Appended(LogView<V>),
}

impl<V> RowsView<V> {
    pub(crate) fn len(&self) -> usize {
        match self {
            RowsView::Keyed(view) => view.len(),
            RowsView::Appended(view) => view.len,
        }
    }

    /// Every entry with its key: a keyed table's in position order, an append
    /// table's oldest first.
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = (Key, &V)> + '_> {
        match self {
            RowsView::Keyed(view) => Box::new(view.iter().map(|(key, value)| (key.clone(), value))),
            RowsView::Appended(view) => Box::new(view.iter().map(|(id, value)| (Key::generated(id), value))),
        }
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
        #![proptest_config(ProptestConfig::with_cases(64))]

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
                        if map.len() > 0 {
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

    #[derive(Debug, Clone)]
    enum LogOp {
        Append(u32),
        /// Skip this many numbers before the next append, as deletions in the middle
        /// of a restored table leave.
        Skip(u8),
        Remove(u64),
        RemoveOldest,
        View,
        DropViews,
    }

    fn log_op() -> impl Strategy<Value = LogOp> {
        prop_oneof![
            6 => any::<u32>().prop_map(LogOp::Append),
            1 => any::<u8>().prop_map(LogOp::Skip),
            2 => (0..300u64).prop_map(LogOp::Remove),
            3 => Just(LogOp::RemoveOldest),
            1 => Just(LogOp::View),
            1 => Just(LogOp::DropViews),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a `BTreeMap` of number to value: appends, removals anywhere and of
        /// the oldest, and views that keep what they were taken with; the log never
        /// holds more chunks than its span of numbers needs.
        #[test]
        fn an_append_log_behaves_as_a_map_by_number(ops in proptest::collection::vec(log_op(), 0..600)) {
            let mut log = AppendLog::default();
            let mut model = BTreeMap::new();
            let mut next = 1u64;
            let mut views: Vec<(LogView<u32>, BTreeMap<u64, u32>)> = Vec::new();
            for op in ops {
                match op {
                    LogOp::Append(v) => {
                        prop_assert!(log.insert(next, v));
                        prop_assert!(!log.insert(next, v), "a number held is refused");
                        model.insert(next, v);
                        next += 1;
                    }
                    LogOp::Skip(n) => next += u64::from(n),
                    LogOp::Remove(id) => prop_assert_eq!(log.remove(id), model.remove(&id)),
                    LogOp::RemoveOldest => {
                        let oldest = model.keys().next().copied();
                        if let Some(id) = oldest {
                            prop_assert_eq!(log.remove(id), model.remove(&id));
                        }
                    }
                    LogOp::View => views.push((log.view(), model.clone())),
                    LogOp::DropViews => views.clear(),
                }
                prop_assert_eq!(log.len(), model.len());
                prop_assert_eq!(log.first(), model.keys().next().copied());
                let seen: BTreeMap<u64, u32> = log.view().iter().map(|(id, v)| (id, *v)).collect();
                prop_assert_eq!(&seen, &model);
                for (id, v) in &model {
                    prop_assert_eq!(log.get(*id), Some(v));
                }
                if let Some(first) = model.keys().next() {
                    // Empty chunks before the oldest row are freed (those after the
                    // newest stay, to be followed by the next appends).
                    let span = (next - first) as usize;
                    prop_assert!(log.chunks.len() <= span.div_ceil(CHUNK) + 1, "empty chunks are freed");
                } else {
                    prop_assert!(log.chunks.is_empty());
                }
                for (view, expected) in &views {
                    let seen: BTreeMap<u64, u32> = view.iter().map(|(id, v)| (id, *v)).collect();
                    prop_assert_eq!(&seen, expected);
                }
            }
        }
    }

    #[test]
    fn an_append_log_takes_a_number_older_than_all_it_holds() {
        let mut log = AppendLog::default();
        assert!(log.insert(100, 'b'));
        assert!(log.insert(101, 'c'));
        assert!(log.insert(3, 'a'));
        let all: Vec<(u64, char)> = log.view().iter().map(|(id, v)| (id, *v)).collect();
        assert_eq!(all, [(3, 'a'), (100, 'b'), (101, 'c')]);
    }

    #[test]
    fn restored_rows_of_an_append_table_are_ordered_by_number() {
        let mut map = RowMap::default();
        for id in [7u64, 3, 9, 4] {
            map.insert(Key::generated(id), id as u32);
        }
        let rows = Rows::restored(false, map);
        let Rows::Appended(log) = &rows else {
            panic!("an append table keeps an append log")
        };
        let ids: Vec<u64> = log.view().iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [3, 4, 7, 9]);
        assert_eq!(rows.get_index_of(&Key::generated(7)), Some(7));
        assert_eq!(
            rows.get_index_of(&Key::from(7)),
            None,
            "a primary key is never held"
        );
    }
}
