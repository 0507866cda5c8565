//! The image catalog: names `banger image pull NAME` (and `vm create --image NAME`) knows
//! without a full reference. It is JSON compiled into banger (`catalog.json` beside this
//! file); `[images] catalog = PATH` in config.toml adds entries from a file of the same format
//! (an entry of the same name replaces the embedded one).
//!
//! ```json
//! {
//!   "format": 1,
//!   "default_image": "debian",             // what `vm create` / `vm run` boot without --image
//!   "default_kernel": "debian-12-cloud",   // the kernel of images pulled by raw OCI reference
//!   "images": [
//!     {"name": "debian", "description": "…", "kernel": "debian-12-cloud",
//!      "source": {"kind": "oci", "reference": "docker.io/library/debian:bookworm"}},
//!     {"name": "dev", "description": "…", "kernel": "debian-12-cloud",
//!      "source": {"kind": "bundle", "url": "https://…/dev-0123456789abcdef.tar.zst",
//!                 "sha256": "<64 hex>", "size_bytes": 123456789}}
//!   ]
//! }
//! ```
//!
//! - `oci` entries are pulled like any reference (through mirrors, credentials, the blob
//!   cache), flattened, and get the agent (see [`super::agent`]).
//! - `bundle` entries are zstd tarballs of a finished image, made by [`super::bundle::pack`]:
//!   `manifest.json` then `rootfs.ext4`, named by content (`<name>-<16 hex of sha256>.tar.zst`,
//!   so a new build never overwrites one a catalog still names). The tarball's sha256 is checked
//!   while it streams in, before anything is published; plain `http` is allowed because the
//!   digest, not the channel, is what is trusted.
//! - `kernel` names an entry of the kernel catalog (the image boots with it unless `vm create
//!   --kernel` says otherwise). `default_kernel` is what an image pulled by a raw OCI
//!   reference boots with (`image pull REF --kernel NAME` overrides it): such an image is a
//!   container image, and the agent-as-init boot contract makes it boot on banger's default
//!   kernel.
//!
//! Invariants: names follow the image name rules (`operations::names`), are unique, and each
//! entry has exactly one source; a catalog that breaks them is refused as a whole, naming the
//! entry.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::operations::names;

/// The catalog compiled into this build.
pub const EMBEDDED: &str = include_str!("catalog.json");

/// The format this build reads.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub format: u32,
    pub default_image: String,
    pub default_kernel: String,
    pub images: Vec<CatalogEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The kernel catalog entry the image boots with.
    pub kernel: String,
    pub source: CatalogSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CatalogSource {
    /// An image in an OCI registry.
    Oci { reference: String },
    /// A finished image, as a zstd tarball.
    Bundle {
        url: String,
        /// sha256 of the tarball, hex.
        sha256: String,
        /// Its length in bytes.
        size_bytes: u64,
    },
}

/// A catalog file over the embedded one: every field optional but the format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extra {
    format: u32,
    #[serde(default)]
    default_image: Option<String>,
    #[serde(default)]
    default_kernel: Option<String>,
    #[serde(default)]
    images: Vec<CatalogEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read the image catalog {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the image catalog {origin} is not valid: {reason}")]
    Invalid { origin: String, reason: String },
}

impl Catalog {
    /// The embedded catalog.
    pub fn embedded() -> Catalog {
        Catalog::parse(EMBEDDED, "embedded in banger").expect("the embedded catalog is valid")
    }

    /// The embedded catalog with `extra`'s entries over it (when a file is configured).
    pub fn load(extra: Option<&Path>) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::embedded();
        let Some(path) = extra else {
            return Ok(catalog);
        };
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: origin.clone(),
            source,
        })?;
        let invalid = |reason: String| CatalogError::Invalid {
            origin: origin.clone(),
            reason,
        };
        let extra: Extra = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if extra.format != FORMAT {
            return Err(invalid(format!(
                "format {} (this banger reads format {FORMAT})",
                extra.format
            )));
        }
        if let Some(image) = extra.default_image {
            catalog.default_image = image;
        }
        if let Some(kernel) = extra.default_kernel {
            catalog.default_kernel = kernel;
        }
        for entry in extra.images {
            catalog.images.retain(|e| e.name != entry.name);
            catalog.images.push(entry);
        }
        catalog.check().map_err(invalid)?;
        Ok(catalog)
    }

    /// Parses and checks a whole catalog.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let invalid = |reason: String| CatalogError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        let catalog: Catalog = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if catalog.format != FORMAT {
            return Err(invalid(format!(
                "format {} (this banger reads format {FORMAT})",
                catalog.format
            )));
        }
        catalog.check().map_err(invalid)?;
        Ok(catalog)
    }

    fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for entry in &self.images {
            names::validate("image", &entry.name).map_err(|e| format!("entry: {e}"))?;
            if !seen.insert(entry.name.as_str()) {
                return Err(format!("entry {} appears twice", entry.name));
            }
            names::validate("kernel", &entry.kernel)
                .map_err(|e| format!("entry {}: {e}", entry.name))?;
            match &entry.source {
                CatalogSource::Oci { reference } => {
                    crate::registry::ImageReference::parse(reference)
                        .map_err(|e| format!("entry {}: {e}", entry.name))?;
                }
                CatalogSource::Bundle { url, sha256, .. } => {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(format!(
                            "entry {}: bundle url {url:?} is not an http(s) URL",
                            entry.name
                        ));
                    }
                    if sha256.len() != 64
                        || !sha256
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    {
                        return Err(format!(
                            "entry {}: sha256 {sha256:?} is not 64 lowercase hex digits",
                            entry.name
                        ));
                    }
                }
            }
        }
        names::validate("image", &self.default_image).map_err(|e| format!("default_image: {e}"))?;
        names::validate("kernel", &self.default_kernel)
            .map_err(|e| format!("default_kernel: {e}"))?;
        Ok(())
    }

    pub fn find(&self, name: &str) -> Option<&CatalogEntry> {
        self.images.iter().find(|entry| entry.name == name)
    }
}

