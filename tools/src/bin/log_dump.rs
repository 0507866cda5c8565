//! Prints every event of a log file, one JSON envelope per line, checking each as it goes.
//! Exits non-zero at the first bad record, naming its sequence number.
//!
//! Run: `cargo run -p banger-tools --bin log-dump -- FILE [--from SEQ] [--until SEQ]`

use std::io::Write;
use std::path::PathBuf;

use banger_events::{EventLog, RedbLog, Seq};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Dump a banger event log as JSON lines")]
struct Args {
    log: PathBuf,
    #[arg(long, default_value_t = 1)]
    from: u64,
    #[arg(long)]
    until: Option<u64>,
}

fn main() {
    let args = Args::parse();
    if let Err(error) = dump(&args) {
        eprintln!("log-dump: {error}");
        std::process::exit(1);
    }
}

fn dump(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let log = RedbLog::open(&args.log)?;
    let last = log.last_seq()?;
    let until = args.until.map(Seq).unwrap_or(last).min(last);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut next = Seq(args.from.max(1));
    while next <= until {
        let batch = log.read(next, until, 4096)?;
        let Some(last_read) = batch.last() else { break };
        next = last_read.seq.next();
        for envelope in &batch {
            serde_json::to_writer(&mut out, envelope)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
