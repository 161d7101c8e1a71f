//! Parsers cannot panic. Every parser of a file or string kiln reads from a user is fed
//! structure-aware mutations of valid inputs (truncations, flipped bytes, huge numbers spliced into
//! length fields, removed/duplicated/retyped JSON keys, deep nesting, TOML values of every wrong
//! kind) and random bytes, from a seeded `Rng`. Each call must return Ok or an error whose message
//! is one line, without panicking, within `SLOW_CASE` (a watchdog aborts a hang), and without any
//! single allocation over `64 × input + 1 MiB` (a counting global allocator checks it).
//!
//! `KILN_FUZZ_CASES` sets the cases per parser (default `DEFAULT_CASES`, which keeps this file
//! under a minute in a debug build on 2 cores) and `KILN_FUZZ_SEED` the seed; docs/TESTING.md
//! gives the longer run. A failing input is saved under `target/parser-fuzz/` and named in the
//! failure, with how to replay it. Run with `--nocapture` to see the case counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln::config::Config;
use kiln::data::augment::template_chain;
use kiln::data::finetune::pack_examples;
use kiln::data::records::{parse_record, AugmentedRecord, FinetuneRecord, Pair};
use kiln::data::shard::{write_llmc_shard, Shard, ShardWriter};
use kiln::data::synth_format::{pairs_block, parse_generation};
use kiln::data::tokenizer::{train_byte_level_bpe, Tokenizer};
use kiln::rng::{derive_seed, Rng};
use kiln::safetensors_io::{write_safetensors, write_safetensors_as, NamedTensor};
use serde_json::{json, Value};

const DEFAULT_CASES: usize = 1000;
/// A case slower than this is a failure; one slower than `HANG` aborts the run.
const SLOW_CASE: Duration = Duration::from_secs(5);
const HANG: Duration = Duration::from_secs(60);
/// Any single allocation a parser makes must stay under `ALLOC_FACTOR × input + ALLOC_SLACK`.
const ALLOC_FACTOR: usize = 64;
const ALLOC_SLACK: usize = 1 << 20;
/// Over-cap allocations larger than this are refused (the process aborts, input saved).
const ALLOC_REFUSE: usize = 1 << 30;

// ---------------------------------------------------------------------------------------------
// The allocation cap: per thread, set around each parser call.

struct CappedAlloc;

thread_local! {
    static CAP: Cell<usize> = const { Cell::new(0) };
    static OVER: Cell<usize> = const { Cell::new(0) };
    static PARSER: Cell<&'static str> = const { Cell::new("") };
}

/// Whether an allocation of `size` may proceed; records one over the cap.
fn allowed(size: usize) -> bool {
    CAP.try_with(|cap| {
        let c = cap.get();
        if c == 0 || size <= c {
            return true;
        }
        OVER.with(|o| o.set(o.get().max(size)));
        if size <= ALLOC_REFUSE {
            return true;
        }
        cap.set(0);
        let name = PARSER.with(Cell::get);
        let mut err = std::io::stderr();
        let _ = err.write_all(b"\nparsers: ");
        let _ = err.write_all(name.as_bytes());
        let _ = err.write_all(b" asked for a single allocation of ");
        let _ = err.write_all(decimal(size, &mut [0; 20]));
        let _ = err.write_all(b" bytes; refused. The input is target/parser-fuzz/");
        let _ = err.write_all(name.as_bytes());
        let _ = err.write_all(b".input\n");
        false
    })
    .unwrap_or(true)
}

/// `n` in decimal without allocating.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

// SAFETY: every call forwards to `System` with the caller's layout; refusing returns null, which
// `GlobalAlloc` allows.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !allowed(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

// ---------------------------------------------------------------------------------------------
// The watchdog: a case running past `HANG` aborts the process, naming the parser and its input.

fn watch() -> &'static Mutex<HashMap<&'static str, Instant>> {
    static RUNNING: OnceLock<Mutex<HashMap<&'static str, Instant>>> = OnceLock::new();
    RUNNING.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(500));
            let running = watch().lock().unwrap_or_else(|e| e.into_inner());
            if let Some((name, _)) = running.iter().find(|(_, t)| t.elapsed() > HANG) {
                eprintln!(
                    "\nparsers: {name} has run for over {HANG:?} on one input (a hang); the input is {}",
                    work_dir().join(format!("{name}.input")).display()
                );
                std::process::abort();
            }
        });
        Mutex::new(HashMap::new())
    })
}

fn work_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/parser-fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// The driver.

