//! `banger::registry` against real registries: Debian's `docker-registry` on loopback with
//! images built by `umoci` and pushed by `skopeo` (or assembled by hand and pushed through the
//! registry's API), and a scripted server for what no honest registry serves. Each test owns
//! its registry, its cache directory and its docker config; nothing reads the user's own.
//!
//! Reusable support (a registry, image builders, the scripted server) lives in
//! [`support`]: the flattener's and the `image.pull` operation's tests use it too.

pub(crate) mod support;

use std::fs;
use std::path::Path;
use std::sync::Mutex;

use banger::registry::{
    BlobCache, BlobState, Compression, Digest, LayerBlob, LayerError, Platform, PullError,
    PullLimits, PullProgress, Registry, RegistryConfig,
};
use support::{
    BASIC_AUTH_PASSWORD, BASIC_AUTH_USER, Body, Gate, Layer, ManifestFormat, Push, Route,
    StaticRegistry, TestRegistry, UmociImage, noise, tar_with,
};

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio a_multi_layer_umoci_image_pulls_once_and_reads_twice needs(Root),
        tokio zstd_and_docker_schema_2_pushes_pull_to_the_same_content needs(Root),
        tokio uncompressed_layers_and_hand_built_docker_images_pull,
        tokio an_index_picks_amd64_and_an_arm64_only_one_says_what_it_has,
        tokio credentials_come_from_the_docker_config_and_a_401_says_how_to_log_in,
        tokio a_mirror_serves_docker_hub_references,
        tokio plain_http_is_only_for_registries_listed_as_insecure,
        tokio a_blob_damaged_in_the_registry_is_refused_and_leaves_nothing,
        tokio concurrent_pulls_download_each_blob_once,
        tokio prune_reports_frees_and_a_later_pull_downloads_again,
        tokio a_prune_during_a_download_corrupts_nothing,
        tokio oversized_manifests_are_refused_while_they_stream,
        tokio blobs_of_the_wrong_size_or_digest_are_refused_and_leave_nothing,
        tokio hostile_manifests_are_refused_before_any_blob_is_fetched,
        tokio a_truncated_gzip_layer_is_an_error_when_read_not_a_short_archive,
    ]
}

/// A puller with its own cache under `root`.
fn puller(config: RegistryConfig, root: &Path) -> Registry {
    Registry::new(config, BlobCache::new(root.join("oci"))).expect("a registry client")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("banger-pull-")
        .tempdir()
        .expect("a temporary directory")
}

/// Collects a pull's progress.
#[derive(Default)]
struct Recorder(Mutex<Vec<PullProgress>>);

impl Recorder {
    fn sink(&self) -> impl Fn(PullProgress) + Send + Sync + '_ {
        move |progress| self.0.lock().unwrap().push(progress)
    }

    fn take(&self) -> Vec<PullProgress> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The final state reported for each blob, by digest.
fn final_states(events: &[PullProgress]) -> Vec<(Digest, BlobState)> {
    let mut states: Vec<(Digest, BlobState)> = Vec::new();
    for event in events {
        if let PullProgress::Blob(blob) = event {
            states.retain(|(digest, _)| digest != &blob.digest);
            states.push((blob.digest.clone(), blob.state));
        }
    }
    states.sort_by(|a, b| a.0.cmp(&b.0));
    states
}

fn no_temp_files(cache: &BlobCache) {
    let left: Vec<_> = fs::read_dir(cache.temp_dir())
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

fn cached(cache: &BlobCache) -> Vec<Digest> {
    cache
        .list_blobs()
        .unwrap()
        .into_iter()
        .map(|(digest, _)| digest)
        .collect()
}

fn sorted(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.sort();
    digests.dedup();
    digests
}

/// Reads a layer's tar stream to its end marker and finishes it: the entries' paths.
fn tar_entries(layer: &LayerBlob) -> Vec<String> {
    let mut reader = layer.open().expect("open the layer");
    let mut names = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut reader);
        for entry in archive.entries().expect("a tar stream") {
            let entry = entry.expect("a tar entry");
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
    }
    reader.finish().expect("the layer verifies at its end");
    names
}

