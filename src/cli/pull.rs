//! Showing an image pull while it runs: `image pull`, and `vm create` / `vm run` when their
//! image is not here yet.
//!
//! The daemon streams [`PullItem`]s. On a terminal (stderr) they become one bar, redrawn in
//! place at most ten times a second, above which finished things print as lines (a layer
//! downloaded or found cached, the agent put in, the filesystem built). Elsewhere only those
//! lines print, so a log gets a handful of lines per pull, not one per MiB. `--json` prints
//! every item as a JSON line on stdout, then the result.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::connect::connect;
use super::error::CliError;
use super::output::json_line;
use crate::api::{ImageProgress, ImagePullParams, ImagePullResult, PullItem, PullOutcome};
use crate::registry::{BlobRole, BlobState, PullProgress};
use crate::rpc::StreamEvent;
use crate::size::format_bytes;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// A bar redrawn in place on stderr, and lines for what finished.
    Bar,
    /// Lines on stderr for what finished.
    Lines,
    /// Every item as a JSON line on stdout.
    Json,
}

impl Display {
    pub fn choose(json: bool) -> Display {
        if json {
            Display::Json
        } else if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

const REDRAW_EVERY: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 24;

/// Pulls as `params` says, showing progress; returns the daemon's result.
pub async fn pull(params: &ImagePullParams, display: Display) -> Result<ImagePullResult, CliError> {
    let client = connect().await?;
    let mut stream = client.stream("image.pull", params).await?;
    let mut view = View::new(display, params.reference.clone());
    loop {
        let next = stream.next::<PullItem>().await;
        match next {
            Ok(StreamEvent::Item(item)) => view.item(&item)?,
            Ok(StreamEvent::End(value)) => {
                view.clear();
                return serde_json::from_value(value).map_err(|e| {
                    CliError::failed("bangerd's answer to image.pull is not a pull result", e)
                });
            }
            Err(error) => {
                view.clear();
                return Err(error.into());
            }
        }
    }
}

/// The one line that says what a pull did.
pub fn summary(result: &ImagePullResult) -> String {
    let image = &result.image;
    match result.outcome {
        PullOutcome::AlreadyPulled => format!(
            "{} is already pulled and up to date ({})",
            image.name, result.digest
        ),
        PullOutcome::Pulled => format!(
            "pulled {} ({}): {} image, kernel {}; downloaded {} blob(s), {}{}",
            image.name,
            image.source,
            format_bytes(image.size_bytes),
            image.kernel.as_deref().unwrap_or("none"),
            result.downloaded_blobs,
            format_bytes(result.downloaded_bytes),
            if result.cached_blobs > 0 {
                format!(", {} cached", result.cached_blobs)
            } else {
                String::new()
            }
        ),
    }
}

struct Blob {
    done: u64,
    total: u64,
    finished: bool,
}

struct View {
    display: Display,
    reference: String,
    layers: Vec<Blob>,
    /// What the bar shows now.
    phase: Phase,
    drawn: bool,
    last_draw: Option<Instant>,
}

enum Phase {
    Starting,
    Waiting(String),
    Downloading,
    Bundle {
        done: u64,
        total: u64,
    },
    Flatten {
        index: usize,
        layers: usize,
        done: u64,
        total: u64,
    },
    Publishing,
}

impl View {
    fn new(display: Display, reference: String) -> View {
        View {
            display,
            reference,
            layers: Vec::new(),
            phase: Phase::Starting,
            drawn: false,
            last_draw: None,
        }
    }

    fn item(&mut self, item: &PullItem) -> Result<(), CliError> {
        if self.display == Display::Json {
            return json_line(item);
        }
        let mut force = false;
        match item {
            PullItem::Registry(PullProgress::Resolved {
                manifest_digest,
                layers,
                total_bytes,
                platform,
                ..
            }) => {
                if self.layers.len() != *layers {
                    self.say(format!(
                        "{}: {} ({platform}), {layers} layer(s), {}",
                        self.reference,
                        manifest_digest,
                        format_bytes(*total_bytes)
                    ));
                }
                self.layers = (0..*layers)
                    .map(|_| Blob {
                        done: 0,
                        total: 0,
                        finished: false,
                    })
                    .collect();
                self.phase = Phase::Downloading;
            }
            PullItem::Registry(PullProgress::Blob(blob)) => {
                if blob.role != BlobRole::Layer {
                    return Ok(());
                }
                let Some(index) = blob.index else {
                    return Ok(());
                };
                let count = self.layers.len();
                if let Some(layer) = self.layers.get_mut(index) {
                    layer.done = blob.done_bytes;
                    layer.total = blob.total_bytes;
                    let finished = matches!(blob.state, BlobState::Downloaded | BlobState::Cached);
                    if finished && !layer.finished {
                        layer.finished = true;
                        let how = if blob.state == BlobState::Cached {
                            "cached"
                        } else {
                            "downloaded"
                        };
                        let hex = blob.digest.hex();
                        self.say(format!(
                            "layer {}/{count} sha256:{} {} {how}",
                            index + 1,
                            &hex[..12.min(hex.len())],
                            format_bytes(blob.total_bytes)
                        ));
                        force = true;
                    }
                }
            }
            PullItem::Image(ImageProgress::Waiting { name }) => {
                self.say(format!("another pull of {name} is running; waiting for it"));
                self.phase = Phase::Waiting(name.clone());
            }
            PullItem::Image(ImageProgress::Step { step }) => {
                if step == "publish" {
                    self.phase = Phase::Publishing;
                    force = true;
                }
            }
            PullItem::Image(ImageProgress::Download {
                done_bytes,
                total_bytes,
            }) => {
                if matches!(self.phase, Phase::Starting) {
                    self.say(format!(
                        "{}: downloading a bundle of {}",
                        self.reference,
                        format_bytes(*total_bytes)
                    ));
                }
                self.phase = Phase::Bundle {
                    done: *done_bytes,
                    total: *total_bytes,
                };
            }
            PullItem::Image(ImageProgress::Flatten {
                index,
                layers,
                done_bytes,
                total_bytes,
            }) => {
                let starting =
                    !matches!(self.phase, Phase::Flatten { index: i, .. } if i == *index);
                if starting && *index == 0 {
                    self.say("building the ext4 filesystem".to_owned());
                }
                self.phase = Phase::Flatten {
                    index: *index,
                    layers: *layers,
                    done: *done_bytes,
                    total: *total_bytes,
                };
            }
            PullItem::Image(ImageProgress::Agent { systemd }) => {
                self.say(if *systemd {
                    "guest agent added, with a systemd unit (the image's init is systemd)"
                        .to_owned()
                } else {
                    "guest agent added (it is the guest's init: the image has none)".to_owned()
                });
                force = true;
            }
            PullItem::Image(ImageProgress::Built {
                size_bytes,
                content_bytes,
                inodes,
            }) => {
                self.say(format!(
                    "ext4 built: {} ({} of content, {inodes} inodes)",
                    format_bytes(*size_bytes),
                    format_bytes(*content_bytes)
                ));
                force = true;
            }
        }
        self.draw(force);
        Ok(())
    }

    /// A line for something that finished (above the bar, on stderr).
    fn say(&mut self, text: String) {
        if self.display == Display::Json {
            return;
        }
        self.clear();
        let _ = writeln!(std::io::stderr(), "{text}");
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.drawn = false;
        }
    }

    fn draw(&mut self, force: bool) {
        if self.display != Display::Bar {
            return;
        }
        let now = Instant::now();
        if !force && self.last_draw.is_some_and(|at| now - at < REDRAW_EVERY) {
            return;
        }
        self.last_draw = Some(now);
        let text = match &self.phase {
            Phase::Starting => format!("{}: resolving", self.reference),
            Phase::Waiting(name) => format!("waiting for another pull of {name}"),
            Phase::Downloading => {
                let done: u64 = self.layers.iter().map(|l| l.done).sum();
                let total: u64 = self.layers.iter().map(|l| l.total).sum();
                let finished = self.layers.iter().filter(|l| l.finished).count();
                format!(
                    "downloading {} {} / {}  ({finished}/{} layers)",
                    bar(done, total),
                    format_bytes(done),
                    format_bytes(total),
                    self.layers.len()
                )
            }
            Phase::Bundle { done, total } => format!(
                "downloading {} {} / {}",
                bar(*done, *total),
                format_bytes(*done),
                format_bytes(*total)
            ),
            Phase::Flatten {
                index,
                layers,
                done,
                total,
            } => format!(
                "building ext4 {} layer {}/{layers}",
                bar(*done, *total),
                index + 1
            ),
            Phase::Publishing => "publishing".to_owned(),
        };
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "\r\x1b[2K{text}");
        let _ = stderr.flush();
        self.drawn = true;
    }
}

/// `[#######.................]  29%`
fn bar(done: u64, total: u64) -> String {
    let fraction = if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    format!(
        "[{}{}] {:3}%",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        (fraction * 100.0).round() as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_progress() {
        assert_eq!(bar(0, 0), format!("[{}]   0%", ".".repeat(BAR_WIDTH)));
        assert_eq!(
            bar(1, 2),
            format!("[{}{}]  50%", "#".repeat(12), ".".repeat(12))
        );
        assert_eq!(bar(9, 3), format!("[{}] 100%", "#".repeat(BAR_WIDTH)));
    }
}
