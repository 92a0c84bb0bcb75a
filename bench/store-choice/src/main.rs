//! Which store should keep intake's tables on disk? (issue 8, item 2)
//!
//! Measures three ways to persist a keyed table that receives W1-like commits
//! (`{key: int, sym: string, price: float, size: int}`, commits of 10,000 upserts over
//! 100,000 keys):
//!
//! - `log`: a checksummed append-only log (`[len u32][crc32 u32][payload]` per commit)
//!   plus a snapshot file written on compaction; `log-prealloc` is the same log written
//!   in place into a file grown ahead in zero-filled 8 MiB steps;
//! - `redb`: one write transaction per commit, key -> encoded row;
//! - `fjall`: one write batch per commit, key -> encoded row.
//!
//! Every store receives the same encoded bytes per row (see [`codec`]), so only the
//! storage engine differs. Each measurement runs in a fresh child process (this same
//! binary with `child ...` arguments) so peak RSS is that measurement's own.
//!
//! Run: `cargo run --release -- [--reps 3] [--commits 300] [--restore-rows 1000000]
//! [--dir PATH] [--stores log,log-prealloc,redb,fjall]`

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const KEYS: u64 = 100_000;
const BATCH: usize = 10_000;

mod codec {
    //! A small binary row codec: zigzag varints for ints, length-prefixed strings, LE f64.

    pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    pub fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = *bytes.get(*pos)?;
            *pos += 1;
            if shift >= 64 {
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
            shift += 7;
        }
    }

    fn zigzag(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }

    fn unzigzag(v: u64) -> i64 {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }

    pub struct Row<'a> {
        pub key: i64,
        pub sym: &'a str,
        pub price: f64,
        pub size: i64,
    }

    pub fn encode(buf: &mut Vec<u8>, row: &Row<'_>) {
        put_varint(buf, zigzag(row.key));
        put_varint(buf, row.sym.len() as u64);
        buf.extend_from_slice(row.sym.as_bytes());
        buf.extend_from_slice(&row.price.to_le_bytes());
        put_varint(buf, zigzag(row.size));
    }

    /// Key and encoded length of the row starting at `pos`: what a log replay needs to
    /// index a row without materialising it.
    pub fn key_and_len(bytes: &[u8], pos: usize) -> Option<(i64, usize)> {
        let mut p = pos;
        let key = unzigzag(get_varint(bytes, &mut p)?);
        let sym_len = usize::try_from(get_varint(bytes, &mut p)?).ok()?;
        p = p.checked_add(sym_len)?.checked_add(8)?;
        if p > bytes.len() {
            return None;
        }
        get_varint(bytes, &mut p)?;
        Some((key, p - pos))
    }
}

/// Deterministic W1-like row generator (splitmix64).
struct Gen {
    state: u64,
    syms: Vec<String>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        let mut g = Gen {
            state: seed,
            syms: Vec::new(),
        };
        let syms = (0..1000)
            .map(|_| {
                let len = 3 + (g.next() % 3) as usize;
                (0..len).map(|_| (b'A' + (g.next() % 26) as u8) as char).collect()
            })
            .collect();
        g.syms = syms;
        g
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Encodes the row for `key` into `buf` (appending).
    fn encode_row(&mut self, key: i64, buf: &mut Vec<u8>) {
        let r = self.next();
        let row = codec::Row {
            key,
            sym: &self.syms[(key as u64 % 1000) as usize],
            price: (r % 1_000_000) as f64 / 100.0,
            size: ((r >> 20) % 10_000) as i64,
        };
        codec::encode(buf, &row);
    }

    /// Key of the next W1 upsert: uniform over `KEYS`.
    fn upsert_key(&mut self) -> i64 {
        (self.next() % KEYS) as i64
    }
}

/// Key of the `i`-th row of the restore table: a permutation of `0..n`, so the engines
/// do not get sorted (best-case) inserts.
fn restore_key(i: u64, n: u64) -> i64 {
    // A prime multiplier is coprime with n (n < MUL), so i -> i * MUL mod n is a bijection.
    const MUL: u64 = 2_654_435_761;
    ((i % n) * MUL % n) as i64
}