/// The decompressed stream's sha256 (what the config's diff_id says).
fn decompressed_digest(layer: &LayerBlob) -> Digest {
    use sha2::Digest as _;
    let mut reader = layer.open().unwrap();
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut reader, &mut hasher).unwrap();
    Digest::from_hasher(hasher)
}

async fn a_multi_layer_umoci_image_pulls_once_and_reads_twice() {
    let registry = TestRegistry::start();
    let mut image = UmociImage::new();
    image
        .layer(|rootfs| {
            fs::create_dir_all(rootfs.join("etc")).unwrap();
            fs::write(rootfs.join("etc/os-release"), "ID=banger-test\n").unwrap();
            fs::create_dir_all(rootfs.join("usr/bin")).unwrap();
            fs::write(rootfs.join("usr/bin/tool"), noise(1, 300_000)).unwrap();
            fs::write(rootfs.join("etc/obsolete"), "remove me\n").unwrap();
        })
        .layer(|rootfs| {
            fs::remove_file(rootfs.join("etc/obsolete")).unwrap();
            fs::write(rootfs.join("etc/motd"), "second layer\n").unwrap();
        })
        .layer(|rootfs| {
            fs::write(rootfs.join("usr/bin/tool"), noise(2, 200_000)).unwrap();
        });
    let pushed = image.push(&registry, "banger/multi:1", Push::OciGzip);
    assert_eq!(pushed.layers.len(), 3);

    let root = tempdir();
    let puller = puller(registry.client_config(root.path()), root.path());
    let recorder = Recorder::default();
    let pulled = puller
        .pull(&pushed.reference, &recorder.sink())
        .await
        .expect("the first pull");
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert_eq!(pulled.config_digest, pushed.config_digest);
    assert_eq!(pulled.index_digest, None);
    assert_eq!(pulled.platform.to_string(), "linux/amd64");
    assert_eq!(pulled.config.rootfs.diff_ids.len(), 3);
    assert_eq!(pulled.stats.downloaded_blobs, 4);
    assert_eq!(pulled.stats.cached_blobs, 0);

    // The cache holds exactly the image's blobs, with their sizes, and nothing half made.
    let cache = puller.cache();
    assert_eq!(cached(cache), sorted(pushed.blobs()));
    for (digest, size) in cache.list_blobs().unwrap() {
        assert_eq!(fs::metadata(cache.blob_path(&digest)).unwrap().len(), size);
    }
    no_temp_files(cache);

    // Each layer reads as a tar stream, twice, and matches its diff_id.
    for (layer, diff_id) in pulled.layers.iter().zip(&pulled.config.rootfs.diff_ids) {
        assert_eq!(layer.compression(), Compression::Gzip);
        assert_eq!(tar_entries(layer), tar_entries(layer));
        assert_eq!(decompressed_digest(layer).to_string(), *diff_id);
    }
    let second_layer = tar_entries(&pulled.layers[1]);
    assert!(
        second_layer
            .iter()
            .any(|name| name.ends_with("etc/.wh.obsolete")),
        "the deletion is a whiteout: {second_layer:?}"
    );

    // Progress: resolved first, then every blob ends downloaded; all of it is flat JSON.
    let events = recorder.take();
    assert!(matches!(
        &events[0],
        PullProgress::Resolved { layers: 3, .. }
    ));
    let downloaded: Vec<_> = pushed
        .blobs()
        .into_iter()
        .map(|digest| (digest, BlobState::Downloaded))
        .collect();
    assert_eq!(final_states(&events), sorted_states(downloaded));
    for event in &events {
        let json = serde_json::to_value(event).unwrap();
        assert!(json["event"].is_string(), "{json}");
    }

    // A second pull downloads nothing: the registry serves no blob, every blob is cached.
    let gets = registry.blob_gets(4);
    assert_eq!(gets, 4, "{:?}", registry.requests());
    let again = puller
        .pull(&pushed.reference, &recorder.sink())
        .await
        .expect("the second pull");
    assert_eq!(again.stats.downloaded_blobs, 0);
    assert_eq!(again.stats.cached_blobs, 4);
    assert_eq!(registry.blob_gets(4), 4, "the second pull fetched a blob");
    let cached_states: Vec<_> = pushed
        .blobs()
        .into_iter()
        .map(|digest| (digest, BlobState::Cached))
        .collect();
    assert_eq!(final_states(&recorder.take()), sorted_states(cached_states));
}

