//! Manifests and indexes: which media types banger pulls, how a body is recognised and
//! checked, and how an index entry is picked for a platform.
//!
//! Parsing is banger's own (small serde structs) rather than oci-client's types, so that every
//! check a hostile registry could dodge is explicit here: the body's media type must agree with
//! the `Content-Type` it came with, digests must be sha256, sizes non-negative, layer media
//! types one of the six container layer types, and foreign layers are refused. A descriptor's
//! `urls` are never read: blobs come from the registry (or its mirror) only, never from
//! wherever a manifest points.

use serde::Deserialize;

use super::config::{Platform, PullLimits};
use super::digest::Digest;
use super::error::PullError;
use super::layer::Compression;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// The `Accept` header of a manifest request: the four kinds banger understands.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The compression a layer media type declares, or why it is refused.
pub fn layer_compression(media_type: &str) -> Result<Compression, &'static str> {
    match media_type {
        OCI_LAYER | DOCKER_LAYER => Ok(Compression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD | DOCKER_LAYER_ZSTD => Ok(Compression::Zstd),
        t if t.contains("nondistributable") || t.contains("foreign") => Err(
            "foreign (non-distributable) layers live outside the registry; banger does not \
             fetch them",
        ),
        _ => Err("not a container image layer (tar, tar+gzip or tar+zstd)"),
    }
}

/// A blob a manifest names, after its checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// An image manifest that passed every check against the limits.
#[derive(Clone, Debug)]
pub struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<(Descriptor, Compression)>,
}

/// One entry of an index, kept raw: only the entry picked is checked.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// What a manifest body turned out to be.
#[derive(Debug)]
pub enum Parsed {
    Image(ImageManifest),
    Index(Vec<IndexEntry>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: i64,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
}

/// Parses and checks a manifest or index body. `content_type` is the response's header
/// (parameters stripped); `reference` only names the image in errors.
pub fn parse(
    body: &[u8],
    content_type: Option<&str>,
    reference: &str,
    limits: &PullLimits,
) -> Result<Parsed, PullError> {
    let invalid = |reason: String| PullError::InvalidManifest {
        reference: reference.to_owned(),
        reason,
    };
    let unsupported = |media_type: &str, reason: &'static str| PullError::UnsupportedManifest {
        reference: reference.to_owned(),
        media_type: media_type.to_owned(),
        reason,
    };
    // A header that says only "JSON" (some registries, static file servers) carries no kind.
    let header = content_type
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty() && t != "application/json" && t != "text/plain");
    if let Some(header) = header.as_deref()
        && DOCKER_SCHEMA1.contains(&header)
    {
        return Err(unsupported(
            header,
            "Docker schema 1 manifests were retired in 2017; push the image again with a \
             current docker or skopeo",
        ));
    }
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a manifest: {e}")))?;
    if raw.schema_version != 2 {
        return Err(unsupported(
            raw.media_type.as_deref().unwrap_or("schema 1 manifest"),
            "only schema version 2 manifests (OCI, Docker v2 schema 2) are supported",
        ));
    }
    let kind = match (header.as_deref(), raw.media_type.as_deref()) {
        (Some(header), Some(body)) if header != body => {
            return Err(invalid(format!(
                "the registry sent it as {header} but the body says {body}"
            )));
        }
        (_, Some(kind)) | (Some(kind), None) => kind.to_owned(),
        // OCI makes mediaType optional; the shape tells an index from a manifest.
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    };
    match kind.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            let entries = raw
                .manifests
                .ok_or_else(|| invalid("an index without \"manifests\"".to_owned()))?;
            Ok(Parsed::Index(entries))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw
                .config
                .ok_or_else(|| invalid("a manifest without \"config\"".to_owned()))?;
            let layers = raw.layers.unwrap_or_default();
            check_image(reference, config, layers, limits).map(Parsed::Image)
        }
        other if DOCKER_SCHEMA1.contains(&other) => Err(unsupported(
            other,
            "Docker schema 1 manifests were retired in 2017; push the image again with a \
             current docker or skopeo",
        )),
        other => Err(unsupported(
            other,
            "not a container image (an OCI artifact, a Helm chart…?)",
        )),
    }
}