fn cases() -> usize {
    std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn base_seed() -> u64 {
    std::env::var("KILN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6b69_6c6e)
}

/// A parser called on (the input's file, its bytes): Ok, or the error as the user would see it.
type Parse<'a> = dyn FnMut(&Path, &[u8]) -> Result<(), String> + 'a;

/// One parser under test: its input goes to `input` (a file the parser reads, or just the saved
/// copy), then `run` parses it.
struct Fuzz {
    name: &'static str,
    input: PathBuf,
    rng: Rng,
    cases: usize,
    ok: usize,
    errors: usize,
    slowest: Duration,
    failures: Vec<String>,
    started: Instant,
}

impl Fuzz {
    fn new(name: &'static str) -> Fuzz {
        Fuzz::with_input(name, work_dir().join(format!("{name}.input")))
    }

    fn with_input(name: &'static str, input: PathBuf) -> Fuzz {
        let seed = derive_seed(
            base_seed(),
            name.bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
        );
        Fuzz {
            name,
            input,
            rng: Rng::new(seed),
            cases: 0,
            ok: 0,
            errors: 0,
            slowest: Duration::ZERO,
            failures: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Parse one input; record a panic, a multi-line error, a slow case or an over-cap allocation.
    fn case(&mut self, bytes: &[u8], run: &mut Parse<'_>) {
        std::fs::write(&self.input, bytes).unwrap();
        let cap = ALLOC_FACTOR * bytes.len() + ALLOC_SLACK;
        watch().lock().unwrap().insert(self.name, Instant::now());
        PARSER.with(|p| p.set(self.name));
        OVER.with(|o| o.set(0));
        CAP.with(|c| c.set(cap));
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run(&self.input, bytes)));
        let took = t.elapsed();
        CAP.with(|c| c.set(0));
        let over = OVER.with(Cell::get);
        watch().lock().unwrap().remove(self.name);
        self.cases += 1;
        self.slowest = self.slowest.max(took);
        let problem = match result {
            Err(panic) => Some(format!("panicked: {}", panic_message(&panic))),
            Ok(Err(e)) if e.contains('\n') => Some(format!("error of several lines: {e:?}")),
            _ if took > SLOW_CASE => Some(format!("took {took:?}")),
            _ if over > 0 => Some(format!(
                "allocated {over} bytes at once for a {}-byte input (cap {cap})",
                bytes.len()
            )),
            Ok(Ok(())) => {
                self.ok += 1;
                None
            }
            Ok(Err(_)) => {
                self.errors += 1;
                None
            }
        };
        if let Some(p) = problem {
            let saved = work_dir().join(format!("{}-{}.input", self.name, self.failures.len()));
            std::fs::write(&saved, bytes).unwrap();
            self.failures
                .push(format!("{p} (input: {})", saved.display()));
        }
    }

    /// Print the counts; fail listing every problem found.
    fn finish(self) {
        println!(
            "parsers: {:<18} {:>6} cases ({} Ok, {} errors) in {:.1} s, slowest {:.0} ms, seed {}",
            self.name,
            self.cases,
            self.ok,
            self.errors,
            self.started.elapsed().as_secs_f64(),
            self.slowest.as_secs_f64() * 1e3,
            base_seed()
        );
        assert!(
            self.failures.is_empty(),
            "{}: {} failing inputs (replay one by copying it over {}):\n{}",
            self.name,
            self.failures.len(),
            self.input.display(),
            self.failures.join("\n")
        );
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn one_line(e: anyhow::Error) -> String {
    format!("{e:#}")
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// Numbers that break length fields: zero, one, the edges of every width, 2^60, 1e18.
const INTERESTING: &[u64] = &[
    0,
    1,
    7,
    8,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 60,
    1_000_000_000_000_000_000,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 7,
    u64::MAX,
];

fn interesting(rng: &mut Rng) -> u64 {
    if rng.chance(0.8) {
        *rng.choose(INTERESTING)
    } else {
        rng.next_u64() >> rng.below(64)
    }
}

fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.index(max + 1);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// One byte-level mutation: truncate, flip bits, overwrite, insert, delete, duplicate a chunk, or
/// splice an interesting integer (1, 2, 4 or 8 bytes, little-endian) at `fields` or anywhere.
fn mutate_bytes(rng: &mut Rng, input: &mut Vec<u8>, fields: &[usize]) {
    let len = input.len();
    match rng.below(8) {
        0 => input.truncate(rng.index(len + 1)),
        1 => {
            for _ in 0..=rng.below(8) {
                if len > 0 {
                    let i = rng.index(len);
                    input[i] ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            for _ in 0..=rng.below(4) {
                if len > 0 {
                    let i = rng.index(len);
                    input[i] = rng.next_u64() as u8;
                }
            }
        }
        3 => {
            let at = rng.index(len + 1);
            let extra = random_bytes(rng, 16);
            input.splice(at..at, extra);
        }
        4 if len > 0 => {
            let at = rng.index(len);
            let n = rng.index(len - at) + 1;
            input.drain(at..at + n.min(64));
        }
        5 if len > 0 => {
            let at = rng.index(len);
            let n = (rng.index(len - at) + 1).min(256);
            let chunk = input[at..at + n].to_vec();
            let to = rng.index(input.len() + 1);
            input.splice(to..to, chunk);
        }
        _ => {
            let width = *rng.choose(&[1usize, 2, 4, 8]);
            let at = if !fields.is_empty() && rng.chance(0.7) {
                *rng.choose(fields)
            } else {
                rng.index(len + 1)
            };
            let v = interesting(rng).to_le_bytes();
            for (k, b) in v[..width].iter().enumerate() {
                if at + k < input.len() {
                    input[at + k] = *b;
                }
            }
        }
    }
}

/// Wrong values for a JSON slot: every type, numbers past u64 and i64, fractions, huge strings.
fn wrong_json(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(interesting(rng)),
        4 => json!(1e300),
        5 => json!(-0.5),
        6 => serde_json::from_str("18446744073709551616").unwrap(),
        7 => json!(""),
        8 => json!("x".repeat(rng.index(3000))),
        9 => json!([]),
        10 => json!({}),
        _ => json!([interesting(rng), interesting(rng)]),
    }
}

/// Paths to every node of a JSON value (object keys and array indices).
fn json_paths(v: &Value, at: &mut Vec<Vec<Value>>, path: Vec<Value>) {
    at.push(path.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m.iter().take(64) {
                let mut p = path.clone();
                p.push(json!(k));
                json_paths(c, at, p);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate().take(64) {
                let mut p = path.clone();
                p.push(json!(i));
                json_paths(c, at, p);
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match k {
        Value::String(k) => &mut v[k.as_str()],
        k => &mut v[k.as_u64().unwrap() as usize],
    })
}

/// A structure-aware JSON mutation: a node removed, retyped, duplicated, emptied or deeply nested,
/// or (as text) a key duplicated, NaN written, or the text cut.
fn mutate_json(rng: &mut Rng, text: &str) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_str::<Value>(text) else {
        let mut b = text.as_bytes().to_vec();
        mutate_bytes(rng, &mut b, &[]);
        return b;
    };
    let mut paths = Vec::new();
    json_paths(&v, &mut paths, Vec::new());
    let path = rng.choose(&paths).clone();
    match rng.below(9) {
        0 | 1 if !path.is_empty() => {
            let (last, parent) = path.split_last().unwrap();
            match (node_mut(&mut v, parent), last) {
                (Value::Object(m), Value::String(k)) => {
                    m.remove(k);
                }
                (Value::Array(a), i) => {
                    a.remove(i.as_u64().unwrap() as usize);
                }
                _ => {}
            }
        }
        2..=4 => *node_mut(&mut v, &path) = wrong_json(rng),
        5 => {
            let node = node_mut(&mut v, &path);
            if let Value::Array(a) = node {
                if let Some(x) = a.first().cloned() {
                    let n = rng.index(200);
                    a.extend(std::iter::repeat_n(x, n));
                }
            } else {
                *node = json!([node.clone(), node.clone()]);
            }
        }
        6 => {
            let depth = *rng.choose(&[10usize, 100, 200, 5000]);
            let inner = node_mut(&mut v, &path).to_string();
            let text = v.to_string();
            // Replace the node's text by itself nested `depth` arrays deep.
            let nested = format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth));
            return text.replacen(&inner, &nested, 1).into_bytes();
        }
        7 => {
            // A duplicated key: the first key of the object at `path`, written twice.
            let text = v.to_string();
            if let Some((k, c)) = node_mut(&mut v, &path)
                .as_object()
                .and_then(|m| m.iter().next())
            {
                let dup = format!("{}:{},", json!(k), wrong_json(rng));
                let one: serde_json::Map<String, Value> =
                    [(k.clone(), c.clone())].into_iter().collect();
                let obj = Value::Object(one).to_string();
                let at = text.find(&obj[..obj.len() - 1]).map_or(1, |at| at + 1);
                let mut t = text;
                if at <= t.len() {
                    t.insert_str(at, &dup);
                }
                return t.into_bytes();
            }
            return text.into_bytes();
        }
        _ => {
            let text = v.to_string();
            let mut b = text.into_bytes();
            if rng.chance(0.5) {
                let at = rng.index(b.len() + 1);
                b.splice(at..at, b"NaN".iter().copied());
            } else {
                mutate_bytes(rng, &mut b, &[]);
            }
            return b;
        }
    }
    v.to_string().into_bytes()
}

/// Mutated inputs then random bytes: `cases` calls in all. The first quarter of the mutated cases
/// truncates the seeds at every offset (evenly spread when the seeds are long).
fn drive(
    f: &mut Fuzz,
    seeds: &[Vec<u8>],
    mutate: &mut dyn FnMut(&mut Rng, &[u8]) -> Vec<u8>,
    random_prefix: &[&[u8]],
    run: &mut Parse<'_>,
) {
    let total = cases();
    for seed in seeds {
        f.case(seed, run);
    }
    let truncations = total / 4;
    let all: usize = seeds.iter().map(Vec::len).sum::<usize>().max(1);
    for seed in seeds {
        let n = (truncations * seed.len() / all).max(1);
        for k in 0..n {
            let at = seed.len() * k / n;
            f.case(&seed[..at], run);
        }
    }
    let mutated = total * 3 / 4 - truncations;
    for _ in 0..mutated {
        let seed = f.rng.choose(seeds).clone();
        let mut input = mutate(&mut f.rng, &seed);
        // Sometimes stack a second mutation.
        if f.rng.chance(0.3) {
            input = mutate(&mut f.rng, &input);
        }
        f.case(&input, run);
    }
    while f.cases < total + seeds.len() {
        let mut input = Vec::new();
        if !random_prefix.is_empty() && f.rng.chance(0.5) {
            let prefix = *f.rng.choose(random_prefix);
            input.extend_from_slice(prefix);
        }
        let max = *f.rng.choose(&[16usize, 256, 4096]);
        input.extend(random_bytes(&mut f.rng, max));
        f.case(&input, run);
    }
}

// ---------------------------------------------------------------------------------------------
// Token shards.

fn kiln_shard_seeds(dir: &Path, name: &str) -> Vec<Vec<u8>> {
    let docs: [&[u32]; 4] = [&[1, 2, 3], &[], &[4, 5, 6, 7, 8], &[9]];
    let mut out = Vec::new();
    for (vocab, mask) in [(100u64, true), (70_000, false)] {
        let path = dir.join(format!("{name}.seed.kiln"));
        let mut w = ShardWriter::create(&path, vocab, 42, mask).unwrap();
        for d in docs {
            let m: Vec<bool> = d.iter().map(|t| t % 2 == 0).collect();
            w.push_document(d, mask.then_some(&m[..])).unwrap();
        }
        w.finish().unwrap();
        out.push(std::fs::read(&path).unwrap());
    }
    out
}

/// Open a shard and read every document's tokens and mask bits back.
fn read_whole_shard(path: &Path, vocab: u64, delimiter: Option<u32>) -> Result<(), String> {
    let shard = Shard::open(path, vocab, delimiter).map_err(|e| e.to_string())?;
    let (mut tokens, mut mask) = (Vec::new(), Vec::new());
    for i in 0..shard.num_documents() {
        shard.extend_tokens(shard.document(i), &mut tokens);
        shard.extend_loss_mask(shard.document(i), &mut mask);
    }
    assert_eq!(tokens.len() as u64, shard.num_tokens());
    assert_eq!(mask.len(), tokens.len());
    Ok(())
}

#[test]
fn kiln_shards_open_or_fail_with_one_line() {
    let mut f = Fuzz::new("shard_kiln");
    let seeds = kiln_shard_seeds(&work_dir(), f.name);
    // Header fields: width, flags, token count, document count, vocabulary, file size; the index.
    let fields = [12, 16, 24, 32, 40, 56, 136, 144, 152, 160];
    drive(
        &mut f,
        &seeds,
        &mut |rng, s| {
            let mut b = s.to_vec();
            mutate_bytes(rng, &mut b, &fields);
            b
        },
        &[b"KILNSHRD", b"KILNSHRD\x01\0\0\0\x02\0\0\0"],
        &mut |path, _| read_whole_shard(path, 70_000, None),
    );
    f.finish();
}

#[test]
fn llmc_shards_open_or_fail_with_one_line() {
    let mut f = Fuzz::new("shard_llmc");
    let eot = 50256;
    let tokens = [eot, 10, 11, eot, 12, eot, 13, 14, 15];
    let seeds: Vec<Vec<u8>> = [2, 4]
        .iter()
        .map(|&w| {
            let path = work_dir().join("shard_llmc.seed.bin");
            write_llmc_shard(&path, &tokens, w).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect();
    let u16_magic = 20240520i32.to_le_bytes();
    let u32_magic = 20240801i32.to_le_bytes();
    drive(
        &mut f,
        &seeds,
        &mut |rng, s| {
            let mut b = s.to_vec();
            mutate_bytes(rng, &mut b, &[0, 4, 8, 1024]);
            b
        },
        &[&u16_magic, &u32_magic],
        &mut |path, _| read_whole_shard(path, 50_257, Some(eot)),
    );
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// Safetensors files and model.safetensors.index.json.

fn safetensors_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let t = |name: &str, shape: &[usize]| NamedTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data: (0..shape.iter().product::<usize>())
            .map(|i| i as f32 * 0.5)
            .collect(),
    };
    let path = dir.join("safetensors.seed.safetensors");
    let tensors = [t("a.weight", &[2, 3]), t("b", &[4]), t("scalar", &[])];
    let mut out = Vec::new();
    write_safetensors(&path, &tensors, None).unwrap();
    out.push(std::fs::read(&path).unwrap());
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors_as(&path, &tensors, Some(meta), true).unwrap();
    out.push(std::fs::read(&path).unwrap());
    out
}

/// Mutate the JSON header (keeping its length prefix right), the length prefix, or the bytes.
fn mutate_safetensors(rng: &mut Rng, s: &[u8]) -> Vec<u8> {
    let header_len = s
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
        .filter(|&n| n <= s.len().saturating_sub(8));
    match header_len {
        Some(n) if rng.chance(0.6) => {
            let header = String::from_utf8_lossy(&s[8..8 + n]).into_owned();
            let new = mutate_json(rng, &header);
            let mut out = (new.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&new);
            out.extend_from_slice(&s[8 + n..]);
            out
        }
        _ => {
            let mut b = s.to_vec();
            mutate_bytes(rng, &mut b, &[0, 4]);
            b
        }
    }
}

#[test]
fn safetensors_files_read_or_fail_with_one_line() {
    let mut f = Fuzz::new("safetensors");
    let seeds = safetensors_seeds(&work_dir());
    drive(
        &mut f,
        &seeds,
        &mut mutate_safetensors,
        &[&[40, 0, 0, 0, 0, 0, 0, 0, b'{']],
        &mut |path, _| {
            kiln::safetensors_io::read_safetensors(path)
                .map(drop)
                .map_err(one_line)
        },
    );
    f.finish();
}

#[test]
fn safetensors_index_files_resolve_or_fail_with_one_line() {
    let dir = work_dir().join("hf_index");
    std::fs::create_dir_all(&dir).unwrap();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        std::fs::write(dir.join(shard), b"").unwrap();
    }
    let mut f = Fuzz::with_input("hf_index", dir.join("model.safetensors.index.json"));
    let seed = json!({
        "metadata": {"total_size": 1024},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        }
    });
    let seeds = vec![serde_json::to_vec_pretty(&seed).unwrap()];
    drive(
        &mut f,
        &seeds,
        &mut |rng, s| mutate_json(rng, &String::from_utf8_lossy(s)),
        &[b"{\"weight_map\":"],
        &mut |_, _| {
            let files = kiln::hf::weight_files(&dir).map_err(one_line)?;
            for file in files {
                assert!(
                    file.parent() == Some(dir.as_path()),
                    "{} is outside the model directory",
                    file.display()
                );
            }
            Ok(())
        },
    );
    f.finish();
}

#[test]
fn hugging_face_configs_load_or_fail_with_one_line() {
    let dir = work_dir().join("hf_config");
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = Fuzz::with_input("hf_config", dir.join("config.json"));
    let llama = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "attention_bias": false, "mlp_bias": false, "attention_dropout": 0.0,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
        "bos_token_id": 128000, "eos_token_id": 128001, "pretraining_tp": 1,
    });
    let mistral = json!({
        "architectures": ["MistralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "sliding_window": 4096, "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "dtype": "bfloat16",
    });
    let seeds = vec![
        serde_json::to_vec_pretty(&llama).unwrap(),
        serde_json::to_vec_pretty(&mistral).unwrap(),
    ];
    drive(
        &mut f,
        &seeds,
        &mut |rng, s| mutate_json(rng, &String::from_utf8_lossy(s)),
        &[b"{\"vocab_size\":"],
        &mut |_, _| {
            let mut cfg = kiln::hf::model_config(&dir).map_err(one_line)?;
            let vocab = cfg.vocab_size;
            cfg.resolve(vocab).map_err(one_line)?;
            // A shape that resolved has a finite parameter count.
            let _ = cfg.params().len();
            Ok(())
        },
    );
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json.

fn trained_tokenizer_json(dir: &Path) -> String {
    let text = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen jugs. "
        .repeat(20);
    let path = dir.join("trained-tokenizer.json");
    train_byte_level_bpe(
        [text.as_str(), "1234 5678 <s> hello </s>"].into_iter(),
        300,
        &path,
    )
    .unwrap();
    std::fs::read_to_string(&path).unwrap()
}

#[test]
fn tokenizer_json_loads_or_fails_with_one_line() {
    let mut f = Fuzz::new("tokenizer_json");
    let trained = trained_tokenizer_json(&work_dir());
    // A Llama-3-style variant: a Split stage before ByteLevel, and normalized added tokens.
    let mut split: Value = serde_json::from_str(&trained).unwrap();
    split["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\d{1,3}"}, "behavior": "Isolated", "invert": false},
        split["pre_tokenizer"].clone(),
    ]});
    split["added_tokens"][0]["normalized"] = json!(true);
    let seeds = vec![trained.into_bytes(), split.to_string().into_bytes()];
    // Fewer cases: each load builds a tokenizer (~10 ms).
    drive(
        &mut f,
        &seeds,
        &mut |rng, s| mutate_json(rng, &String::from_utf8_lossy(s)),
        &[b"{\"model\":"],
        &mut |path, _| {
            let tok = Tokenizer::from_file(path, None, None).map_err(one_line)?;
            let ids = tok
                .encode("The quick <s> fox, 1234 jugs ünï\n")
                .map_err(one_line)?;
            tok.decode(&ids, false).map_err(one_line)?;
            Ok(())
        },
    );
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// The synthesizer's output and its files.

/// Text built from the synthesizer format's markers, whitespace, multibyte characters and words.
fn synth_text(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "<QUE>",
        "<ANS>",
        "</END>",
        "<s>",
        "</s>",
        "<CON>",
        "</CON>",
        " ",
        "\n\n",
        "\n",
        "Who?",
        "Ada",
        "é",
        "✓",
        "\u{2019}",
        "\nOptions:\n- ",
        "\n- ",
        "\nOptions:\n-",
        "Let's think step by step.",
        "Let\u{2019}s think step by step.",
        "\nTherefore, the answer is",
        "Therefore, the answer is",
        ": ",
        ".",
        "Not answerable",
        "",
    ];
    let n = rng.index(40);
    (0..n).map(|_| *rng.choose(PIECES)).collect()
}

