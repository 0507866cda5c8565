//! Benchmark of the event log. Prints figures, and ratios against baselines measured in the
//! same run on the same filesystem:
//!
//! 1. one durable append at a time, p50/p99, next to raw write+fdatasync, to the log's commit
//!    alone (what the journal adds on top of it), to a durable redb commit per append (the log
//!    without its write-ahead file), and the checkpoints the write-ahead file needs;
//! 2. group commit with 1, 4 and 16 concurrent writers: durable events/s and p99;
//! 3. rebuilding projections from 1,000,000 events: events/s;
//! 4. opening a log of 1,000,000 events after its writer was killed with SIGKILL: time until
//!    an append is accepted again.
//!
//! Run: `cargo run --release -p banger-tools --bin bench-log -- --dir DIR`
//! (DIR on the filesystem you care about; default: a temporary directory under ./target).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_events::*;
use banger_projections::Projections;
use banger_tools::stats::{Summary, us};
use banger_tools::workload::synthetic_events;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmark banger's event log")]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Directory for the benchmark's files (must be on the filesystem under test).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Events in the large log (sections 3 and 4).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Sequential appends measured in section 1.
    #[arg(long, default_value_t = 2000)]
    appends: usize,
    /// Total appends per configuration in section 2.
    #[arg(long, default_value_t = 16_000)]
    group_appends: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) Fill a log, say "ready", then append until killed.
    Writer {
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        prefill: usize,
        #[arg(long)]
        no_quick_repair: bool,
    },
}

fn main() {
    let args = Args::parse();
    if let Some(Cmd::Writer {
        log,
        prefill,
        no_quick_repair,
    }) = args.command
    {
        writer(&log, prefill, !no_quick_repair);
        return;
    }
    let holder;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).expect("create --dir");
            dir.clone()
        }
        None => {
            std::fs::create_dir_all("target").ok();
            holder = tempfile::Builder::new()
                .prefix("bench-log-")
                .tempdir_in("target")
                .expect("tempdir");
            holder.path().to_path_buf()
        }
    };
    println!("bench-log: files in {}", dir.display());
    single_appends(&dir, args.appends);
    group_commit(&dir, args.group_appends);
    let big_log = dir.join("big.redb");
    open_after_sigkill(&big_log, args.events, false);
    open_after_sigkill(&dir.join("big-quick-repair.redb"), args.events, true);
    rebuild_projections(&big_log, args.events);
}

fn one_event(n: u64) -> NewEvent {
    NewEvent::new(Event::ImageRemoved(ImageRemoved {
        name: format!("image-{n}"),
    }))
}

/// Raw baseline: overwrites records of the same size as an encoded event in a preallocated
/// file, each followed by fdatasync. Preallocating keeps file-size updates (an ext4 journal
/// commit each) out of the baseline, as a database file that grows in large steps keeps them out
/// of most of its own commits: this is the cheapest durable write the disk offers.
///
/// The second baseline appends to a growing file instead, as a naive log file would: each
/// fdatasync then also commits the new file size.
struct RawFile {
    file: std::fs::File,
    path: PathBuf,
    record: Vec<u8>,
    next: usize,
}

impl RawFile {
    fn new(dir: &Path, count: usize, record_len: usize, append: bool) -> RawFile {
        use std::os::unix::fs::FileExt;
        let path = dir.join(if append { "raw-append.bin" } else { "raw.bin" });
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open raw file");
        file.write_all_at(&vec![0u8; count * record_len], 0)
            .expect("preallocate");
        file.sync_all().expect("fsync");
        RawFile {
            file,
            path,
            record: vec![0xA5; record_len],
            next: 0,
        }
    }