fn sorted_states(mut states: Vec<(Digest, BlobState)>) -> Vec<(Digest, BlobState)> {
    states.sort_by(|a, b| a.0.cmp(&b.0));
    states
}

async fn zstd_and_docker_schema_2_pushes_pull_to_the_same_content() {
    let mut image = UmociImage::new();
    image
        .layer(|rootfs| {
            fs::write(rootfs.join("a"), noise(3, 100_000)).unwrap();
        })
        .layer(|rootfs| {
            fs::create_dir_all(rootfs.join("b")).unwrap();
            fs::write(rootfs.join("b/c"), "c\n").unwrap();
        });
    // Separate registries: skopeo would reuse a gzip blob a registry already holds.
    let zstd_registry = TestRegistry::start();
    let docker_registry = TestRegistry::start();
    let zstd = image.push(&zstd_registry, "banger/z:1", Push::OciZstd);
    let docker = image.push(&docker_registry, "banger/d:1", Push::DockerV2S2);
    assert!(
        zstd.layers.iter().all(|(_, t)| t.ends_with("tar+zstd")),
        "{zstd:?}"
    );
    assert!(
        docker
            .layers
            .iter()
            .all(|(_, t)| t.ends_with("diff.tar.gzip")),
        "{docker:?}"
    );
    assert!(
        docker
            .manifest_media_type
            .contains("docker.distribution.manifest.v2")
    );

    let root = tempdir();
    let mut config = zstd_registry.client_config(root.path());
    config.insecure.push(docker_registry.host());
    let puller = puller(config, root.path());
    let from_zstd = puller.pull(&zstd.reference, &|_| {}).await.unwrap();
    let from_docker = puller.pull(&docker.reference, &|_| {}).await.unwrap();
    assert!(
        from_zstd
            .layers
            .iter()
            .all(|l| l.compression() == Compression::Zstd)
    );
    assert!(
        from_docker
            .layers
            .iter()
            .all(|l| l.compression() == Compression::Gzip)
    );
    for (z, d) in from_zstd.layers.iter().zip(&from_docker.layers) {
        assert_eq!(decompressed_digest(z), decompressed_digest(d));
        assert_eq!(tar_entries(z), tar_entries(d));
    }
    assert_eq!(
        cached(puller.cache()),
        sorted([zstd.blobs(), docker.blobs()].concat())
    );
}

async fn uncompressed_layers_and_hand_built_docker_images_pull() {
    let registry = TestRegistry::start();
    let plain = tar_with(&[("plain/file", b"uncompressed\n")]);
    let zipped = tar_with(&[("zipped/file", b"gzip\n")]);
    let oci = registry.push_image(
        "banger/plain:1",
        &[Layer::uncompressed(&plain), Layer::zstd(&zipped)],
        "amd64",
    );
    let docker = registry.push_image_as(
        "banger/docker:1",
        &[Layer::raw(
            support::DOCKER_LAYER_GZIP,
            Layer::gzip(&zipped).bytes,
            Digest::of(&zipped),
        )],
        "x86_64",
        ManifestFormat::Docker,
    );
    let root = tempdir();
    let puller = puller(registry.client_config(root.path()), root.path());
    let pulled = puller.pull(&oci.reference, &|_| {}).await.unwrap();
    assert_eq!(pulled.layers[0].compression(), Compression::None);
    assert_eq!(tar_entries(&pulled.layers[0]), vec!["plain/file"]);
    assert_eq!(pulled.layers[1].compression(), Compression::Zstd);
    assert_eq!(
        pulled.config.config.as_ref().unwrap().cmd,
        Some(vec!["/bin/sh".to_owned()])
    );
    // By digest: the same image, nothing downloaded again.
    let by_digest = format!("{}/banger/plain@{}", registry.host(), oci.manifest_digest);
    let again = puller.pull(&by_digest, &|_| {}).await.unwrap();
    assert_eq!(again.manifest_digest, oci.manifest_digest);
    assert_eq!(again.stats.downloaded_blobs, 0);
    // "x86_64" in a config is amd64 spelled the kernel's way.
    let pulled = puller.pull(&docker.reference, &|_| {}).await.unwrap();
    assert_eq!(pulled.platform.to_string(), "linux/amd64");
    assert_eq!(tar_entries(&pulled.layers[0]), vec!["zipped/file"]);
}