#[test]
fn synthesizer_generations_parse_without_panicking() {
    let mut f = Fuzz::new("synth_generation");
    let pairs = [
        Pair {
            q: "Who?".into(),
            a: "Ada.".into(),
        },
        Pair {
            q: "When?\nOptions:\n- 1815\n- 1900".into(),
            a: "1815".into(),
        },
    ];
    let seeds = vec![
        pairs_block(&pairs).into_bytes(),
        format!("{} <QUE> cut <ANS> off", pairs_block(&pairs)).into_bytes(),
    ];
    drive(
        &mut f,
        &seeds,
        &mut |rng, s| {
            let mut b = s.to_vec();
            if rng.chance(0.5) {
                let at = rng.index(b.len() + 1);
                b.splice(at..at, synth_text(rng).into_bytes());
            } else {
                mutate_bytes(rng, &mut b, &[]);
            }
            b
        },
        &[b"<QUE>"],
        &mut |_, bytes| {
            for p in parse_generation(&String::from_utf8_lossy(bytes)) {
                assert!(!p.q.trim().is_empty() && !p.a.trim().is_empty());
            }
            Ok(())
        },
    );
    f.finish();
}

#[test]
fn synthesizer_input_lines_parse_or_fail_with_one_line() {
    let mut f = Fuzz::new("synth_input_line");
    let seeds = vec![
        br#"{"text": "Ada was born in 1815.", "id": 3}"#.to_vec(),
        br#"{"text": ""}"#.to_vec(),
    ];
    drive(
        &mut f,
        &seeds,
        &mut |rng, s| mutate_json(rng, &String::from_utf8_lossy(s)),
        &[b"{\"text\":"],
        &mut |_, bytes| {
            let line = String::from_utf8_lossy(bytes);
            kiln::synth::text_of(&line).map(drop)
        },
    );
    f.finish();
}