    fn durable_write(&mut self) {
        use std::os::unix::fs::FileExt;
        // Appending and overwriting differ only in whether the file had the space already.
        let offset = (self.next * self.record.len()) as u64;
        self.next += 1;
        self.file.write_all_at(&self.record, offset).expect("write");
        self.file.sync_data().expect("fdatasync");
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

/// Removes the log at `path` and its write-ahead file.
fn remove_log(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(banger_events::wal::path_for(path));
}

fn fresh_log(path: &Path, quick_repair: bool, write_ahead: bool) -> RedbLog {
    remove_log(path);
    RedbLog::open_with(
        path,
        RedbOptions {
            quick_repair,
            write_ahead,
            ..Default::default()
        },
    )
    .expect("open log")
}

fn journal_at(path: &Path, quick_repair: bool, write_ahead: bool) -> Journal<NoFold> {
    let log = fresh_log(path, quick_repair, write_ahead);
    Journal::open(Arc::new(log), JournalOptions::default()).expect("open journal")
}

fn single_appends(dir: &Path, count: usize) {
    println!("\n1. one durable append at a time ({count} appends)");
    let record_len = frame::encode(&Envelope {
        seq: Seq(1),
        event_id: EventId(1),
        op_id: None,
        cause: None,
        at_unix_ms: 0,
        schema_version: SCHEMA_VERSION,
        event: one_event(1).event,
    })
    .len();
    // One sample of each in turn, so that disk noise hits the baseline and the logs alike.
    let mut raw = RawFile::new(dir, count, record_len, false);
    let mut appended = RawFile::new(dir, count, record_len, true);
    let default = journal_at(&dir.join("single.redb"), false, true);
    let quick = journal_at(&dir.join("single-quick-repair.redb"), true, true);
    let direct = journal_at(&dir.join("single-direct.redb"), false, false);
    // The storage alone, without the journal's queue, threads and fold: splits the ratio into
    // what the log's commit costs and what the journal adds on top.
    let bare = fresh_log(&dir.join("single-bare.redb"), false, true);
    let bare_direct = fresh_log(&dir.join("single-bare-direct.redb"), false, false);
    let (mut raw_samples, mut append_samples) = (Vec::new(), Vec::new());
    let (mut default_samples, mut quick_samples) = (Vec::new(), Vec::new());
    let (mut direct_samples, mut bare_samples) = (Vec::new(), Vec::new());
    let (mut bare_direct_samples, mut checkpoint_samples) = (Vec::new(), Vec::new());
    for n in 0..count as u64 {
        let start = Instant::now();
        raw.durable_write();
        raw_samples.push(start.elapsed());
        let start = Instant::now();
        appended.durable_write();
        append_samples.push(start.elapsed());
        let start = Instant::now();
        default.append_blocking(vec![one_event(n)]).expect("append");
        default_samples.push(start.elapsed());
        let start = Instant::now();
        quick.append_blocking(vec![one_event(n)]).expect("append");
        quick_samples.push(start.elapsed());
        let start = Instant::now();
        direct.append_blocking(vec![one_event(n)]).expect("append");
        direct_samples.push(start.elapsed());
        let envelope = Envelope {
            seq: Seq(n + 1),
            event_id: EventId(n as u128 + 1),
            op_id: None,
            cause: None,
            at_unix_ms: 0,
            schema_version: SCHEMA_VERSION,
            event: one_event(n).event,
        };
        let frames = [(envelope.seq, frame::encode(&envelope))];
        let start = Instant::now();
        bare.commit(&frames, None).expect("commit");
        bare_samples.push(start.elapsed());
        // As the journal does, after the commit: a checkpoint when the file is half full.
        if bare.checkpoint_state() == CheckpointState::Due {
            let start = Instant::now();
            bare.checkpoint().expect("checkpoint");
            checkpoint_samples.push(start.elapsed());
        }
        let start = Instant::now();
        bare_direct.commit(&frames, None).expect("commit");
        bare_direct_samples.push(start.elapsed());
    }
    let raw = Summary::of(&mut raw_samples);
    let append = Summary::of(&mut append_samples);
    for (label, samples) in [
        ("log (the default: write-ahead file)", &mut default_samples),
        ("log, quick-repair", &mut quick_samples),
        ("log, no write-ahead file", &mut direct_samples),
        ("log commit alone, no journal", &mut bare_samples),
        (
            "redb durable commit alone, no journal",
            &mut bare_direct_samples,
        ),
    ] {
        let log = Summary::of(samples);
        println!(
            "   {label:<40} p50 {:>10}  p99 {:>10}   p50 ratio: {:.2}x preallocated, {:.2}x append",
            us(log.p50),
            us(log.p99),
            log.p50.as_secs_f64() / raw.p50.as_secs_f64(),
            log.p50.as_secs_f64() / append.p50.as_secs_f64()
        );
    }
    if !checkpoint_samples.is_empty() {
        let checkpoints = checkpoint_samples.len();
        let summary = Summary::of(&mut checkpoint_samples);
        println!(
            "   {:<40} p50 {:>10}  max {:>10}   ({checkpoints} of them, one per {} commits, off the append path)",
            "checkpoint of the write-ahead file",
            us(summary.p50),
            us(summary.max),
            count / checkpoints
        );
    }
    println!(
        "   {:<40} p50 {:>10}  p99 {:>10}   ({record_len}-byte records)",
        "raw write+fdatasync (preallocated file)",
        us(raw.p50),
        us(raw.p99)
    );
    println!(
        "   {:<40} p50 {:>10}  p99 {:>10}",
        "raw write+fdatasync (appending)",
        us(append.p50),
        us(append.p99)
    );
    println!("   target: log p50 at most 1.5x raw fdatasync p50");
}

fn group_commit(dir: &Path, total: usize) {
    println!("\n2. group commit ({total} single-event appends per configuration)");
    for writers in [1usize, 4, 16] {
        let journal = Arc::new(journal_at(&dir.join("group.redb"), false, true));
        let per_writer = total / writers;
        let start = Instant::now();
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    let mut samples = Vec::with_capacity(per_writer);
                    for n in 0..per_writer {
                        let t = Instant::now();
                        journal
                            .append_blocking(vec![one_event((w * per_writer + n) as u64)])
                            .expect("append");
                        samples.push(t.elapsed());
                    }
                    samples
                })
            })
            .collect();
        let mut samples: Vec<Duration> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("writer thread"))
            .collect();
        let elapsed = start.elapsed();
        let summary = Summary::of(&mut samples);
        println!(
            "   {writers:>2} writer(s): {:>9.0} durable events/s   p50 {:>10}  p99 {:>10}",
            samples.len() as f64 / elapsed.as_secs_f64(),
            us(summary.p50),
            us(summary.p99)
        );
        if let Ok(journal) = Arc::try_unwrap(journal) {
            journal.close();
        }
    }
    println!("   target: at least 10,000 events/s at 16 writers");
}