fn check_image(
    reference: &str,
    config: RawDescriptor,
    layers: Vec<RawDescriptor>,
    limits: &PullLimits,
) -> Result<ImageManifest, PullError> {
    if layers.len() > limits.max_layers {
        return Err(PullError::TooManyLayers {
            reference: reference.to_owned(),
            count: layers.len(),
            limit: limits.max_layers,
        });
    }
    let config = check_descriptor(reference, "the config", config)?;
    match config.media_type.as_str() {
        OCI_CONFIG | DOCKER_CONFIG => {}
        other => {
            return Err(PullError::UnsupportedMediaType {
                reference: reference.to_owned(),
                what: "the config".to_owned(),
                media_type: other.to_owned(),
                reason: "not a container image config (this is an OCI artifact, not an image)",
            });
        }
    }
    if config.size > limits.max_config_bytes {
        return Err(PullError::InvalidManifest {
            reference: reference.to_owned(),
            reason: format!(
                "its config is {} bytes, more than the {} banger reads",
                config.size, limits.max_config_bytes
            ),
        });
    }
    let mut declared = config.size;
    let mut checked = Vec::with_capacity(layers.len());
    for (index, layer) in layers.into_iter().enumerate() {
        let what = format!("layer {index}");
        let layer = check_descriptor(reference, &what, layer)?;
        let compression = layer_compression(&layer.media_type).map_err(|reason| {
            PullError::UnsupportedMediaType {
                reference: reference.to_owned(),
                what: what.clone(),
                media_type: layer.media_type.clone(),
                reason,
            }
        })?;
        declared = declared.saturating_add(layer.size);
        checked.push((layer, compression));
    }
    if declared > limits.max_image_bytes {
        return Err(PullError::ImageTooLarge {
            reference: reference.to_owned(),
            declared_bytes: declared,
            limit_bytes: limits.max_image_bytes,
        });
    }
    Ok(ImageManifest {
        config,
        layers: checked,
    })
}

fn check_descriptor(
    reference: &str,
    what: &str,
    raw: RawDescriptor,
) -> Result<Descriptor, PullError> {
    let invalid = |reason: String| PullError::InvalidManifest {
        reference: reference.to_owned(),
        reason: format!("{what}: {reason}"),
    };
    let digest = Digest::parse(&raw.digest).map_err(|source| PullError::BadDigest {
        reference: reference.to_owned(),
        what: what.to_owned(),
        source,
    })?;
    let size = u64::try_from(raw.size).map_err(|_| invalid(format!("size {}", raw.size)))?;
    let media_type = raw
        .media_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("no mediaType".to_owned()))?;
    Ok(Descriptor {
        media_type,
        digest,
        size,
    })
}

/// Checks the index entry picked for a pull: it must name an image manifest by a sha256
/// digest with a sane size.
pub fn check_entry(reference: &str, entry: &IndexEntry) -> Result<Descriptor, PullError> {
    let what = format!("the index entry for {}", describe(entry.platform.as_ref()));
    let media_type = entry.media_type.clone().unwrap_or_default();
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {}
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            return Err(PullError::UnsupportedManifest {
                reference: reference.to_owned(),
                media_type,
                reason: "an index nested in an index; banger pulls one level of index only",
            });
        }
        _ => {
            return Err(PullError::UnsupportedMediaType {
                reference: reference.to_owned(),
                what,
                media_type,
                reason: "not an image manifest",
            });
        }
    }
    check_descriptor(
        reference,
        &what,
        RawDescriptor {
            media_type: Some(media_type),
            digest: entry.digest.clone(),
            size: entry.size,
        },
    )
}

fn describe(platform: Option<&Platform>) -> String {
    match platform {
        Some(platform) => platform.to_string(),
        None => "(no platform)".to_owned(),
    }
}