#[test]
fn synthesizer_progress_files_resume_or_fail_with_one_line() {
    let dir = work_dir();
    let out = dir.join("synth_progress.out.jsonl");
    std::fs::write(&out, vec![b'x'; 100]).unwrap();
    let mut f = Fuzz::new("synth_progress");
    let settings = json!({"rounds": 2, "max_new_tokens": 64, "input": "in.jsonl"});
    let stats = serde_json::to_value(kiln::synth::SynthStats::default()).unwrap();
    let seed = json!({
        "version": 1, "settings": settings, "chains_done": 3, "bytes": 60, "done": false,
        "stats": stats,
    });
    let seeds = vec![serde_json::to_vec_pretty(&seed).unwrap()];
    drive(
        &mut f,
        &seeds,
        &mut |rng, s| mutate_json(rng, &String::from_utf8_lossy(s)),
        &[b"{\"version\":"],
        &mut |path, bytes| {
            kiln::synth::resume_point(path, &String::from_utf8_lossy(bytes), &settings, &out)
                .map(drop)
                .map_err(one_line)
        },
    );
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// Augmented and fine-tuning JSONL records, parsed and then used as `kiln prep` uses them.

fn record_seeds() -> Vec<Vec<u8>> {
    let lines = [
        json!({"text": "Ada was born in 1815.", "pairs": [
            {"q": "Who was born in 1815?", "a": "Ada."},
            {"q": "When?\nOptions:\n- 1815\n- 1900", "a": "1815"},
        ], "chain": 0}),
        json!({"text": "The fox jumps.", "pairs": [
            {"q": "Why does it jump? Let's think step by step.",
             "a": "It is quick.\nTherefore, the answer is speed"},
            {"q": "Which?\nOptions:\n- a\n- b\nLet's think step by step.",
             "a": "Because.\nTherefore, the answer is b"},
        ], "chain": 0}),
        json!({"text": "No pairs here.", "pairs": [], "source": "s1"}),
        json!({"text": "Plain.", "pairs": [{"q": "Q?", "a": "Not answerable."}], "source": "s1"}),
    ];
    let jsonl: String = lines.iter().map(|l| format!("{l}\n")).collect();
    // Fine-tuning records may name the text `context`, as the authors' collection does.
    let context = jsonl.replace("\"text\"", "\"context\"");
    vec![jsonl.into_bytes(), context.into_bytes()]
}

/// Mutate one line of a JSONL file: its JSON, or a pair's strings replaced by synthesizer text.
fn mutate_jsonl(rng: &mut Rng, s: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(s);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    if lines.is_empty() {
        return synth_text(rng).into_bytes();
    }
    let i = rng.index(lines.len());
    match rng.below(4) {
        0 | 1 => lines[i] = String::from_utf8_lossy(&mutate_json(rng, &lines[i])).into_owned(),
        2 => {
            if let Ok(mut v @ Value::Object(_)) = serde_json::from_str::<Value>(&lines[i]) {
                let n = rng.index(40);
                let options: String = (0..n).map(|k| format!("\n- o{k}")).collect();
                let pairs: Vec<Value> = (0..rng.index(4))
                    .map(|_| {
                        let q =
                            format!("{}\nOptions:{options}{}", synth_text(rng), synth_text(rng));
                        json!({"q": q, "a": synth_text(rng)})
                    })
                    .collect();
                v["pairs"] = json!(pairs);
                lines[i] = v.to_string();
            }
        }
        _ => {
            let line = lines[i].clone();
            lines.insert(rng.index(lines.len() + 1), line);
        }
    }
    lines.join("\n").into_bytes()
}

fn parse_lines<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> (Vec<T>, Result<(), String>) {
    let text = String::from_utf8_lossy(bytes);
    let mut records = Vec::new();
    let mut first_error = Ok(());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_record::<T>(line) {
            Ok(r) => records.push(r),
            Err(e) => {
                if first_error.is_ok() {
                    first_error = Err(e);
                }
            }
        }
    }
    (records, first_error)
}

