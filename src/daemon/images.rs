//! The image methods that are more than a read of the views: `image.pull` (a stream: the
//! pull's progress as items, then its result), `image.promote`, `image.catalog` and
//! `image.cache.prune` (an operation, or a read-only tally with `dry_run`).
//!
//! A pull runs as an operation in a task of its own, like every operation: a client that
//! hangs up stops getting progress, never the pull. Progress goes from the operation to the
//! stream through a bounded queue that drops items when the client reads too slowly (the
//! result, which says what happened, is never dropped); it is not recorded in the log, whose
//! record of a pull is its steps.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::Daemon;
use super::dispatch::{Cx, decode, encode, op_error};
use super::handlers::detached;
use super::server::Conn;
use crate::api::{
    CatalogEntryView, ImageCachePruneParams, ImageCachePruneResult, ImageCatalogResult,
    ImagePromoteParams, ImagePullParams, ImageView, NoParams, PullItem,
};
use crate::image::catalog::CatalogSource;
use crate::operations::image_pull::{self, Progress};
use crate::operations::{BoxFuture, image_cache_prune, image_promote};
use crate::rpc::protocol::{ErrorCode, PROTOCOL_VERSION, Response, RpcError};

/// Progress items queued for a slow client before newer ones are dropped.
const PROGRESS_QUEUE: usize = 512;

/// The dispatch table's entry point for `image.pull`.
pub fn pull_handler<'c>(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: Value,
    conn: &'c mut Conn,
) -> BoxFuture<'c, Result<Value, RpcError>> {
    Box::pin(async move {
        let params: ImagePullParams = decode(cx.method, params)?;
        pull(daemon, cx, params, conn).await
    })
}

async fn pull(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: ImagePullParams,
    conn: &mut Conn,
) -> Result<Value, RpcError> {
    let (sender, mut receiver) = mpsc::channel::<PullItem>(PROGRESS_QUEUE);
    let progress: Progress = Arc::new(move |item| {
        let _ = sender.try_send(item);
    });
    let images = daemon.images.clone();
    let runner = daemon.runner.clone();
    let op_id = cx.op_id;
    let task = daemon.ops.spawn(tracing::Instrument::instrument(
        async move { image_pull::run(images, &runner, op_id, params, progress).await },
        cx.span.clone(),
    ));
    // The queue closes when the pull drops its progress sink, at its end.
    loop {
        tokio::select! {
            item = receiver.recv() => match item {
                Some(item) => {
                    if conn.output.send(&item_response(&cx, &item)?).await.is_err() {
                        return Ok(hung_up(conn));
                    }
                }
                None => break,
            },
            _ = conn.input.hung_up() => return Ok(hung_up(conn)),
        }
    }
    match task.await {
        Ok(result) => encode(result.map_err(op_error)?),
        Err(error) => Err(RpcError::internal(format!(
            "the pull's task ended abnormally: {error}; see bangerd's log"
        ))),
    }
}

fn item_response<T: Serialize>(cx: &Cx, item: &T) -> Result<Response, RpcError> {
    Ok(Response {
        v: PROTOCOL_VERSION,
        id: cx.request_id,
        op_id: Some(cx.op_id.to_string()),
        item: Some(encode(item)?),
        result: None,
        error: None,
    })
}

/// The client went away: end the stream without an answer (the pull goes on).
fn hung_up(conn: &mut Conn) -> Value {
    conn.output.dead = true;
    Value::Null
}

/// `image.promote`: a stopped VM's root disk becomes an image.
pub async fn promote(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: ImagePromoteParams,
) -> Result<ImageView, RpcError> {
    detached(&daemon, &cx, move |runner, op_id| async move {
        image_promote::run(&runner, op_id, params).await
    })
    .await
}

/// `image.catalog`: the catalog's entries and whether each is pulled.
pub async fn catalog(
    daemon: Arc<Daemon>,
    _: Cx,
    _: NoParams,
) -> Result<ImageCatalogResult, RpcError> {
    let catalog = &daemon.images.catalog;
    let images = daemon.journal.view().images.clone();
    let entries = catalog
        .images
        .iter()
        .map(|entry| {
            let state = match images.get(&entry.name) {
                None => "available",
                Some(image) => {
                    let from_entry = match &entry.source {
                        CatalogSource::Oci { reference } => {
                            crate::registry::ImageReference::parse(reference).is_ok_and(|parsed| {
                                image.source.starts_with(&format!("oci:{parsed}@"))
                                    || image.source == format!("oci:{parsed}")
                            })
                        }
                        CatalogSource::Bundle { .. } => image
                            .source
                            .starts_with(&format!("catalog:{}@", entry.name)),
                    };
                    if from_entry { "pulled" } else { "name-taken" }
                }
            };
            CatalogEntryView {
                name: entry.name.clone(),
                description: entry.description.clone(),
                kernel: entry.kernel.clone(),
                source: entry.source.describe(),
                size_bytes: match entry.source {
                    CatalogSource::Bundle { size_bytes, .. } => Some(size_bytes),
                    CatalogSource::Oci { .. } => None,
                },
                state: state.to_owned(),
            }
        })
        .collect();
    Ok(ImageCatalogResult {
        default_image: catalog.default_image.clone(),
        default_kernel: catalog.default_kernel.clone(),
        entries,
    })
}

/// `image.cache.prune`: the `image.cache.prune` operation (`operations::image_cache_prune`:
/// the blob cache renamed aside and recreated empty, then the aside copy deleted; safe against
/// pulls in flight, which keep their open blobs), recorded in the log and rolled forward after
/// a crash. A dry run is no operation: a read-only tally.
pub async fn cache_prune(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: ImageCachePruneParams,
) -> Result<ImageCachePruneResult, RpcError> {
    if params.dry_run {
        return daemon
            .images
            .registry
            .cache()
            .prune_dry_run()
            .await
            .map_err(|error| RpcError::new(ErrorCode::Internal, error.to_string()));
    }
    detached(&daemon, &cx, move |runner, op_id| async move {
        image_cache_prune::run(&runner, op_id).await
    })
    .await
}