// ---------------------------------------------------------------------------------
// The three stores behind one interface.

trait Store: Sized {
    fn open(dir: &Path) -> Result<Self>;
    /// One commit of the rows in `rows` (each `(key, encoded row)`), durable on return
    /// when `sync` is set.
    fn commit(&mut self, rows: &[(i64, std::ops::Range<usize>)], data: &[u8], sync: bool) -> Result<()>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<()>;
    /// The engine's compaction. `table` is the in-memory table the service holds anyway:
    /// the log writes it as a snapshot, the engines ignore it.
    fn compact(self, dir: &Path, table: &HashMap<i64, Vec<u8>>) -> Result<()>;
    /// Reopens and reads the whole table.
    fn restore(dir: &Path) -> Result<HashMap<i64, Vec<u8>>>;
}

// --- checksummed log + snapshot ---------------------------------------------------

/// The log. With `PREALLOC`, the file is grown ahead of the writes in zero-filled chunks
/// and records are written in place, so `sync_data` has no file-size change to journal
/// (one device flush per commit instead of data + metadata).
struct LogStore<const PREALLOC: bool> {
    file: File,
    record: Vec<u8>,
    end: u64,
    allocated: u64,
}

/// Preallocation step of the `log-prealloc` variant; its cost (zero writes and one sync
/// per step) is included in the commit timings.
const PREALLOC_STEP: u64 = 8 << 20;

const LOG: &str = "table.log";
const SNAP: &str = "table.snap";

/// Fills in the header of `record`: 8 reserved bytes followed by the payload.
fn seal_record(record: &mut [u8]) -> Result<()> {
    let payload_len = u32::try_from(record.len() - 8)?;
    let crc = crc32fast::hash(&record[8..]);
    record[0..4].copy_from_slice(&payload_len.to_le_bytes());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn replay(path: &Path, map: &mut HashMap<i64, Vec<u8>>) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 8];
    let mut payload = Vec::new();
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes(header[0..4].try_into()?) as usize;
        if len == 0 {
            // Preallocated zeros: no commit is empty, so this is the end of the log.
            break;
        }
        let crc = u32::from_le_bytes(header[4..8].try_into()?);
        payload.resize(len, 0);
        if r.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            // A torn tail: the real implementation warns and cuts the file here.
            break;
        }
        let mut pos = 0;
        let count = codec::get_varint(&payload, &mut pos).ok_or("bad count")?;
        for _ in 0..count {
            let (key, n) = codec::key_and_len(&payload, pos).ok_or("bad row")?;
            map.insert(key, payload[pos..pos + n].to_vec());
            pos += n;
        }
    }
    Ok(())
}

impl<const PREALLOC: bool> Store for LogStore<PREALLOC> {
    fn open(dir: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(LOG))?;
        if file.metadata()?.len() != 0 {
            return Err("the benchmark only opens an empty log for writing".into());
        }
        Ok(LogStore {
            file,
            record: Vec::with_capacity(1 << 20),
            end: 0,
            allocated: 0,
        })
    }

    fn commit(&mut self, rows: &[(i64, std::ops::Range<usize>)], data: &[u8], sync: bool) -> Result<()> {
        self.record.clear();
        self.record.extend_from_slice(&[0; 8]);
        codec::put_varint(&mut self.record, rows.len() as u64);
        for (_, range) in rows {
            self.record.extend_from_slice(&data[range.clone()]);
        }
        seal_record(&mut self.record)?;
        let len = self.record.len() as u64;
        if PREALLOC {
            use std::os::unix::fs::FileExt;
            while self.end + len > self.allocated {
                let zeros = vec![0u8; PREALLOC_STEP as usize];
                self.file.write_all_at(&zeros, self.allocated)?;
                self.allocated += PREALLOC_STEP;
                self.file.sync_all()?;
            }
            self.file.write_all_at(&self.record, self.end)?;
        } else {
            // Plain append: the file grows with every commit.
            self.file.write_all(&self.record)?;
        }
        self.end += len;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_data()?;
        Ok(())
    }

    fn compact(self, dir: &Path, table: &HashMap<i64, Vec<u8>>) -> Result<()> {
        drop(self.file);
        log_snapshot(dir, table)
    }

    fn restore(dir: &Path) -> Result<HashMap<i64, Vec<u8>>> {
        let mut map = HashMap::new();
        replay(&dir.join(SNAP), &mut map)?;
        replay(&dir.join(LOG), &mut map)?;
        Ok(map)
    }
}

