//! The kernel catalog's methods: `kernel.pull` (a stream: progress items, then the kernel)
//! and `kernel.catalog` (what the catalog has, and which of it is here). The pull itself is
//! the `kernel.pull` operation (`crate::operations::kernel_pull`); see [`super::ensure`].

use std::sync::Arc;

use serde_json::Value;

use super::Daemon;
use super::dispatch::{Cx, decode, encode};
use super::progress;
use super::server::Conn;
use crate::api::{
    KernelCatalogItem, KernelCatalogResult, KernelCatalogState, KernelPullParams, NoParams,
};
use crate::operations::{BoxFuture, kernel_pull};
use crate::rpc::protocol::RpcError;

/// The dispatch table's entry point for `kernel.pull`.
pub fn pull_handler<'c>(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: Value,
    conn: &'c mut Conn,
) -> BoxFuture<'c, Result<Value, RpcError>> {
    Box::pin(async move {
        let params: KernelPullParams = decode(cx.method, params)?;
        let (reporter, listener) = progress::channel();
        let enabled = params.progress;
        let work = super::ensure::pull(&daemon, cx.op_id, &cx.span, params, &reporter);
        encode(progress::forward(&cx, conn, listener, enabled, work).await?)
    })
}

/// `kernel.catalog`
pub async fn catalog(
    daemon: Arc<Daemon>,
    _: Cx,
    _: NoParams,
) -> Result<KernelCatalogResult, RpcError> {
    let catalog = super::ensure::catalog(&daemon).await?;
    let view = daemon.journal.view();
    let kernels = catalog
        .kernels()
        .iter()
        .map(|kernel| {
            let state = match view.kernels.get(kernel.name()) {
                None => KernelCatalogState::Available,
                Some(here) if kernel_pull::pulled_from(&here.source, kernel.name()) => {
                    KernelCatalogState::Pulled
                }
                Some(_) => KernelCatalogState::Other,
            };
            KernelCatalogItem {
                name: kernel.name().to_owned(),
                kind: kernel.kind().to_owned(),
                version: kernel.release().to_owned(),
                arch: kernel.arch().to_owned(),
                size_bytes: kernel.size_bytes(),
                url: kernel.url().to_owned(),
                sha256: kernel.sha256().to_owned(),
                description: kernel.description().to_owned(),
                state,
            }
        })
        .collect();
    Ok(KernelCatalogResult { kernels })
}
