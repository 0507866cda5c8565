//! Image references, normalised as docker normalises them (`debian` is
//! `docker.io/library/debian:latest`, `index.docker.io/x` is `docker.io/x`), and the endpoint
//! a reference is actually pulled from once mirrors are applied.

use std::fmt;

use oci_client::Reference;

use super::config::RegistryConfig;
use super::digest::Digest;
use super::error::PullError;

/// A parsed, normalised image reference. Its `Display` is the canonical form
/// (`docker.io/library/debian:bookworm`, `127.0.0.1:5000/x/y@sha256:…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    inner: Reference,
    digest: Option<Digest>,
}

impl ImageReference {
    /// Parses a reference the way `docker pull` does. A digest must be sha256.
    pub fn parse(text: &str) -> Result<ImageReference, PullError> {
        let invalid = |reason: String| PullError::InvalidReference {
            reference: text.chars().take(300).collect(),
            reason,
        };
        if text.trim() != text || text.is_empty() {
            return Err(invalid("it is empty or has surrounding spaces".to_owned()));
        }
        let inner = Reference::try_from(text).map_err(|e| invalid(e.to_string()))?;
        let digest = match inner.digest() {
            Some(digest) => Some(Digest::parse(digest).map_err(|e| invalid(e.to_string()))?),
            None => None,
        };
        if inner.registry().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("registry host names are lowercase".to_owned()));
        }
        Ok(ImageReference { inner, digest })
    }

    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// `library/debian`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What the manifest request names: the digest when there is one (a tag beside it is only
    /// informative, as in docker), else the tag.
    pub(crate) fn manifest_selector(&self) -> String {
        match (&self.digest, self.inner.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_owned(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// Where this reference is pulled from under `config`: the mirror of its registry when one
    /// is configured, and over which scheme.
    pub(crate) fn endpoint(&self, config: &RegistryConfig) -> Endpoint {
        let mirror = config
            .mirrors
            .iter()
            .find(|(registry, _)| same_registry(registry, self.registry()))
            .map(|(_, mirror)| mirror.trim().to_ascii_lowercase());
        let reference = match &mirror {
            Some(mirror) => match (&self.digest, self.inner.tag()) {
                (Some(digest), _) => Reference::with_digest(
                    mirror.clone(),
                    self.repository().to_owned(),
                    digest.to_string(),
                ),
                (None, tag) => Reference::with_tag(
                    mirror.clone(),
                    self.repository().to_owned(),
                    tag.unwrap_or("latest").to_owned(),
                ),
            },
            None => self.inner.clone(),
        };
        // The host requests go to: Docker Hub's API lives on another name than its references.
        let host = reference.resolve_registry().to_owned();
        let insecure = config
            .insecure
            .iter()
            .any(|entry| same_registry(entry, reference.registry()));
        Endpoint {
            registry: reference.registry().to_owned(),
            host,
            insecure,
            reference,
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

/// Where requests for one pull go.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// The registry as references name it (`docker.io`, or the mirror): credentials and
    /// `insecure` entries are looked up by it.
    pub registry: String,
    /// The host requests go to (`index.docker.io` for `docker.io`).
    pub host: String,
    /// Plain HTTP (the user listed the registry as insecure).
    pub insecure: bool,
    /// The reference rewritten onto this endpoint, for oci-client.
    pub reference: Reference,
}

impl Endpoint {
    pub fn scheme(&self) -> &'static str {
        if self.insecure { "http" } else { "https" }
    }

    pub fn manifest_url(&self, selector: &str) -> String {
        format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme(),
            self.host,
            self.reference.repository(),
            selector
        )
    }
}

/// Docker Hub has several names; everything else compares as written, case-insensitively.
pub(crate) fn canonical_registry(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    let name = name
        .strip_prefix("https://")
        .or_else(|| name.strip_prefix("http://"))
        .unwrap_or(&name);
    let host = name.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        other => other.to_owned(),
    }
}

fn same_registry(a: &str, b: &str) -> bool {
    canonical_registry(a) == canonical_registry(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn normalises_docker_hub_short_names() {
        for (text, canonical) in [
            ("debian", "docker.io/library/debian:latest"),
            ("debian:bookworm", "docker.io/library/debian:bookworm"),
            (
                "docker.io/library/debian:bookworm",
                "docker.io/library/debian:bookworm",
            ),
            ("docker.io/debian", "docker.io/library/debian:latest"),
            (
                "index.docker.io/library/debian:12",
                "docker.io/library/debian:12",
            ),
            ("user/tool:1.0", "docker.io/user/tool:1.0"),
            ("localhost:5000/x/y:tag", "localhost:5000/x/y:tag"),
            ("localhost/x", "localhost/x:latest"),
            ("ghcr.io/org/img", "ghcr.io/org/img:latest"),
        ] {
            assert_eq!(parse(text).to_string(), canonical, "{text}");
        }
        let hub = parse("debian");
        assert_eq!(hub.registry(), "docker.io");
        assert_eq!(hub.repository(), "library/debian");
        assert_eq!(
            hub.endpoint(&RegistryConfig::default()).host,
            "index.docker.io"
        );
    }

    #[test]
    fn digests_must_be_sha256_and_win_over_tags() {
        let hex = "a".repeat(64);
        let by_digest = parse(&format!("busybox@sha256:{hex}"));
        assert_eq!(by_digest.manifest_selector(), format!("sha256:{hex}"));
        let both = parse(&format!("busybox:1@sha256:{hex}"));
        assert_eq!(both.manifest_selector(), format!("sha256:{hex}"));
        for bad in [
            format!("busybox@sha512:{}", "a".repeat(128)),
            format!("busybox@sha256:{}", "A".repeat(64)),
            "busybox@sha256:abc".to_owned(),
            "Busy/Box".to_owned(),
            "".to_owned(),
            " debian".to_owned(),
            "docker.io/".to_owned(),
        ] {
            let error = ImageReference::parse(&bad).unwrap_err();
            assert!(
                matches!(error, PullError::InvalidReference { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn mirrors_rewrite_the_host_and_keep_the_path() {
        let mut config = RegistryConfig::default();
        config
            .mirrors
            .insert("docker.io".to_owned(), "127.0.0.1:5001".to_owned());
        config.insecure.push("127.0.0.1:5001".to_owned());
        let endpoint = parse("debian:bookworm").endpoint(&config);
        assert_eq!(endpoint.registry, "127.0.0.1:5001");
        assert!(endpoint.insecure);
        assert_eq!(
            endpoint.manifest_url("bookworm"),
            "http://127.0.0.1:5001/v2/library/debian/manifests/bookworm"
        );
        // Other registries are untouched, and reached over HTTPS.
        let other = parse("ghcr.io/a/b:1").endpoint(&config);
        assert_eq!(
            other.manifest_url("1"),
            "https://ghcr.io/v2/a/b/manifests/1"
        );
        // A mirror keyed by another name of Docker Hub applies as well.
        let mut config = RegistryConfig::default();
        config.mirrors.insert(
            "https://index.docker.io/v1/".to_owned(),
            "m.example".to_owned(),
        );
        assert_eq!(parse("debian").endpoint(&config).host, "m.example");
    }
}