async fn an_index_picks_amd64_and_an_arm64_only_one_says_what_it_has() {
    let registry = TestRegistry::start();
    let amd = tar_with(&[("arch", b"amd64\n")]);
    let arm = tar_with(&[("arch", b"arm64\n")]);
    let amd64 = registry.push_image("banger/multi:amd64", &[Layer::gzip(&amd)], "amd64");
    let arm64 = registry.push_image("banger/multi:arm64", &[Layer::gzip(&arm)], "arm64");
    for format in [ManifestFormat::Oci, ManifestFormat::Docker] {
        let both = registry.push_index(
            "banger/multi:both",
            &[(&arm64, "linux/arm64/v8"), (&amd64, "linux/amd64")],
            format,
        );
        let root = tempdir();
        let puller = puller(registry.client_config(root.path()), root.path());
        let reference = format!("{}/banger/multi:both", registry.host());
        let pulled = puller.pull(&reference, &|_| {}).await.unwrap();
        assert_eq!(pulled.index_digest, Some(both));
        assert_eq!(pulled.manifest_digest, amd64.manifest_digest);
        assert_eq!(
            cached(puller.cache()),
            sorted(amd64.blobs()),
            "only amd64's blobs"
        );
        assert_eq!(decompressed_digest(&pulled.layers[0]), Digest::of(&amd));

        registry.push_index(
            "banger/multi:arm-only",
            &[(&arm64, "linux/arm64/v8")],
            format,
        );
        let reference = format!("{}/banger/multi:arm-only", registry.host());
        let error = puller.pull(&reference, &|_| {}).await.unwrap_err();
        assert!(
            matches!(&error, PullError::NoMatchingPlatform { available, .. } if available == "linux/arm64/v8"),
            "{error}"
        );
        assert!(
            error.to_string().contains("no image for linux/amd64"),
            "{error}"
        );
    }
    // A tag that names an arm64 manifest directly (no index) is refused by its config.
    let root = tempdir();
    let puller = puller(registry.client_config(root.path()), root.path());
    let error = puller.pull(&arm64.reference, &|_| {}).await.unwrap_err();
    assert!(matches!(error, PullError::WrongPlatform { .. }), "{error}");
    // The configured platform decides: an arm64 host takes the arm64 entry.
    let mut config = registry.client_config(root.path());
    config.platform = Platform {
        os: "linux".into(),
        architecture: "aarch64".into(),
        variant: None,
    };
    let arm_puller = Registry::new(config, BlobCache::new(root.path().join("arm"))).unwrap();
    let reference = format!("{}/banger/multi:both", registry.host());
    let pulled = arm_puller.pull(&reference, &|_| {}).await.unwrap();
    assert_eq!(pulled.manifest_digest, arm64.manifest_digest);
}

fn write_docker_config(dir: &Path, registry: &str, auth: &str) -> std::path::PathBuf {
    let path = dir.join("config.json");
    fs::write(
        &path,
        serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    path
}

async fn credentials_come_from_the_docker_config_and_a_401_says_how_to_log_in() {
    use base64::Engine as _;
    let registry = TestRegistry::start_with_basic_auth();
    let pushed = registry.push_image(
        "private/app:1",
        &[Layer::gzip(&tar_with(&[("secret", b"42\n")]))],
        "amd64",
    );
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);

    // No credentials: a 401 that says how to log in, and nothing cached.
    let root = tempdir();
    let anonymous = puller(registry.client_config(root.path()), root.path());
    let error = anonymous
        .pull(&pushed.reference, &|_| {})
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, PullError::Unauthorized { .. }), "{message}");
    assert!(
        message.contains(&format!("docker login {}", registry.host())),
        "{message}"
    );
    assert!(cached(anonymous.cache()).is_empty());

    // Wrong credentials: refused, and the message says they were.
    let dir = tempdir();
    let mut config = registry.client_config(dir.path());
    config.docker_config = Some(write_docker_config(
        dir.path(),
        &registry.host(),
        &encode(&format!("{BASIC_AUTH_USER}:wrong")),
    ));
    let puller = puller(config, dir.path());
    let error = puller.pull(&pushed.reference, &|_| {}).await.unwrap_err();
    assert!(error.to_string().contains("were refused"), "{error}");

    // The right ones, as `docker login` writes them (a URL as the key), read on the next pull
    // by the same long-lived client: no daemon restart after logging in.
    write_docker_config(
        dir.path(),
        &format!("http://{}", registry.host()),
        &encode(&format!("{BASIC_AUTH_USER}:{BASIC_AUTH_PASSWORD}")),
    );
    let pulled = puller.pull(&pushed.reference, &|_| {}).await.unwrap();
    assert_eq!(tar_entries(&pulled.layers[0]), vec!["secret"]);
    assert_eq!(cached(puller.cache()), sorted(pushed.blobs()));
}