/// Child process: prefill the log in large batches, then append one event at a time forever.
fn writer(path: &Path, prefill: usize, quick_repair: bool) {
    let log = RedbLog::open_with(
        path,
        RedbOptions {
            quick_repair,
            ..Default::default()
        },
    )
    .expect("open log");
    let journal: Journal<Projections> =
        Journal::open(Arc::new(log), JournalOptions::default()).expect("journal");
    let events = synthetic_events(prefill, 7);
    for chunk in events.chunks(8192) {
        journal.append_blocking(chunk.to_vec()).expect("prefill");
    }
    println!("ready {}", journal.last_seq());
    std::io::stdout().flush().ok();
    let mut n = 0u64;
    loop {
        n += 1;
        journal.append_blocking(vec![one_event(n)]).expect("append");
    }
}

fn open_after_sigkill(path: &Path, events: usize, quick_repair: bool) {
    let mode = if quick_repair {
        "quick-repair"
    } else {
        "no quick-repair, the default"
    };
    println!("\n4. open a log of {events} events after SIGKILL of its writer ({mode})");
    remove_log(path);
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(["writer", "--log"])
        .arg(path)
        .args(["--prefill", &events.to_string()])
        .args((!quick_repair).then_some("--no-quick-repair"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read ready line");
    assert!(line.starts_with("ready"), "writer said {line:?}");
    // Let it append for a moment so the kill lands in the middle of commits.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("SIGKILL writer");
    child.wait().expect("reap writer");
    let start = Instant::now();
    let log = RedbLog::open(path).expect("reopen after SIGKILL");
    let opened_file = start.elapsed();
    let from_write_ahead = log.replayed_from_write_ahead();
    let journal: Journal<Projections> =
        Journal::open(Arc::new(log), JournalOptions::default()).expect("journal");
    let opened_journal = start.elapsed();
    journal
        .append_blocking(vec![one_event(0)])
        .expect("append after reopen");
    let accepted = start.elapsed();
    let report = journal.open_report().clone();
    println!(
        "   redb open+repair {:>8.1} ms   journal ready {:>8.1} ms   first append durable {:>8.1} ms",
        ms(opened_file),
        ms(opened_journal),
        ms(accepted)
    );
    println!(
        "   log held {} events ({from_write_ahead} copied from the write-ahead file into redb); snapshot at seq {}; {} replayed on top; {} VMs in the projection",
        report.last_seq,
        report
            .snapshot_seq
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        report.replayed,
        journal.view().vms.len()
    );
    println!("   target: under 1000 ms until appends are accepted");
    journal.close();
}

fn rebuild_projections(path: &Path, events: usize) {
    println!("\n3. rebuild projections from {events} events");
    let log = RedbLog::open(path).expect("open log");
    let start = Instant::now();
    let from_log: Projections = rebuild(&log).expect("rebuild");
    let full = start.elapsed();
    let total = log.last_seq().expect("last seq").0;
    let envelopes = log.read(Seq(1), Seq(total), usize::MAX).expect("read all");
    let start = Instant::now();
    let mut folded = Projections::default();
    for envelope in &envelopes {
        banger_events::Fold::apply(&mut folded, envelope);
    }
    let fold_only = start.elapsed();
    assert_eq!(folded, from_log, "both ways of rebuilding agree");
    println!(
        "   read + check + decode + fold from redb: {:>10.0} events/s ({:.0} ms)",
        total as f64 / full.as_secs_f64(),
        ms(full)
    );
    println!(
        "   fold of decoded events only:            {:>10.0} events/s ({:.0} ms)",
        envelopes.len() as f64 / fold_only.as_secs_f64(),
        ms(fold_only)
    );
    println!("   target: at least 1,000,000 events/s");
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