#[test]
fn augmented_records_parse_and_template_or_fail_with_one_line() {
    let mut f = Fuzz::new("augmented_records");
    drive(
        &mut f,
        &record_seeds()[..1],
        &mut mutate_jsonl,
        &[b"{\"text\":"],
        &mut |_, bytes| {
            let (records, result) = parse_lines::<AugmentedRecord>(bytes);
            let entries: Vec<(&str, &[Pair])> = records
                .iter()
                .map(|r| (r.text.as_str(), r.pairs.as_slice()))
                .collect();
            for seed in 0..4 {
                template_chain(&entries, seed);
            }
            result
        },
    );
    f.finish();
}

#[test]
fn finetune_records_parse_and_pack_or_fail_with_one_line() {
    let dir = work_dir().join("finetune");
    std::fs::create_dir_all(&dir).unwrap();
    let tok_path = dir.join("tokenizer.json");
    std::fs::write(&tok_path, trained_tokenizer_json(&dir)).unwrap();
    let tok = Tokenizer::from_file(&tok_path, None, None).unwrap();
    let mut f = Fuzz::new("finetune_records");
    drive(
        &mut f,
        &record_seeds(),
        &mut mutate_jsonl,
        &[b"{\"context\":"],
        &mut |_, bytes| {
            let (records, result) = parse_lines::<FinetuneRecord>(bytes);
            let examples = records
                .iter()
                .map(|r| (r.text.as_str(), r.pairs.as_slice()));
            pack_examples(&tok, examples, 64).map_err(one_line)?;
            result
        },
    );
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// TOML configs, `--set` overrides and `[model] preset`.

/// Lines `#kiln-fuzz-set: KEY=VALUE` of a fuzzed config are its `--set` overrides (a comment to
/// TOML, so the saved input replays the whole case).
const SET_PREFIX: &str = "#kiln-fuzz-set: ";

const TOML_VALUES: &[&str] = &[
    "-1",
    "0",
    "1",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e400",
    "nan",
    "inf",
    "-inf",
    "-0.0",
    "1.5",
    "\"\"",
    "\"x\"",
    "true",
    "[]",
    "{}",
    "[1, \"a\"]",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
    "\"llama3-8b\"",
    "\"tiny\"",
    "\"mistral-7b\"",
    "\"{world}/x\"",
    "'''\nmulti\n'''",
];

const TOML_KEYS: &[&str] = &[
    "data.seq_len",
    "data.batch_size",
    "data.val_fraction",
    "data.sources",
    "data.tokenizer",
    "data",
    "train.lr",
    "train.steps",
    "train.bucket_mb",
    "train.zero_stage",
    "train.schedule",
    "train.attention",
    "model",
    "model.preset",
    "model.dim",
    "model.n_heads",
    "model.rope_scaling",
    "world.dir",
    "world.people",
    "eval.tasks",
    "train.lr.x",
    "a..b",
    "",
    " . ",
];

fn toml_value(rng: &mut Rng) -> String {
    if rng.chance(0.1) {
        let depth = *rng.choose(&[50usize, 200, 5000]);
        return format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    }
    rng.choose(TOML_VALUES).to_string()
}

/// A line-level TOML mutation: a value replaced, a line deleted, duplicated or moved, a section
/// or key added, an override added, or the bytes changed.
fn mutate_toml(rng: &mut Rng, s: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(s);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len();
    let i = rng.index(n.max(1));
    match rng.below(9) {
        0..=2 if n > 0 => {
            if let Some((k, _)) = lines[i].split_once('=') {
                lines[i] = format!("{k}= {}", toml_value(rng));
            }
        }
        3 if n > 0 => {
            lines.remove(i);
        }
        4 if n > 0 => {
            let line = lines[i].clone();
            lines.insert(rng.index(n + 1), line);
        }
        5 => {
            let key = rng.choose(TOML_KEYS).rsplit('.').next().unwrap_or("");
            let line = format!("{key} = {}", toml_value(rng));
            lines.insert(rng.index(n + 1), line);
        }
        6 => {
            let section = rng.choose(&[
                "[model]",
                "[train]",
                "[[data.sources]]",
                "[world]",
                "[eval]",
                "[x.y]",
            ]);
            lines.insert(rng.index(n + 1), section.to_string());
        }
        7 => {
            let key = rng.choose(TOML_KEYS);
            let eq = if rng.chance(0.9) { "=" } else { "" };
            lines.push(format!(
                "{SET_PREFIX}{key}{eq}{}",
                toml_value(rng).replace('\n', " ")
            ));
        }
        _ => {
            let mut b = lines.join("\n").into_bytes();
            mutate_bytes(rng, &mut b, &[]);
            return b;
        }
    }
    lines.join("\n").into_bytes()
}

#[test]
fn toml_configs_load_or_fail_with_one_line() {
    let mut f = Fuzz::new("config_toml");
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&configs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.sort();
    drive(
        &mut f,
        &seeds,
        &mut mutate_toml,
        &[b"[data]\n"],
        &mut |path, bytes| {
            let text = String::from_utf8_lossy(bytes);
            let overrides: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix(SET_PREFIX).map(String::from))
                .collect();
            let r = if std::str::from_utf8(bytes).is_ok() {
                Config::parse(&path.display().to_string(), &text, &overrides)
            } else {
                Config::load(Some(path), &overrides)
            };
            r.map(drop).map_err(one_line)
        },
    );
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// Claimed sizes far beyond the file: refused quickly, before allocating.

#[test]
fn headers_claiming_huge_sizes_are_refused_before_allocating() {
    let mut f = Fuzz::new("huge_claims");
    let seeds = kiln_shard_seeds(&work_dir(), f.name);
    let mut run_shard = |path: &Path, _: &[u8]| read_whole_shard(path, 70_000, None);
    for (field, value) in [
        (24, 1u64 << 60),
        (32, 1 << 60),
        (32, u64::MAX),
        (24, u64::MAX),
        (56, u64::MAX),
    ] {
        let mut b = seeds[0].clone();
        b[field..field + 8].copy_from_slice(&value.to_le_bytes());
        f.case(&b, &mut run_shard);
    }
    let mut llmc = 20240801i32.to_le_bytes().to_vec();
    llmc.resize(1024, 0);
    llmc[8..12].copy_from_slice(&i32::MAX.to_le_bytes());
    f.case(&llmc, &mut |path, _| {
        read_whole_shard(path, 50_257, Some(0))
    });
    for header in [
        r#"{"w":{"dtype":"F32","shape":[1152921504606846976],"data_offsets":[0,4611686018427387904]}}"#,
        r#"{"w":{"dtype":"F32","shape":[250000000000000000],"data_offsets":[0,1000000000000000000]}}"#,
        r#"{"w":{"dtype":"BF16","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#,
    ] {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&[0; 16]);
        f.case(&b, &mut |path, _| {
            let r = kiln::safetensors_io::read_safetensors(path);
            assert!(r.is_err(), "{header}: accepted");
            r.map(drop).map_err(one_line)
        });
    }
    let mut b = (1u64 << 60).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    f.case(&b, &mut |path, _| {
        kiln::safetensors_io::read_safetensors(path)
            .map(drop)
            .map_err(one_line)
    });
    assert_eq!(f.ok, 0, "a huge claim was accepted");
    f.finish();
}

