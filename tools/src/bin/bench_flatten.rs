//! bench-flatten: flattens OCI layers into ext4 (banger's writer) and compares it with the
//! chained standard tools and with the floor. `bench-flatten flatten OUT LAYER.tar…` runs the
//! writer alone on uncompressed layer tars.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use banger::image::{FlattenOptions, flatten_layers};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("flatten") if args.len() >= 3 => {
            let output = PathBuf::from(&args[1]);
            let layers = args[2..]
                .iter()
                .map(|path| BufReader::new(File::open(path).expect("open layer")));
            match flatten_layers(layers, &output, FlattenOptions::default()) {
                Ok(summary) => {
                    println!("{summary:?}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: bench-flatten flatten OUT LAYER.tar…");
            ExitCode::from(2)
        }
    }
}