async fn a_mirror_serves_docker_hub_references() {
    let mirror = TestRegistry::start();
    let pushed = mirror.push_image(
        "library/debian:bookworm",
        &[Layer::gzip(&tar_with(&[("etc/debian_version", b"12.0\n")]))],
        "amd64",
    );
    let root = tempdir();
    let mut config = mirror.client_config(root.path());
    config.mirrors.insert("docker.io".to_owned(), mirror.host());
    let puller = puller(config, root.path());
    // Docker Hub's short name, normalised, then rewritten onto the mirror: no internet.
    let pulled = puller.pull("debian:bookworm", &|_| {}).await.unwrap();
    assert_eq!(
        pulled.reference.to_string(),
        "docker.io/library/debian:bookworm"
    );
    assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    assert!(
        mirror
            .requests()
            .iter()
            .any(|r| r.path == "/v2/library/debian/manifests/bookworm"),
        "{:?}",
        mirror.requests()
    );
}

async fn plain_http_is_only_for_registries_listed_as_insecure() {
    let registry = TestRegistry::start();
    let pushed = registry.push_image(
        "banger/http:1",
        &[Layer::gzip(&tar_with(&[("f", b"f\n")]))],
        "amd64",
    );
    let root = tempdir();
    let mut config = registry.client_config(root.path());
    config.insecure.clear();
    let error = puller(config, root.path())
        .pull(&pushed.reference, &|_| {})
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, PullError::Unreachable { .. }), "{message}");
    assert!(message.contains("listed as insecure"), "{message}");
    // Nothing went over plain HTTP: the registry never saw a request for the image.
    assert!(
        !registry
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/v2/banger/http") && r.method == "GET"),
        "{:?}",
        registry.requests()
    );
}

async fn a_blob_damaged_in_the_registry_is_refused_and_leaves_nothing() {
    let registry = TestRegistry::start();
    let tar = tar_with(&[("payload", &noise(4, 50_000))]);
    let layer = Layer::gzip(&tar);
    let pushed = registry.push_image("banger/damaged:1", std::slice::from_ref(&layer), "amd64");
    let stored = registry.storage_blob_path(&layer.digest());
    assert!(stored.exists(), "{}", stored.display());

    // Same length, other bytes: the registry serves them under the old digest.
    let mut flipped = layer.bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    fs::write(&stored, &flipped).unwrap();
    let root = tempdir();
    let puller = puller(registry.client_config(root.path()), root.path());
    let error = puller.pull(&pushed.reference, &|_| {}).await.unwrap_err();
    assert!(
        matches!(&error, PullError::DigestMismatch { expected, .. } if *expected == layer.digest()),
        "{error}"
    );
    assert!(error.to_string().contains("wrong content"), "{error}");
    assert!(!cached(puller.cache()).contains(&layer.digest()));
    no_temp_files(puller.cache());

    // Shorter: the Content-Length already disagrees with the descriptor.
    fs::write(&stored, &layer.bytes[..100]).unwrap();
    let error = puller.pull(&pushed.reference, &|_| {}).await.unwrap_err();
    assert!(matches!(error, PullError::SizeMismatch { .. }), "{error}");
    assert!(!cached(puller.cache()).contains(&layer.digest()));
    no_temp_files(puller.cache());
}

