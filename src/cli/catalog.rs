//! `banger image` and `banger kernel`: what VMs boot from and with.
//!
//! Paths given on the command line are made absolute here, before they are sent: bangerd runs
//! in another directory (and perhaps as a service), so a relative path would mean something
//! else to it. They are also checked for existence here, which gives a quicker and clearer
//! error than a round trip would.

use std::path::{Path, PathBuf};

use super::args::{
    CachePruneArgs, ImageCacheCommand, ImageCommand, ImageListArgs, ImageNameArgs,
    ImagePromoteArgs, ImagePullArgs, ImageRegisterArgs, ImageShowArgs, KernelCommand,
    KernelImportArgs, KernelListArgs, KernelNameArgs, KernelPullArgs, KernelShowArgs,
};
use super::connect::{call, connect};
use super::error::CliError;
use super::format::{Table, now_unix_ms};
use super::kernel_progress::{PullDisplay, Sink};
use super::output::{json, json_line, line, out};
use super::pull::{self, Display};
use super::views::{When, image_details, image_table, kernel_details, kernel_table};
use crate::api::{
    ImageCachePruneParams, ImageCachePruneResult, ImageCatalogResult, ImageListResult,
    ImagePromoteParams, ImagePullParams, ImageRegisterParams, ImageView, KernelCatalogResult,
    KernelCatalogState, KernelImportParams, KernelListResult, KernelPullParams, KernelView,
    NameParams,
};
use crate::rpc::StreamEvent;
use crate::size::format_bytes;

pub async fn image(command: ImageCommand) -> Result<(), CliError> {
    match command {
        ImageCommand::List(args) => image_list(args).await,
        ImageCommand::Show(args) => image_show(args).await,
        ImageCommand::Register(args) => image_register(args).await,
        ImageCommand::Delete(args) => image_delete(args).await,
        ImageCommand::Pull(args) => image_pull(args).await,
        ImageCommand::Promote(args) => image_promote(args).await,
        ImageCommand::Cache(ImageCacheCommand::Prune(args)) => image_cache_prune(args).await,
    }
}

pub async fn kernel(command: KernelCommand) -> Result<(), CliError> {
    match command {
        KernelCommand::List(args) => kernel_list(args).await,
        KernelCommand::Show(args) => kernel_show(args).await,
        KernelCommand::Import(args) => kernel_import(args).await,
        KernelCommand::Rm(args) => kernel_remove(args).await,
        KernelCommand::Pull(args) => kernel_pull(args).await,
    }
}

async fn image_list(args: ImageListArgs) -> Result<(), CliError> {
    if args.available {
        return image_catalog(args.json).await;
    }
    let result: ImageListResult = call("image.list", &serde_json::json!({})).await?;
    if args.json {
        return json(&result.images);
    }
    if result.images.is_empty() {
        return line(
            "no images; pull one with `banger image pull debian` (see `banger image list --available`)",
        );
    }
    out(image_table(
        &result.images,
        When::Age {
            now_unix_ms: now_unix_ms(),
        },
    )
    .render())
}

async fn image_show(args: ImageShowArgs) -> Result<(), CliError> {
    let image: ImageView = call("image.show", &NameParams { name: args.name }).await?;
    if args.json {
        return json(&image);
    }
    out(image_details(&image, now_unix_ms()))
}

async fn image_register(args: ImageRegisterArgs) -> Result<(), CliError> {
    let rootfs = absolute(&args.rootfs, "root filesystem file")?;
    if !rootfs.is_file() {
        return Err(CliError::Usage(format!(
            "root filesystem file {} does not exist (or is not a regular file)",
            rootfs.display()
        )));
    }
    let params = ImageRegisterParams {
        name: args.name,
        rootfs: utf8(&rootfs)?,
        kernel: args.kernel,
    };
    let image: ImageView = call("image.register", &params).await?;
    line(format!(
        "registered image {} ({}, kernel {}), stored at {}",
        image.name,
        format_bytes(image.size_bytes),
        image.kernel.as_deref().unwrap_or("none"),
        image.rootfs_path
    ))
}

/// `image list --available`: the catalog, with what is pulled.
async fn image_catalog(as_json: bool) -> Result<(), CliError> {
    let catalog: ImageCatalogResult = call("image.catalog", &serde_json::json!({})).await?;
    if as_json {
        return json(&catalog);
    }
    let mut table = Table::new(&["NAME", "STATE", "KERNEL", "SIZE", "SOURCE", "DESCRIPTION"]);
    for entry in &catalog.entries {
        let name = if entry.name == catalog.default_image {
            format!("{} (default)", entry.name)
        } else {
            entry.name.clone()
        };
        table.row(vec![
            name,
            entry.state.clone(),
            entry.kernel.clone(),
            entry
                .size_bytes
                .map_or_else(|| "-".to_owned(), format_bytes),
            entry.source.clone(),
            entry.description.clone(),
        ]);
    }
    out(table.render())
}

async fn image_pull(args: ImagePullArgs) -> Result<(), CliError> {
    let params = ImagePullParams {
        reference: args.reference,
        name: args.name,
        kernel: args.kernel,
    };
    let display = Display::choose(args.json);
    let result = pull::pull(&params, display).await?;
    if display == Display::Json {
        return json_line(&result);
    }
    line(pull::summary(&result))
}