// ---------------------------------------------------------------------------------------------
// Compressed and parquet inputs (`kiln prep`, `kiln synth`).

fn input_records() -> String {
    (0..40)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({ "text": format!("Record {i}."), "meta": { "set": i % 3 } })
            )
        })
        .collect()
}

/// Decode every line of `path` as `format`, on this thread (no read-ahead).
fn decode_input(path: &Path, format: kiln::data::input::Format) -> Result<(), String> {
    use std::io::BufRead;
    let mut r = kiln::data::input::decoder(path, format, None)
        .map_err(one_line)?
        .reader;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("{}: read error: {e}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
    }
}

fn fuzz_input(name: &'static str, seed: Vec<u8>, format: kiln::data::input::Format, magic: &[u8]) {
    let mut f = Fuzz::new(name);
    drive(
        &mut f,
        &[seed],
        &mut |rng, s| {
            let mut b = s.to_vec();
            mutate_bytes(rng, &mut b, &[0, 4, 8]);
            b
        },
        &[magic],
        &mut |path, _| decode_input(path, format),
    );
    f.finish();
}

#[test]
fn gzip_inputs_decode_or_fail_with_one_line() {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(input_records().as_bytes()).unwrap();
    let seed = e.finish().unwrap();
    fuzz_input(
        "gzip input",
        seed,
        kiln::data::input::Format::Gzip,
        &[0x1f, 0x8b, 8],
    );
}