async fn concurrent_pulls_download_each_blob_once() {
    let registry = TestRegistry::start();
    let layers: Vec<Layer> = (0..3)
        .map(|i| Layer::gzip(&tar_with(&[("blob", &noise(10 + i, 400_000))])))
        .collect();
    let pushed = registry.push_image("banger/shared:1", &layers, "amd64");
    let root = tempdir();
    let puller = puller(registry.client_config(root.path()), root.path());
    let (first, second) = tokio::join!(
        puller.pull(&pushed.reference, &|_| {}),
        puller.pull(&pushed.reference, &|_| {})
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(
        first.stats.downloaded_blobs + second.stats.downloaded_blobs,
        4,
        "{:?} {:?}",
        first.stats,
        second.stats
    );
    assert_eq!(registry.blob_gets(4), 4, "{:?}", registry.requests());
    for (a, b) in first.layers.iter().zip(&second.layers) {
        assert_eq!(decompressed_digest(a), decompressed_digest(b));
    }
    no_temp_files(puller.cache());
}

async fn prune_reports_frees_and_a_later_pull_downloads_again() {
    let registry = TestRegistry::start();
    let layers = vec![
        Layer::gzip(&tar_with(&[("one", &noise(20, 30_000))])),
        Layer::gzip(&tar_with(&[("two", &noise(21, 40_000))])),
    ];
    let pushed = registry.push_image("banger/prune:1", &layers, "amd64");
    let root = tempdir();
    let puller = puller(registry.client_config(root.path()), root.path());
    let cache = puller.cache().clone();

    // A cache that was never made is zero, not an error.
    let empty = cache.prune(false).await.unwrap();
    assert_eq!((empty.bytes, empty.blobs), (0, 0));

    let pulled = puller.pull(&pushed.reference, &|_| {}).await.unwrap();
    let total: u64 = cache
        .list_blobs()
        .unwrap()
        .iter()
        .map(|(_, size)| size)
        .sum();
    let dry = cache.prune(true).await.unwrap();
    assert_eq!((dry.bytes, dry.blobs), (total, 3));
    let dir = cache.dir().display().to_string();
    assert_eq!(
        dry.to_string(),
        format!(
            "would free {} across 3 blob(s) in {dir}",
            banger::size::format_bytes(total)
        )
    );
    assert_eq!(cached(&cache).len(), 3, "a dry run deletes nothing");
    let freed = cache.prune(false).await.unwrap();
    assert_eq!(
        freed.to_string(),
        dry.to_string().replace("would free", "freed")
    );
    assert!(cached(&cache).is_empty());
    assert!(cache.dir().is_dir(), "the cache directory is recreated");

    // The pulled image still reads: its blobs are held open, not looked up by path.
    for layer in &pulled.layers {
        tar_entries(layer);
    }
    let again = puller.pull(&pushed.reference, &|_| {}).await.unwrap();
    assert_eq!(again.stats.downloaded_blobs, 3);
}

async fn a_prune_during_a_download_corrupts_nothing() {
    let server = StaticRegistry::start().await;
    let tar = tar_with(&[("big", &noise(30, 600_000))]);
    let layer = Layer::gzip(&tar);
    let built = server.serve_image("banger/slow", "1", std::slice::from_ref(&layer));
    // The layer's response pauses half way until the test has pruned the cache.
    let gate = Gate::default();
    let half = layer.bytes.len() / 2;
    server.route(
        &format!("/v2/banger/slow/blobs/{}", layer.digest()),
        Route::ok(
            "application/octet-stream",
            Body::Gated {
                first: layer.bytes[..half].to_vec(),
                gate: gate.clone(),
                rest: layer.bytes[half..].to_vec(),
            },
        ),
    );
    let root = tempdir();
    let puller = puller(server.client_config(root.path()), root.path());
    let cache = puller.cache().clone();
    let reference = format!("{}/banger/slow:1", server.host());
    let (pulled, summary) = tokio::join!(puller.pull(&reference, &|_| {}), async {
        gate.reached().await;
        // The config is cached and the layer is half downloaded into tmp/.
        let partial: Vec<_> = fs::read_dir(cache.temp_dir()).unwrap().flatten().collect();
        assert_eq!(partial.len(), 1, "one download in progress");
        let summary = cache.prune(false).await.unwrap();
        gate.open();
        summary
    });
    let pulled = pulled.expect("the pull survives a prune");
    assert_eq!(summary.blobs, 1, "the config was cached before the prune");
    assert_eq!(decompressed_digest(&pulled.layers[0]), Digest::of(&tar));
    // The prune left an empty cache and the pull did not bring back anything from before it
    // (its layer is not cached: it lived in the directory the prune moved aside).
    assert!(cached(&cache).is_empty(), "{:?}", cached(&cache));
    no_temp_files(&cache);
    let parent: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("pruning"))
        .collect();
    assert!(parent.is_empty(), "aside copies left: {parent:?}");
    let _ = built;
}