/// Log compaction: writes `state` (the service's in-memory table) as a snapshot in
/// records of `BATCH` rows, makes it durable, then empties the log.
fn log_snapshot(dir: &Path, state: &HashMap<i64, Vec<u8>>) -> Result<()> {
    let tmp = dir.join("table.snap.tmp");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let mut record = Vec::with_capacity(1 << 20);
    let mut rows = state.values().peekable();
    while rows.peek().is_some() {
        record.clear();
        record.extend_from_slice(&[0; 8]);
        let chunk: Vec<&Vec<u8>> = rows.by_ref().take(BATCH).collect();
        codec::put_varint(&mut record, chunk.len() as u64);
        for row in chunk {
            record.extend_from_slice(row);
        }
        seal_record(&mut record)?;
        out.write_all(&record)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    fs::rename(&tmp, dir.join(SNAP))?;
    File::open(dir)?.sync_all()?;
    let log = OpenOptions::new().write(true).open(dir.join(LOG))?;
    log.set_len(0)?;
    log.sync_all()?;
    Ok(())
}

// --- redb ---------------------------------------------------------------------------

const REDB_TABLE: redb::TableDefinition<i64, &[u8]> = redb::TableDefinition::new("table");

struct RedbStore {
    db: redb::Database,
}

impl Store for RedbStore {
    fn open(dir: &Path) -> Result<Self> {
        let db = redb::Database::create(dir.join("table.redb"))?;
        Ok(RedbStore { db })
    }

    fn commit(&mut self, rows: &[(i64, std::ops::Range<usize>)], data: &[u8], sync: bool) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })?;
        {
            let mut table = tx.open_table(REDB_TABLE)?;
            for (key, range) in rows {
                table.insert(*key, &data[range.clone()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        // An empty durable transaction makes the preceding non-durable ones durable.
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }

    fn compact(mut self, _: &Path, _: &HashMap<i64, Vec<u8>>) -> Result<()> {
        while self.db.compact()? {}
        Ok(())
    }

    fn restore(dir: &Path) -> Result<HashMap<i64, Vec<u8>>> {
        use redb::{ReadableDatabase, ReadableTable};
        let db = redb::Database::open(dir.join("table.redb"))?;
        let tx = db.begin_read()?;
        let table = tx.open_table(REDB_TABLE)?;
        let mut map = HashMap::new();
        for item in table.iter()? {
            let (k, v) = item?;
            map.insert(k.value(), v.value().to_vec());
        }
        Ok(map)
    }
}

// --- fjall --------------------------------------------------------------------------

struct FjallStore {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

fn fjall_key(key: i64) -> [u8; 8] {
    // Order-preserving for signed keys.
    ((key as u64) ^ (1 << 63)).to_be_bytes()
}

fn fjall_open(dir: &Path) -> Result<FjallStore> {
    let db = fjall::Database::builder(dir.join("fjall")).open()?;
    let ks = db.keyspace("table", fjall::KeyspaceCreateOptions::default)?;
    Ok(FjallStore { db, ks })
}

impl Store for FjallStore {
    fn open(dir: &Path) -> Result<Self> {
        fjall_open(dir)
    }

    fn commit(&mut self, rows: &[(i64, std::ops::Range<usize>)], data: &[u8], sync: bool) -> Result<()> {
        let mut batch = self
            .db
            .batch()
            .durability(sync.then_some(fjall::PersistMode::SyncAll));
        for (key, range) in rows {
            batch.insert(&self.ks, fjall_key(*key), &data[range.clone()]);
        }
        batch.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    fn compact(self, _: &Path, _: &HashMap<i64, Vec<u8>>) -> Result<()> {
        // Flush the memtable into a table file, then merge all tables.
        // `major_compact` is public but `#[doc(hidden)]` in fjall 3.1.
        self.ks.rotate_memtable_and_wait()?;
        self.ks.major_compact()?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    fn restore(dir: &Path) -> Result<HashMap<i64, Vec<u8>>> {
        let s = fjall_open(dir)?;
        let mut map = HashMap::new();
        for guard in s.ks.iter() {
            let (k, v) = guard.into_inner()?;
            let key = (u64::from_be_bytes(k.as_ref().try_into()?) ^ (1 << 63)) as i64;
            map.insert(key, v.to_vec());
        }
        Ok(map)
    }
}

// ---------------------------------------------------------------------------------
// Child-side experiments. Each prints one `RESULT k=v ...` line.

fn peak_rss_mib() -> f64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Bytes allocated on disk (like `du`): fjall's journal is a sparse preallocated file
/// whose length says little.
fn dir_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Generates one W1 commit: `BATCH` upserts encoded back to back into `data`.
fn gen_commit(g: &mut Gen, rows: &mut Vec<(i64, std::ops::Range<usize>)>, data: &mut Vec<u8>) {
    rows.clear();
    data.clear();
    for _ in 0..BATCH {
        let key = g.upsert_key();
        let start = data.len();
        g.encode_row(key, data);
        rows.push((key, start..data.len()));
    }
}

/// The table after `commits` W1 commits, as the service holds it in memory.
fn w1_table(commits: usize) -> HashMap<i64, Vec<u8>> {
    let mut g = Gen::new(1);
    let (mut rows, mut data) = (Vec::new(), Vec::new());
    let mut table = HashMap::new();
    for _ in 0..commits {
        gen_commit(&mut g, &mut rows, &mut data);
        for (key, range) in &rows {
            table.insert(*key, data[range.clone()].to_vec());
        }
    }
    table
}

fn encode_only(commits: usize) {
    let mut g = Gen::new(1);
    let (mut rows, mut data) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut total = 0usize;
    for _ in 0..commits {
        gen_commit(&mut g, &mut rows, &mut data);
        total += black_box(&data).len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "RESULT secs={secs} row_bytes={} rss={}",
        total as f64 / (commits * BATCH) as f64,
        peak_rss_mib()
    );
}

fn commits<S: Store>(dir: &Path, commits: usize, sync: bool) -> Result<()> {
    let mut store = S::open(dir)?;
    let mut g = Gen::new(1);
    let (mut rows, mut data) = (Vec::new(), Vec::new());
    let mut lat = Vec::with_capacity(commits);
    let start = Instant::now();
    for _ in 0..commits {
        let t = Instant::now();
        gen_commit(&mut g, &mut rows, &mut data);
        store.commit(&rows, &data, sync)?;
        lat.push(t.elapsed());
    }
    if !sync {
        store.sync()?;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let bytes = dir_bytes(dir);
    let rss = peak_rss_mib();
    // The service holds this table in memory; building it here is not compaction's cost.
    let table = w1_table(commits);
    let t = Instant::now();
    store.compact(dir, &table)?;
    let compact_secs = t.elapsed().as_secs_f64();
    let bytes_compacted = dir_bytes(dir);
    let rows_after = S::restore(dir)?.len();
    if S::restore(dir)? != table {
        return Err("restored table differs from the written one".into());
    }
    println!(
        "RESULT secs={secs} p50_ms={} p99_ms={} bytes={bytes} compact_secs={compact_secs} \
         bytes_compacted={bytes_compacted} rows={rows_after} rss={rss}",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Writes `n` distinct rows in commits of `BATCH` (no sync per commit, one at the end),
/// optionally compacted afterwards.
fn restore_prepare<S: Store>(dir: &Path, n: u64, compact: bool) -> Result<()> {
    let mut store = S::open(dir)?;
    let mut g = Gen::new(2);
    let (mut rows, mut data) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < n {
        rows.clear();
        data.clear();
        for _ in 0..BATCH.min((n - i) as usize) {
            let key = restore_key(i, n);
            let start = data.len();
            g.encode_row(key, &mut data);
            rows.push((key, start..data.len()));
            i += 1;
        }
        store.commit(&rows, &data, false)?;
    }
    store.sync()?;
    if compact {
        let mut table = HashMap::new();
        let mut g = Gen::new(2);
        for i in 0..n {
            let key = restore_key(i, n);
            let mut row = Vec::new();
            g.encode_row(key, &mut row);
            table.insert(key, row);
        }
        store.compact(dir, &table)?;
    }
    println!("RESULT bytes={}", dir_bytes(dir));
    Ok(())
}

fn restore<S: Store>(dir: &Path) -> Result<()> {
    let start = Instant::now();
    let map = S::restore(dir)?;
    let secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_mib();
    println!("RESULT secs={secs} rows={} rss={rss}", black_box(&map).len());
    Ok(())
}

fn child(args: &[String]) -> Result<()> {
    let [store, exp, dir, n, ..] = args else {
        return Err("usage: child STORE EXPERIMENT DIR N".into());
    };
    let dir = Path::new(dir);
    let n: u64 = n.parse()?;
    macro_rules! dispatch {
        ($S:ty) => {
            match exp.as_str() {
                "commit-sync" => commits::<$S>(dir, n as usize, true),
                "commit-nosync" => commits::<$S>(dir, n as usize, false),
                "prepare" => restore_prepare::<$S>(dir, n, false),
                "prepare-compacted" => restore_prepare::<$S>(dir, n, true),
                "restore" => restore::<$S>(dir),
                other => Err(format!("unknown experiment {other}").into()),
            }
        };
    }
    match store.as_str() {
        "encode" => {
            encode_only(n as usize);
            Ok(())
        }
        "log" => dispatch!(LogStore<false>),
        "log-prealloc" => dispatch!(LogStore<true>),
        "redb" => dispatch!(RedbStore),
        "fjall" => dispatch!(FjallStore),
        other => Err(format!("unknown store {other}").into()),
    }
}

// ---------------------------------------------------------------------------------
// Parent: runs children, aggregates medians and ranges, prints the table.

type Fields = HashMap<String, f64>;

fn run_child(store: &str, exp: &str, dir: &Path, n: u64) -> Result<Fields> {
    let out = Command::new(std::env::current_exe()?)
        .args(["child", store, exp])
        .arg(dir)
        .arg(n.to_string())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child {store} {exp} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or("child printed no RESULT")?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect())
}

struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(runs: &[Fields], f: impl Fn(&Fields) -> f64) -> Stat {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn fmt_stat(s: &Stat, scale: f64, prec: usize) -> String {
    format!(
        "{:.prec$} ({:.prec$}–{:.prec$})",
        s.median * scale,
        s.min * scale,
        s.max * scale
    )
}

fn fresh(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return child(&args[1..]);
    }
    let mut reps = 3usize;
    let mut n_commits = 300u64;
    let mut restore_rows = 1_000_000u64;
    let mut base = std::env::temp_dir().join("store-choice");
    let mut stores = ["log", "log-prealloc", "redb", "fjall"]
        .map(String::from)
        .to_vec();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--reps" => reps = val()?.parse()?,
            "--commits" => n_commits = val()?.parse()?,
            "--restore-rows" => restore_rows = val()?.parse()?,
            "--dir" => base = PathBuf::from(val()?),
            "--stores" => stores = val()?.split(',').map(str::to_string).collect(),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let rows_per_run = (n_commits as usize * BATCH) as f64;
    println!(
        "W1-like commits: {n_commits} commits x {BATCH} upserts over {KEYS} keys; \
         restore: {restore_rows} distinct rows; {reps} runs each, median (min–max); dir {}",
        base.display()
    );

    let expected_rows = {
        let mut g = Gen::new(1);
        let (mut rows, mut data) = (Vec::new(), Vec::new());
        let mut keys = std::collections::HashSet::new();
        for _ in 0..n_commits {
            gen_commit(&mut g, &mut rows, &mut data);
            keys.extend(rows.iter().map(|(k, _)| *k));
        }
        keys.len()
    };
    let enc: Vec<Fields> = (0..reps)
        .map(|_| run_child("encode", "-", &base, n_commits))
        .collect::<Result<_>>()?;
    let enc_secs = stat(&enc, |f| f["secs"]);
    println!(
        "\nbaseline (generate + encode only): {} rows/s, {:.1} bytes/row, peak RSS {:.1} MiB",
        fmt_stat(&stat(&enc, |f| rows_per_run / f["secs"] / 1e6), 1.0, 2) + "M",
        enc[0]["row_bytes"],
        enc[0]["rss"]
    );

    for (exp, title) in [
        ("commit-sync", "commits, durable (fsync) per commit"),
        ("commit-nosync", "commits, no sync per commit (one at the end)"),
    ] {
        println!("\n## {title}");
        println!(
            "| store | commits/s | rows/s (M) | storage/encode time | p50 ms | p99 ms | disk MiB | compaction s | disk after compaction MiB | peak RSS MiB |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for store in &stores {
            let runs: Vec<Fields> = (0..reps)
                .map(|_| run_child(store, exp, &fresh(&base)?, n_commits))
                .collect::<Result<_>>()?;
            for r in &runs {
                if r["rows"] as usize != expected_rows {
                    return Err(format!(
                        "{store}: {} rows after the run, expected {expected_rows}",
                        r["rows"]
                    )
                    .into());
                }
            }
            let mib = 1.0 / (1024.0 * 1024.0);
            println!(
                "| {store} | {} | {} | {:.1}x | {} | {} | {} | {} | {} | {} |",
                fmt_stat(&stat(&runs, |f| n_commits as f64 / f["secs"]), 1.0, 0),
                fmt_stat(&stat(&runs, |f| rows_per_run / f["secs"]), 1e-6, 2),
                stat(&runs, |f| f["secs"]).median / enc_secs.median,
                fmt_stat(&stat(&runs, |f| f["p50_ms"]), 1.0, 2),
                fmt_stat(&stat(&runs, |f| f["p99_ms"]), 1.0, 2),
                fmt_stat(&stat(&runs, |f| f["bytes"]), mib, 1),
                fmt_stat(&stat(&runs, |f| f["compact_secs"]), 1.0, 2),
                fmt_stat(&stat(&runs, |f| f["bytes_compacted"]), mib, 1),
                fmt_stat(&stat(&runs, |f| f["rss"]), 1.0, 1),
            );
        }
    }

    println!("\n## restore {restore_rows} distinct rows into HashMap<i64, Vec<u8>> (warm page cache)");
    println!("| store | state on disk | restore s | rows/s (M) | disk MiB | peak RSS MiB |");
    println!("|---|---|---:|---:|---:|---:|");
    for store in &stores {
        for (prep, label) in [
            (
                "prepare",
                if store.starts_with("log") {
                    "log only (replay)"
                } else {
                    "as written"
                },
            ),
            (
                "prepare-compacted",
                if store.starts_with("log") {
                    "snapshot"
                } else {
                    "after compaction"
                },
            ),
        ] {
            let mut runs = Vec::new();
            for _ in 0..reps {
                let dir = fresh(&base)?;
                let p = run_child(store, prep, &dir, restore_rows)?;
                let mut r = run_child(store, "restore", &dir, 0)?;
                if r["rows"] as u64 != restore_rows {
                    return Err(format!("{store}: restored {} rows", r["rows"]).into());
                }
                r.insert("bytes".into(), p["bytes"]);
                runs.push(r);
            }
            println!(
                "| {store} | {label} | {} | {} | {} | {} |",
                fmt_stat(&stat(&runs, |f| f["secs"]), 1.0, 3),
                fmt_stat(&stat(&runs, |f| restore_rows as f64 / f["secs"]), 1e-6, 2),
                fmt_stat(&stat(&runs, |f| f["bytes"]), 1.0 / (1024.0 * 1024.0), 1),
                fmt_stat(&stat(&runs, |f| f["rss"]), 1.0, 1),
            );
        }
    }
    let _ = fs::remove_dir_all(&base);
    Ok(())
}