/// Picks the entry of an index that runs on `wanted`, by containerd's rules: same OS and
/// architecture (after normalising spellings); the same variant is best; for `arm`, an older
/// variant runs on a newer CPU (a `v7` host takes `v6`, then `v5`); for `amd64`, a
/// microarchitecture level at or below the wanted one (`v1` only, unless asked for more).
/// Ties go to the entry listed first. `Err` carries every platform the index offers.
pub fn select_platform<'a>(
    entries: &'a [IndexEntry],
    wanted: &Platform,
) -> Result<&'a IndexEntry, String> {
    let wanted = wanted.normalized();
    let rank = |entry: &IndexEntry| -> Option<u32> {
        let platform = entry.platform.as_ref()?.normalized();
        if platform.os != wanted.os || platform.architecture != wanted.architecture {
            return None;
        }
        if platform.variant == wanted.variant {
            return Some(0);
        }
        let level = |variant: Option<&str>| -> Option<u32> {
            match variant {
                None => Some(1),
                Some(v) => v.strip_prefix('v')?.parse().ok(),
            }
        };
        match wanted.architecture.as_str() {
            "arm" | "amd64" => {
                let have = level(platform.variant.as_deref())?;
                let want = level(wanted.variant.as_deref())?;
                (have < want).then(|| want - have)
            }
            _ => None,
        }
    };
    entries
        .iter()
        .filter_map(|entry| rank(entry).map(|r| (r, entry)))
        // min_by_key keeps the first of equal keys: index order breaks ties.
        .min_by_key(|(r, _)| *r)
        .map(|(_, entry)| entry)
        .ok_or_else(|| {
            let mut offered: Vec<String> = Vec::new();
            for entry in entries {
                let text = describe(entry.platform.as_ref());
                if !offered.contains(&text) {
                    offered.push(text);
                }
            }
            if offered.is_empty() {
                "nothing (the index is empty)".to_owned()
            } else {
                offered.join(", ")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn entry(arch: &str, variant: Option<&str>, c: char) -> IndexEntry {
        IndexEntry {
            media_type: Some(OCI_MANIFEST.to_owned()),
            digest: format!("sha256:{}", hex(c)),
            size: 100,
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    fn manifest(layers: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
               "config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:{}","size":10}},
               "layers":[{layers}]}}"#,
            hex('c')
        )
    }

    fn layer(media_type: &str, digest: &str, size: i64) -> String {
        format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
    }

    #[test]
    fn picks_linux_and_the_host_architecture() {
        let entries = vec![
            entry("arm64", Some("v8"), 'a'),
            entry("amd64", None, 'b'),
            entry("amd64", None, 'c'),
        ];
        let picked = select_platform(&entries, &platform("x86_64", None)).unwrap();
        assert_eq!(picked.digest, format!("sha256:{}", hex('b')));
        let arm = select_platform(&entries, &platform("aarch64", None)).unwrap();
        assert_eq!(arm.digest, format!("sha256:{}", hex('a')));
    }

    #[test]
    fn variants_follow_containerd() {
        let arm = vec![entry("arm", Some("v5"), 'a'), entry("arm", Some("v6"), 'b')];
        // A v7 host runs v6 before v5; a v6 host runs v6.
        assert_eq!(
            select_platform(&arm, &platform("arm", Some("v7")))
                .unwrap()
                .digest,
            arm[1].digest
        );
        assert!(select_platform(&arm, &platform("arm", Some("v5"))).is_ok());
        assert!(select_platform(&arm[1..], &platform("arm", Some("v5"))).is_err());
        // amd64: only the baseline unless a higher level is asked for.
        let amd = vec![
            entry("amd64", Some("v3"), 'c'),
            entry("amd64", Some("v2"), 'd'),
        ];
        let offered = select_platform(&amd, &platform("amd64", None)).unwrap_err();
        assert_eq!(offered, "linux/amd64/v3, linux/amd64/v2");
        assert_eq!(
            select_platform(&amd, &platform("amd64", Some("v3")))
                .unwrap()
                .digest,
            amd[0].digest
        );
        assert_eq!(
            select_platform(&amd, &platform("amd64", Some("v2")))
                .unwrap()
                .digest,
            amd[1].digest
        );
        // arm64/v8 and arm64 are the same platform.
        let v8 = vec![entry("arm64", None, 'e')];
        assert!(select_platform(&v8, &platform("arm64", Some("v8"))).is_ok());
    }

    #[test]
    fn no_fit_lists_what_the_index_has() {
        let mut windows = entry("amd64", None, 'f');
        windows.platform.as_mut().unwrap().os = "windows".into();
        let mut bare = entry("amd64", None, 'a');
        bare.platform = None;
        let entries = vec![entry("arm64", Some("v8"), 'a'), windows, bare];
        let offered = select_platform(&entries, &platform("amd64", None)).unwrap_err();
        assert_eq!(offered, "linux/arm64/v8, windows/amd64, (no platform)");
    }

    #[test]
    fn parses_images_and_refuses_hostile_descriptors() {
        let limits = PullLimits::default();
        let good = manifest(&layer(OCI_LAYER_GZIP, &format!("sha256:{}", hex('d')), 5));
        let Parsed::Image(image) =
            parse(good.as_bytes(), Some(OCI_MANIFEST), "r", &limits).unwrap()
        else {
            panic!("not an image")
        };
        assert_eq!(image.layers[0].1, Compression::Gzip);

        let cases = [
            (
                layer(OCI_LAYER_GZIP, &format!("sha512:{}", "a".repeat(128)), 5),
                "sha512",
            ),
            (
                layer(OCI_LAYER_GZIP, &format!("sha256:{}", "Z".repeat(64)), 5),
                "hex",
            ),
            (
                layer(OCI_LAYER_GZIP, &format!("sha256:{}", hex('d')), -1),
                "size -1",
            ),
            (
                layer(
                    "application/vnd.wasm.content.layer.v1+wasm",
                    &format!("sha256:{}", hex('d')),
                    5,
                ),
                "not a container image layer",
            ),
            (
                layer(
                    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                    &format!("sha256:{}", hex('d')),
                    5,
                ),
                "foreign",
            ),
        ];
        for (layer, expected) in cases {
            let body = manifest(&layer);
            let error = parse(body.as_bytes(), None, "r", &limits)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn enforces_layer_and_size_limits() {
        let limits = PullLimits {
            max_layers: 2,
            max_image_bytes: 100,
            ..PullLimits::default()
        };
        let one = layer(OCI_LAYER, &format!("sha256:{}", hex('d')), 50);
        let three = manifest(&[one.clone(), one.clone(), one.clone()].join(","));
        assert!(matches!(
            parse(three.as_bytes(), None, "r", &limits),
            Err(PullError::TooManyLayers {
                count: 3,
                limit: 2,
                ..
            })
        ));
        // 10 (config) + 50 + 50 > 100.
        let two = manifest(&[one.clone(), one].join(","));
        assert!(matches!(
            parse(two.as_bytes(), None, "r", &limits),
            Err(PullError::ImageTooLarge {
                declared_bytes: 110,
                ..
            })
        ));
    }

    #[test]
    fn media_types_must_agree_and_be_known() {
        let limits = PullLimits::default();
        let body = manifest("");
        let error = parse(body.as_bytes(), Some(DOCKER_MANIFEST), "r", &limits).unwrap_err();
        assert!(error.to_string().contains("sent it as"), "{error}");
        // application/json carries no kind; the body decides.
        assert!(
            parse(
                body.as_bytes(),
                Some("application/json; charset=utf-8"),
                "r",
                &limits
            )
            .is_ok()
        );
        let schema1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let error = parse(schema1.as_bytes(), Some(DOCKER_SCHEMA1[1]), "r", &limits).unwrap_err();
        assert!(error.to_string().contains("schema 1"), "{error}");
        let artifact = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:{}","size":1}},"layers":[]}}"#,
            hex('a')
        );
        let error = parse(artifact.as_bytes(), None, "r", &limits).unwrap_err();
        assert!(error.to_string().contains("artifact"), "{error}");
        let index = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse(index.as_bytes(), None, "r", &limits),
            Ok(Parsed::Index(entries)) if entries.is_empty()
        ));
        assert!(parse(b"[1,2]", None, "r", &limits).is_err());
    }
}
