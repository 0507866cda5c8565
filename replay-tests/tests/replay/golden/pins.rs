//! Pin files: checked-in `label<TAB>value` lines, one per sample, that only ever grow.
//!
//! A pin is how one sample value is stored. The test compares today's encoding of every
//! sample with its pinned text *and* decodes the pinned text back into the sample, so a
//! layout that changes in place fails both ways, and a form that only older builds wrote
//! (which today's code cannot produce) is still checked on the way in.
//!
//! Blessing (`BANGER_BLESS=1`) appends a line for each sample the file does not pin yet. It
//! never rewrites or removes a line: a pinned line that no longer matches *is* a persisted
//! format that changed in place, which no bless may hide. A pin whose sample is gone (a
//! variant or a version removed or renamed) fails too. Lines starting with `#` are comments.

use std::collections::BTreeMap;
use std::path::Path;

/// Decodes a pinned value with today's decoder and compares it with its sample; the error says
/// how they differ.
pub type Check = Box<dyn Fn(&str) -> Result<(), String>>;

/// One value whose stored form is pinned.
pub struct Sample {
    /// Unique within its file; no tabs.
    pub label: String,
    /// How today's build stores the value, or `None` for a form it reads but no longer writes
    /// (its pin is copied by hand from what an older build wrote; blessing cannot make it).
    pub encoded: Option<String>,
    pub check: Check,
}

/// The pins of a file, in file order.
fn read_pins(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read pin file {}: {e}\n(pins are added with `BANGER_BLESS=1 cargo test -p \
             banger-replay-tests golden`; see replay-tests/README.md)",
            path.display()
        )
    });
    let mut pins = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((label, value)) = line.split_once('\t') else {
            panic!(
                "{}:{}: not `label<TAB>value`: {line:?}",
                path.display(),
                n + 1
            );
        };
        pins.push((label.to_owned(), value.to_owned()));
    }
    pins
}

/// Appends the pins `samples` add; everything already in the file stays as it is.
fn bless(path: &Path, header: &str, samples: &[Sample]) {
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|_| header.to_owned());
    let pinned: Vec<String> = if path.exists() {
        read_pins(path)
            .into_iter()
            .map(|(label, _)| label)
            .collect()
    } else {
        Vec::new()
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let mut added = 0;
    for sample in samples {
        if let Some(encoded) = &sample.encoded
            && !pinned.contains(&sample.label)
        {
            text.push_str(&format!("{}\t{encoded}\n", sample.label));
            added += 1;
        }
    }
    std::fs::write(path, text).expect("write pin file");
    println!("blessed {}: {added} pins added", path.display());
}

/// Checks `samples` against the pin file at `path` (blessing it first when asked), reporting
/// every difference at once.
pub fn verify(path: &Path, header: &str, samples: &[Sample]) {
    assert!(
        header.lines().all(|l| l.starts_with('#')),
        "header lines are comments"
    );
    if super::blessing() {
        bless(path, header, samples);
    }
    let mut pins = BTreeMap::new();
    for (label, value) in read_pins(path) {
        let again = pins.insert(label.clone(), value);
        assert!(
            again.is_none(),
            "{}: {label} is pinned twice",
            path.display()
        );
    }
    let mut failures = Vec::new();
    let mut labels = std::collections::BTreeSet::new();
    for sample in samples {
        assert!(
            labels.insert(sample.label.as_str()) && !sample.label.contains('\t'),
            "sample label {:?} is used twice or has a tab",
            sample.label
        );
        let Some(pinned) = pins.get(&sample.label) else {
            failures.push(match sample.encoded {
                Some(_) => format!("{}: not pinned yet; bless to add it", sample.label),
                None => format!(
                    "{}: not pinned, and blessing cannot pin a form this build no longer writes; \
                     copy it from a log written by the build that wrote it",
                    sample.label
                ),
            });
            continue;
        };
        if let Some(encoded) = &sample.encoded
            && encoded != pinned
        {
            failures.push(format!(
                "{}: stored today as\n    {encoded}\n  but pinned as\n    {pinned}\n  a persisted \
                 layout changed in place; add a variant or a new version instead",
                sample.label
            ));
        }
        if let Err(error) = (sample.check)(pinned) {
            failures.push(format!("{}: the pinned form {error}", sample.label));
        }
    }
    for label in pins.keys() {
        if !labels.contains(label.as_str()) {
            failures.push(format!(
                "{label}: pinned, but no sample has it any more: a variant or version was \
                 removed or renamed, and logs that hold it would no longer read"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagrees with this build:\n{}",
        path.display(),
        failures.join("\n")
    );
}