async fn oversized_manifests_are_refused_while_they_stream() {
    let server = StaticRegistry::start().await;
    let layer = Layer::gzip(&tar_with(&[("f", b"f")]));
    let built = server.serve_image("banger/huge", "1", std::slice::from_ref(&layer));
    // A real manifest padded with whitespace to 5 MiB: valid JSON, far too big.
    let mut padded = built.manifest.clone();
    padded.extend(std::iter::repeat_n(b' ', 5 * 1024 * 1024));
    for body in [Body::Full(padded.clone()), Body::Chunked(padded.clone())] {
        server.route(
            "/v2/banger/huge/manifests/1",
            Route::ok(support::OCI_MANIFEST, body),
        );
        let root = tempdir();
        let puller = puller(server.client_config(root.path()), root.path());
        let error = puller
            .pull(&format!("{}/banger/huge:1", server.host()), &|_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                PullError::ManifestTooLarge {
                    limit_bytes: 4194304,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(server.blob_gets(), 0);
        assert!(cached(puller.cache()).is_empty());
    }
}

async fn blobs_of_the_wrong_size_or_digest_are_refused_and_leave_nothing() {
    let server = StaticRegistry::start().await;
    let tar = tar_with(&[("payload", &noise(40, 100_000))]);
    let layer = Layer::gzip(&tar);
    server.serve_image("banger/bad", "1", std::slice::from_ref(&layer));
    let path = format!("/v2/banger/bad/blobs/{}", layer.digest());
    let mut other = layer.bytes.clone();
    other[10] ^= 1;
    let longer = [layer.bytes.clone(), b"extra bytes".to_vec()].concat();
    let cases: Vec<(Body, &str)> = vec![
        (Body::Full(other), "wrong content"),
        (Body::Full(longer.clone()), "bytes, but its descriptor says"),
        (Body::Chunked(longer), "more than"),
        (
            Body::Truncated {
                declared: layer.bytes.len(),
                bytes: layer.bytes[..1000].to_vec(),
            },
            "failed",
        ),
    ];
    for (body, expected) in cases {
        server.route(&path, Route::ok("application/octet-stream", body));
        let root = tempdir();
        let puller = puller(server.client_config(root.path()), root.path());
        let error = puller
            .pull(&format!("{}/banger/bad:1", server.host()), &|_| {})
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{expected}: {error}");
        assert!(
            !cached(puller.cache()).contains(&layer.digest()),
            "{expected}"
        );
        no_temp_files(puller.cache());
    }
}

async fn hostile_manifests_are_refused_before_any_blob_is_fetched() {
    let server = StaticRegistry::start().await;
    let layer = Layer::gzip(&tar_with(&[("f", b"f")]));
    let built = server.serve_image("banger/hostile", "base", std::slice::from_ref(&layer));
    let config_digest = Digest::of(&built.config);
    let config_size = built.config.len() as u64;
    let good = (
        layer.media_type.clone(),
        layer.digest().to_string(),
        layer.bytes.len() as i64,
    );
    let hex = "a".repeat(64);
    let manifest = |layers: Vec<(String, String, i64)>| {
        support::BuiltImage::manifest_json(
            ManifestFormat::Oci,
            &config_digest,
            config_size,
            &layers,
        )
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            manifest(vec![good.clone(); 300]),
            "has 300 layers; banger accepts at most 256",
        ),
        (
            manifest(vec![(good.0.clone(), good.1.clone(), 40 << 30)]),
            "more than the maximum image size",
        ),
        (
            manifest(vec![(
                good.0.clone(),
                format!("sha512:{}", "b".repeat(128)),
                10,
            )]),
            "only sha256",
        ),
        (
            manifest(vec![(
                good.0.clone(),
                format!("sha256:{}", "G".repeat(64)),
                10,
            )]),
            "not 64 lowercase hex",
        ),
        (
            manifest(vec![(good.0.clone(), "sha256:../../../etc".to_owned(), 10)]),
            "not 64 lowercase hex",
        ),
        (
            manifest(vec![(good.0.clone(), format!("sha256:{hex}"), -5)]),
            "size -5",
        ),
        (
            manifest(vec![(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".to_owned(),
                format!("sha256:{hex}"),
                10,
            )]),
            "foreign",
        ),
        (
            manifest(vec![("text/html".to_owned(), format!("sha256:{hex}"), 10)]),
            "not a container image layer",
        ),
        (
            br#"{"schemaVersion":1,"name":"x","tag":"1","fsLayers":[],"history":[]}"#.to_vec(),
            "schema",
        ),
        (b"<html>not a manifest</html>".to_vec(), "not a manifest"),
    ];
    for (index, (body, expected)) in cases.into_iter().enumerate() {
        let tag = format!("case{index}");
        server.serve_manifest("banger/hostile", &tag, support::OCI_MANIFEST, &body);
        let root = tempdir();
        let puller = puller(server.client_config(root.path()), root.path());
        let before = server.blob_gets();
        let error = puller
            .pull(&format!("{}/banger/hostile:{tag}", server.host()), &|_| {})
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{expected}: {error}");
        assert_eq!(server.blob_gets(), before, "{expected}: a blob was fetched");
        assert!(cached(puller.cache()).is_empty(), "{expected}");
    }

    // A manifest that lies about its own content type, and a digest reference whose manifest
    // is another one.
    server.route(
        "/v2/banger/hostile/manifests/mislabeled",
        Route::ok(support::DOCKER_MANIFEST, Body::Full(built.manifest.clone())),
    );
    let root = tempdir();
    let puller = puller(server.client_config(root.path()), root.path());
    let error = puller
        .pull(
            &format!("{}/banger/hostile:mislabeled", server.host()),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("sent it as"), "{error}");
    let forged = Digest::of(b"another manifest");
    server.route(
        &format!("/v2/banger/hostile/manifests/{forged}"),
        Route::ok(support::OCI_MANIFEST, Body::Full(built.manifest.clone())),
    );
    let error = puller
        .pull(
            &format!("{}/banger/hostile@{forged}", server.host()),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(error, PullError::DigestMismatch { .. }), "{error}");

    // Limits are the configuration's.
    let mut config = server.client_config(root.path());
    config.limits = PullLimits {
        max_layers: 0,
        ..PullLimits::default()
    };
    let strict = Registry::new(config, BlobCache::new(root.path().join("strict"))).unwrap();
    let error = strict
        .pull(&format!("{}/banger/hostile:base", server.host()), &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PullError::TooManyLayers {
                count: 1,
                limit: 0,
                ..
            }
        ),
        "{error}"
    );
}