#[test]
fn zstd_inputs_decode_or_fail_with_one_line() {
    let seed = zstd::encode_all(input_records().as_bytes(), 3).unwrap();
    fuzz_input(
        "zstd input",
        seed,
        kiln::data::input::Format::Zstd,
        &[0x28, 0xb5, 0x2f, 0xfd],
    );
}

#[test]
fn parquet_inputs_decode_or_fail_with_one_line() {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = "message m { REQUIRED BYTE_ARRAY text (UTF8); OPTIONAL GROUP meta { OPTIONAL BYTE_ARRAY set (UTF8); } }";
    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = std::sync::Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut buf = Vec::new();
    {
        let mut w = SerializedFileWriter::new(&mut buf, schema, props).unwrap();
        for g in 0..2 {
            let mut rg = w.next_row_group().unwrap();
            let text: Vec<ByteArray> = (0..10)
                .map(|i| ByteArray::from(format!("Record {g}.{i}").as_str()))
                .collect();
            let mut c = rg.next_column().unwrap().unwrap();
            c.typed::<ByteArrayType>()
                .write_batch(&text, None, None)
                .unwrap();
            c.close().unwrap();
            let sets: Vec<ByteArray> = (0..7)
                .map(|i| ByteArray::from(format!("s{i}").as_str()))
                .collect();
            let def: Vec<i16> = (0..10).map(|i| if i < 7 { 2 } else { i % 2 }).collect();
            let mut c = rg.next_column().unwrap().unwrap();
            c.typed::<ByteArrayType>()
                .write_batch(&sets, Some(&def), None)
                .unwrap();
            c.close().unwrap();
            rg.close().unwrap();
        }
        w.close().unwrap();
    }
    fuzz_input(
        "parquet input",
        buf,
        kiln::data::input::Format::Parquet,
        b"PAR1",
    );
}