impl CatalogSource {
    /// One line for tables: `oci:REF` or `bundle:URL`.
    pub fn describe(&self) -> String {
        match self {
            CatalogSource::Oci { reference } => format!("oci:{reference}"),
            CatalogSource::Bundle { url, .. } => format!("bundle:{url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalog_has_debian_as_its_default() {
        let catalog = Catalog::embedded();
        let debian = catalog
            .find(&catalog.default_image)
            .expect("the default image");
        assert_eq!(debian.kernel, "debian-12-cloud");
        assert_eq!(catalog.default_kernel, "debian-12-cloud");
        assert_eq!(
            debian.source,
            CatalogSource::Oci {
                reference: "docker.io/library/debian:bookworm".into()
            }
        );
    }

    #[test]
    fn an_extra_file_adds_and_replaces_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        std::fs::write(
            &path,
            r#"{"format":1,"default_kernel":"k2","images":[
                {"name":"debian","kernel":"k","source":{"kind":"oci","reference":"127.0.0.1:5000/debian:12"}},
                {"name":"dev","kernel":"k","source":{"kind":"bundle","url":"http://127.0.0.1:1/dev-0123456789abcdef.tar.zst",
                 "sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","size_bytes":5}}]}"#,
        )
        .unwrap();
        let catalog = Catalog::load(Some(&path)).unwrap();
        assert_eq!(catalog.default_image, "debian");
        assert_eq!(catalog.default_kernel, "k2");
        assert_eq!(catalog.images.len(), 2);
        assert_eq!(
            catalog.find("debian").unwrap().source.describe(),
            "oci:127.0.0.1:5000/debian:12"
        );
        assert!(matches!(
            catalog.find("dev").unwrap().source,
            CatalogSource::Bundle { size_bytes: 5, .. }
        ));
    }

    #[test]
    fn bad_catalogs_are_refused_naming_the_entry() {
        let entry = |name: &str, source: &str| {
            format!(
                r#"{{"format":1,"default_image":"debian","default_kernel":"k","images":[{{"name":"{name}","kernel":"k","source":{source}}}]}}"#
            )
        };
        let oci = r#"{"kind":"oci","reference":"debian:12"}"#;
        for (text, needle) in [
            (entry("../x", oci), "image name"),
            (
                entry("a", r#"{"kind":"oci","reference":"a b/c"}"#),
                "entry a",
            ),
            (
                entry(
                    "a",
                    r#"{"kind":"bundle","url":"ftp://x","sha256":"00","size_bytes":1}"#,
                ),
                "http(s)",
            ),
            (
                entry(
                    "a",
                    r#"{"kind":"bundle","url":"https://x","sha256":"00","size_bytes":1}"#,
                ),
                "64 lowercase",
            ),
            (
                entry("a", r#"{"kind":"oci","reference":"x","extra":1}"#),
                "unknown field",
            ),
            (
                entry("a", r#"{"kind":"git","reference":"x"}"#),
                "unknown variant",
            ),
            (
                r#"{"format":2,"default_image":"a","default_kernel":"k","images":[]}"#.into(),
                "format 2",
            ),
        ] {
            let error = Catalog::parse(&text, "test").unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
        let twice = format!(
            r#"{{"format":1,"default_image":"a","default_kernel":"k","images":[{e},{e}]}}"#,
            e = r#"{"name":"a","kernel":"k","source":{"kind":"oci","reference":"a"}}"#
        );
        assert!(
            Catalog::parse(&twice, "t")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