async fn a_truncated_gzip_layer_is_an_error_when_read_not_a_short_archive() {
    let server = StaticRegistry::start().await;
    let tar = tar_with(&[("payload", &noise(50, 200_000))]);
    let whole = Layer::gzip(&tar);
    // A registry may serve any bytes under their own digest: here the first half of a gzip
    // stream. The download verifies (the digest is of these bytes); reading must not.
    let cut = Layer::raw(
        support::OCI_LAYER_GZIP,
        whole.bytes[..whole.bytes.len() / 2].to_vec(),
        Digest::of(&tar),
    );
    server.serve_image("banger/cut", "1", std::slice::from_ref(&cut));
    let root = tempdir();
    let puller = puller(server.client_config(root.path()), root.path());
    let pulled = puller
        .pull(&format!("{}/banger/cut:1", server.host()), &|_| {})
        .await
        .expect("the blob itself matches its descriptor");
    let mut reader = pulled.layers[0].open().unwrap();
    let error = std::io::copy(&mut reader, &mut std::io::sink()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    let inner = error.get_ref().and_then(|e| e.downcast_ref::<LayerError>());
    assert!(matches!(inner, Some(LayerError::Corrupt { .. })), "{error}");
    // A tar reader sees the error too, not a clean end of archive.
    let mut reader = pulled.layers[0].open().unwrap();
    let mut archive = tar::Archive::new(&mut reader);
    let outcome: Result<Vec<_>, _> = archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry?;
            std::io::copy(&mut entry, &mut std::io::sink())
        })
        .collect();
    assert!(
        outcome.is_err(),
        "a truncated layer read as a complete archive"
    );
}