async fn image_promote(args: ImagePromoteArgs) -> Result<(), CliError> {
    let params = ImagePromoteParams {
        vm: args.vm.to_string(),
        name: args.name,
    };
    let image: ImageView = call("image.promote", &params).await?;
    line(format!(
        "promoted {}'s disk to image {} ({}, kernel {}), stored at {}",
        params.vm,
        image.name,
        format_bytes(image.size_bytes),
        image.kernel.as_deref().unwrap_or("none"),
        image.rootfs_path
    ))
}

async fn image_cache_prune(args: CachePruneArgs) -> Result<(), CliError> {
    let params = ImageCachePruneParams {
        dry_run: args.dry_run,
    };
    let result: ImageCachePruneResult = call("image.cache.prune", &params).await?;
    if args.json {
        return json_line(&result);
    }
    line(result.to_string())
}

async fn image_delete(args: ImageNameArgs) -> Result<(), CliError> {
    let _: serde_json::Value = call(
        "image.delete",
        &NameParams {
            name: args.name.clone(),
        },
    )
    .await?;
    line(format!("deleted image {}", args.name))
}

async fn kernel_list(args: KernelListArgs) -> Result<(), CliError> {
    if args.available {
        return kernel_catalog(args).await;
    }
    let result: KernelListResult = call("kernel.list", &serde_json::json!({})).await?;
    if args.json {
        return json(&result.kernels);
    }
    if result.kernels.is_empty() {
        return line(
            "no kernels; pull one from the catalog (`banger kernel list --available`, `banger kernel pull debian-12-cloud`) or import one (`banger kernel import NAME --from DIR`)",
        );
    }
    out(kernel_table(
        &result.kernels,
        When::Age {
            now_unix_ms: now_unix_ms(),
        },
    )
    .render())
}

/// `kernel list --available`: the catalog, and which of it is here.
async fn kernel_catalog(args: KernelListArgs) -> Result<(), CliError> {
    let result: KernelCatalogResult = call("kernel.catalog", &serde_json::json!({})).await?;
    if args.json {
        return json(&result.kernels);
    }
    if result.kernels.is_empty() {
        return line("the kernel catalog is empty");
    }
    let mut table = Table::new(&["NAME", "VERSION", "KIND", "SIZE", "STATE", "DESCRIPTION"]);
    for kernel in &result.kernels {
        table.row(vec![
            kernel.name.clone(),
            kernel.version.clone(),
            kernel.kind.clone(),
            format_bytes(kernel.size_bytes),
            match kernel.state {
                KernelCatalogState::Pulled => "pulled",
                KernelCatalogState::Available => "available",
                KernelCatalogState::Other => "other",
            }
            .to_owned(),
            kernel.description.clone(),
        ]);
    }
    out(table.render())
}

/// `kernel pull NAME [--force]`: progress on stderr, then where the kernel is.
async fn kernel_pull(args: KernelPullArgs) -> Result<(), CliError> {
    let params = KernelPullParams {
        name: args.name,
        force: args.force,
        progress: !args.json,
    };
    let mut stream = connect().await?.stream("kernel.pull", &params).await?;
    let mut display = PullDisplay::new(Sink::Stderr);
    let result = loop {
        match stream.next::<serde_json::Value>().await {
            Ok(StreamEvent::Item(item)) => display.show_value(&item)?,
            Ok(StreamEvent::End(result)) => break result,
            Err(error) => {
                display.end_line()?;
                return Err(error.into());
            }
        }
    };
    display.end_line()?;
    let kernel: KernelView = serde_json::from_value(result).map_err(|error| {
        CliError::failed("bangerd sent a kernel this banger cannot read", error)
    })?;
    if args.json {
        return json(&kernel);
    }
    line(format!(
        "pulled kernel {} ({}), stored at {}",
        kernel.name, kernel.version, kernel.kernel_path
    ))
}

async fn kernel_show(args: KernelShowArgs) -> Result<(), CliError> {
    let kernel: KernelView = call("kernel.show", &NameParams { name: args.name }).await?;
    if args.json {
        return json(&kernel);
    }
    out(kernel_details(&kernel, now_unix_ms()))
}

async fn kernel_import(args: KernelImportArgs) -> Result<(), CliError> {
    let from = absolute(&args.from, "kernel directory")?;
    if !from.is_dir() {
        return Err(CliError::Usage(format!(
            "kernel directory {} does not exist (or is not a directory)",
            from.display()
        )));
    }
    let params = KernelImportParams {
        name: args.name,
        from: utf8(&from)?,
    };
    let kernel: KernelView = call("kernel.import", &params).await?;
    let version = if kernel.version.is_empty() {
        "unknown version"
    } else {
        kernel.version.as_str()
    };
    line(format!(
        "imported kernel {} ({version}{}), stored at {}",
        kernel.name,
        if kernel.initrd_path.is_some() {
            ", with initrd"
        } else {
            ""
        },
        kernel.kernel_path
    ))
}

async fn kernel_remove(args: KernelNameArgs) -> Result<(), CliError> {
    let _: serde_json::Value = call(
        "kernel.remove",
        &NameParams {
            name: args.name.clone(),
        },
    )
    .await?;
    line(format!("removed kernel {}", args.name))
}

/// `path` made absolute against the current directory (not resolved: symlinks stay as typed).
fn absolute(path: &Path, what: &str) -> Result<PathBuf, CliError> {
    std::path::absolute(path).map_err(|error| {
        CliError::failed(
            format!("cannot make the {what} path {} absolute", path.display()),
            error,
        )
    })
}

/// The wire carries paths as JSON strings, so they must be UTF-8.
fn utf8(path: &Path) -> Result<String, CliError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| CliError::Usage(format!("path {} is not valid UTF-8", path.display())))
}
