//! The kernel catalog: the kernels `banger kernel pull NAME` can fetch, compiled into banger
//! as JSON (`src/kernel/catalog.json`), optionally extended by a file the user names
//! (`[kernels] catalog = "PATH"` in config.toml), with its URLs rewritten by mirrors.
//!
//! ```json
//! {
//!   "format": 1,
//!   "kernels": [
//!     { "name": "debian-12-cloud", "kind": "debian_package",
//!       "package": "linux-image-6.1.0-57-cloud-amd64", "version": "6.1.192-3",
//!       "url": "https://snapshot.debian.org/file/<sha1 of the .deb>",
//!       "sha256": "<sha256 of the .deb>", "size_bytes": 26705532,
//!       "description": "…" },
//!     { "name": "debian-12-cloud-bundle", "kind": "bundle",
//!       "version": "6.1.0-57-cloud-amd64", "arch": "x86_64",
//!       "tarball_url": "https://…/debian-12-cloud-<sha256 prefix>.tar.zst",
//!       "tarball_sha256": "<sha256 of the tarball>", "size_bytes": 31000000,
//!       "description": "…" }
//!   ]
//! }
//! ```
//!
//! Two kinds of entries:
//! - `debian_package` ([`DebianKernelEntry`]): a `linux-image-*` package pinned by its
//!   sha256, downloaded from the Debian archive's snapshot service (`/file/<sha1>`), which
//!   keeps every file the archive ever published, so the pin outlives the package's time on
//!   the mirrors. `kernel pull` converts it into a bundle on the user's host
//!   ([`super::bundle_from_debian_entry`]).
//! - `bundle` ([`CatalogEntry`], what `tools/kernel-bundle --catalog-entry` prints): a
//!   bundle already made, as a zstd tarball ([`super::unpack_bundle`]).
//!
//! `size_bytes` is the download's size (the .deb or the tarball): a download is refused as
//! soon as it grows past it, and one that ends short is truncated. Every URL is absolute
//! `http://` or `https://`; the sha256 is what makes a download trustworthy, not the channel.
//!
//! Mirrors ([`Mirrors`], `[kernels]` in config.toml) rewrite URLs for offline users and tests:
//! the longest matching prefix of `[kernels.mirrors]` is replaced by its value; otherwise
//! `mirror` replaces the URL's scheme and host (keeping its path). Nothing else changes: the
//! pinned sha256 still has to match.
//!
//! Invariants: a catalog that parses has unique valid names, lowercase hex sha256 of 64
//! digits, non-zero sizes and absolute http(s) URLs; the embedded catalog always parses (a
//! unit test holds it to that).

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::KernelError;
use super::bundle::DebianKernelEntry;
use super::tarball::CatalogEntry;

/// The catalog format this banger reads; a file of another number is refused.
pub const FORMAT: u32 = 1;

/// The catalog compiled into banger.
pub const EMBEDDED: &str = include_str!("catalog.json");

/// The kernel a VM boots when neither its request nor its image names one: the Debian 12
/// cloud kernel of the embedded catalog (`[kernels] default` changes it).
pub const DEFAULT_KERNEL: &str = "debian-12-cloud";

/// One kernel of the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogKernel {
    /// A bundle tarball.
    Bundle(CatalogEntry),
    /// A Debian kernel package, converted on the host.
    DebianPackage(DebianKernelEntry),
}

/// What a catalog entry is, as its `kind` says it.
pub const KIND_BUNDLE: &str = "bundle";
pub const KIND_DEBIAN_PACKAGE: &str = "debian_package";

impl CatalogKernel {
    pub fn name(&self) -> &str {
        match self {
            CatalogKernel::Bundle(entry) => &entry.name,
            CatalogKernel::DebianPackage(entry) => &entry.name,
        }
    }

    /// `bundle` or `debian_package`.
    pub fn kind(&self) -> &'static str {
        match self {
            CatalogKernel::Bundle(_) => KIND_BUNDLE,
            CatalogKernel::DebianPackage(_) => KIND_DEBIAN_PACKAGE,
        }
    }

    /// Where the download is.
    pub fn url(&self) -> &str {
        match self {
            CatalogKernel::Bundle(entry) => &entry.tarball_url,
            CatalogKernel::DebianPackage(entry) => &entry.url,
        }
    }

    /// The download's pinned sha256.
    pub fn sha256(&self) -> &str {
        match self {
            CatalogKernel::Bundle(entry) => &entry.tarball_sha256,
            CatalogKernel::DebianPackage(entry) => &entry.sha256,
        }
    }

    /// The download's size.
    pub fn size_bytes(&self) -> u64 {
        match self {
            CatalogKernel::Bundle(entry) => entry.size_bytes,
            CatalogKernel::DebianPackage(entry) => entry.size_bytes,
        }
    }

    /// The kernel release the guest will report (`uname -r`): a bundle says it; a Debian
    /// kernel package is named after it (`linux-image-<release>`).
    pub fn release(&self) -> &str {
        match self {
            CatalogKernel::Bundle(entry) => &entry.version,
            CatalogKernel::DebianPackage(entry) => entry
                .package
                .strip_prefix("linux-image-")
                .unwrap_or(&entry.package),
        }
    }

    /// The guest architecture, as `uname -m` says it.
    pub fn arch(&self) -> &str {
        match self {
            CatalogKernel::Bundle(entry) => &entry.arch,
            // Only amd64 packages are accepted (see `check`).
            CatalogKernel::DebianPackage(_) => "x86_64",
        }
    }

    pub fn description(&self) -> &str {
        match self {
            CatalogKernel::Bundle(entry) => &entry.description,
            CatalogKernel::DebianPackage(entry) => &entry.description,
        }
    }

    fn set_url(&mut self, url: String) {
        match self {
            CatalogKernel::Bundle(entry) => entry.tarball_url = url,
            CatalogKernel::DebianPackage(entry) => entry.url = url,
        }
    }

    /// The entry's own rules (see the module documentation).
    fn check(&self) -> Result<(), String> {
        let name = self.name();
        crate::operations::names::validate("kernel", name)?;
        if !is_sha256_hex(self.sha256()) {
            return Err(format!(
                "{name}: the sha256 {:?} is not 64 lowercase hex digits",
                self.sha256()
            ));
        }
        if self.size_bytes() == 0 {
            return Err(format!("{name}: size_bytes is 0"));
        }
        check_url(self.url()).map_err(|reason| format!("{name}: {reason}"))?;
        match self {
            CatalogKernel::Bundle(entry) => {
                if entry.kind != KIND_BUNDLE {
                    return Err(format!("{name}: kind {:?} is not bundle", entry.kind));
                }
            }
            CatalogKernel::DebianPackage(entry) => {
                if !(entry.package.starts_with("linux-image-") && entry.package.ends_with("-amd64"))
                {
                    return Err(format!(
                        "{name}: package {:?} is not a linux-image-*-amd64 kernel package",
                        entry.package
                    ));
                }
                if entry.version.is_empty() {
                    return Err(format!("{name}: the package version is empty"));
                }
            }
        }
        Ok(())
    }
}

impl Serialize for CatalogKernel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CatalogKernel::Bundle(entry) => entry.serialize(serializer),
            CatalogKernel::DebianPackage(entry) => {
                let mut value = serde_json::to_value(entry).map_err(serde::ser::Error::custom)?;
                if let Some(object) = value.as_object_mut() {
                    object.insert("kind".into(), KIND_DEBIAN_PACKAGE.into());
                }
                value.serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for CatalogKernel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        let kind = value
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let name = value
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("an entry")
            .to_owned();
        let named = |e: serde_json::Error| D::Error::custom(format!("{name}: {e}"));
        match kind.as_deref() {
            Some(KIND_BUNDLE) => serde_json::from_value(value)
                .map(CatalogKernel::Bundle)
                .map_err(named),
            Some(KIND_DEBIAN_PACKAGE) => {
                if let Some(object) = value.as_object_mut() {
                    object.remove("kind");
                }
                serde_json::from_value(value)
                    .map(CatalogKernel::DebianPackage)
                    .map_err(named)
            }
            Some(other) => Err(D::Error::custom(format!(
                "{name}: unknown kind {other:?} (bundle or debian_package)"
            ))),
            None => Err(D::Error::custom(format!(
                "{name}: no kind (bundle or debian_package)"
            ))),
        }
    }
}

/// The catalog file's shape.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    format: u32,
    kernels: Vec<CatalogKernel>,
}

/// A checked catalog: kernels by name, in the file's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    kernels: Vec<CatalogKernel>,
}

impl Catalog {
    /// The catalog compiled into banger.
    pub fn embedded() -> Catalog {
        // A unit test parses it; a build whose catalog does not parse never ships.
        Catalog::parse(EMBEDDED).unwrap_or_else(|error| {
            tracing::error!(%error, "the embedded kernel catalog does not parse");
            Catalog {
                kernels: Vec::new(),
            }
        })
    }

    /// Parses and checks a catalog's text.
    pub fn parse(text: &str) -> Result<Catalog, String> {
        let file: CatalogFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.format != FORMAT {
            return Err(format!(
                "format {} is not {FORMAT}, the one this banger reads",
                file.format
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for kernel in &file.kernels {
            kernel.check()?;
            if !seen.insert(kernel.name()) {
                return Err(format!("{} is in the catalog twice", kernel.name()));
            }
        }
        Ok(Catalog {
            kernels: file.kernels,
        })
    }

    /// Reads a catalog file.
    pub fn load(path: &Path) -> Result<Catalog, KernelError> {
        let text = std::fs::read_to_string(path).map_err(|e| KernelError::io(path, e))?;
        Catalog::parse(&text).map_err(|reason| KernelError::Catalog {
            origin: path.display().to_string(),
            reason,
        })
    }

    /// What `kernel pull` uses: the embedded catalog, extended by the file `extra` (read
    /// now, so an edit applies to the next pull), its URLs rewritten by `mirrors`.
    pub fn effective(extra: Option<&Path>, mirrors: &Mirrors) -> Result<Catalog, KernelError> {
        let mut catalog = Catalog::embedded();
        if let Some(extra) = extra {
            catalog = catalog.extended_with(Catalog::load(extra)?);
        }
        Ok(catalog.mirrored(mirrors))
    }

    /// This catalog with `more`'s kernels added; one of `more` replaces one of the same name.
    pub fn extended_with(mut self, more: Catalog) -> Catalog {
        for kernel in more.kernels {
            match self.kernels.iter_mut().find(|k| k.name() == kernel.name()) {
                Some(slot) => *slot = kernel,
                None => self.kernels.push(kernel),
            }
        }
        self
    }

    /// The same catalog with every URL rewritten by `mirrors`.
    pub fn mirrored(mut self, mirrors: &Mirrors) -> Catalog {
        for kernel in &mut self.kernels {
            let url = mirrors.rewrite(kernel.url());
            kernel.set_url(url);
        }
        self
    }

    pub fn kernels(&self) -> &[CatalogKernel] {
        &self.kernels
    }

    pub fn get(&self, name: &str) -> Option<&CatalogKernel> {
        self.kernels.iter().find(|k| k.name() == name)
    }

    /// The catalog as a file holds it.
    pub fn to_json(&self) -> String {
        let file = CatalogFile {
            format: FORMAT,
            kernels: self.kernels.clone(),
        };
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// How catalog URLs are rewritten (`[kernels]` in config.toml).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirrors {
    /// Replaces the scheme and host of every URL no prefix matched (the path is kept).
    pub mirror: Option<String>,
    /// URL prefix → replacement; the longest matching prefix wins.
    pub prefixes: BTreeMap<String, String>,
}

impl Mirrors {
    /// Checks that every replacement is an absolute http(s) URL.
    pub fn check(&self) -> Result<(), String> {
        for url in self.mirror.iter().chain(self.prefixes.values()) {
            check_url(url)?;
        }
        Ok(())
    }

    /// `url` as the mirrors rewrite it.
    pub fn rewrite(&self, url: &str) -> String {
        if let Some((from, to)) = self
            .prefixes
            .iter()
            .filter(|(from, _)| url.starts_with(from.as_str()))
            .max_by_key(|(from, _)| from.len())
        {
            return format!("{to}{}", &url[from.len()..]);
        }
        match &self.mirror {
            Some(mirror) => {
                let path = url
                    .split_once("://")
                    .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]))
                    .unwrap_or("/");
                format!("{}{path}", mirror.trim_end_matches('/'))
            }
            None => url.to_owned(),
        }
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an absolute http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} is not a usable URL"));
    }
    Ok(())
}

/// 64 lowercase hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalog_parses_and_pins_the_debian_12_cloud_kernel() {
        let catalog = Catalog::parse(EMBEDDED).unwrap();
        assert_eq!(catalog, Catalog::embedded());
        let kernel = catalog.get(DEFAULT_KERNEL).expect("the default kernel");
        assert_eq!(kernel.kind(), KIND_DEBIAN_PACKAGE);
        assert_eq!(kernel.release(), "6.1.0-57-cloud-amd64");
        assert!(
            kernel
                .url()
                .starts_with("https://snapshot.debian.org/file/"),
            "{}",
            kernel.url()
        );
        // The snapshot service names a file by its SHA-1: 40 hex digits.
        let sha1 = kernel.url().rsplit('/').next().unwrap();
        assert_eq!(sha1.len(), 40);
        // It writes back as it reads.
        assert_eq!(Catalog::parse(&catalog.to_json()).unwrap(), catalog);
    }

    fn bundle_entry(name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "kind": "bundle", "version": "6.1.0-test", "arch": "x86_64",
            "tarball_url": "https://example.org/k/b.tar.zst", "tarball_sha256": "ab".repeat(32),
            "size_bytes": 10, "description": "a bundle"
        })
    }

    fn catalog_of(kernels: Vec<serde_json::Value>) -> String {
        serde_json::json!({"format": 1, "kernels": kernels}).to_string()
    }

    #[test]
    fn both_kinds_read_and_mistakes_are_refused() {
        let catalog = Catalog::parse(&catalog_of(vec![bundle_entry("b")])).unwrap();
        assert_eq!(catalog.get("b").unwrap().kind(), KIND_BUNDLE);
        assert_eq!(catalog.get("b").unwrap().release(), "6.1.0-test");
        let mut bad_sha = bundle_entry("b");
        bad_sha["tarball_sha256"] = "AB".repeat(32).into();
        let mut bad_url = bundle_entry("b");
        bad_url["tarball_url"] = "b.tar.zst".into();
        let mut unknown_field = bundle_entry("b");
        unknown_field["colour"] = "blue".into();
        let mut unknown_kind = bundle_entry("b");
        unknown_kind["kind"] = "rpm".into();
        let mut bad_name = bundle_entry("../b");
        bad_name["name"] = "../b".into();
        let mut zero = bundle_entry("b");
        zero["size_bytes"] = 0.into();
        let deb = serde_json::json!({
            "name": "d", "kind": "debian_package", "package": "linux-image-6.1.0-1-cloud-arm64",
            "version": "1", "url": "https://e.org/d", "sha256": "00".repeat(32), "size_bytes": 1
        });
        for (kernels, expected) in [
            (vec![bad_sha], "64 lowercase hex"),
            (vec![bad_url], "absolute http"),
            (vec![unknown_field], "unknown field"),
            (vec![unknown_kind], "unknown kind"),
            (vec![bad_name], "kernel name"),
            (vec![zero], "size_bytes is 0"),
            (vec![bundle_entry("b"), bundle_entry("b")], "twice"),
            (vec![deb], "linux-image-*-amd64"),
        ] {
            let error = Catalog::parse(&catalog_of(kernels)).unwrap_err();
            assert!(error.contains(expected), "{expected}: {error}");
        }
        let error = Catalog::parse(r#"{"format":2,"kernels":[]}"#).unwrap_err();
        assert!(error.contains("format 2"), "{error}");
    }

    #[test]
    fn a_user_catalog_adds_and_replaces_entries() {
        let more = Catalog::parse(&catalog_of(vec![
            bundle_entry("extra"),
            bundle_entry(DEFAULT_KERNEL),
        ]))
        .unwrap();
        let catalog = Catalog::embedded().extended_with(more);
        assert_eq!(catalog.get(DEFAULT_KERNEL).unwrap().kind(), KIND_BUNDLE);
        assert!(catalog.get("extra").is_some());
        assert_eq!(catalog.kernels().len(), 2);
    }

    #[test]
    fn mirrors_rewrite_urls() {
        let url = "https://snapshot.debian.org/file/c012d284";
        assert_eq!(Mirrors::default().rewrite(url), url);
        let mirror = Mirrors {
            mirror: Some("http://127.0.0.1:8080/".into()),
            prefixes: BTreeMap::new(),
        };
        assert_eq!(mirror.rewrite(url), "http://127.0.0.1:8080/file/c012d284");
        let prefixed = Mirrors {
            mirror: Some("http://127.0.0.1:8080/any".into()),
            prefixes: [
                (
                    "https://snapshot.debian.org/".to_owned(),
                    "http://m/snap/".to_owned(),
                ),
                (
                    "https://snapshot.debian.org/file/".to_owned(),
                    "http://m/files/".to_owned(),
                ),
            ]
            .into(),
        };
        assert_eq!(prefixed.rewrite(url), "http://m/files/c012d284");
        assert_eq!(
            prefixed.rewrite("https://snapshot.debian.org/archive/x"),
            "http://m/snap/archive/x"
        );
        assert_eq!(
            prefixed.rewrite("https://example.org/b.tar.zst"),
            "http://127.0.0.1:8080/any/b.tar.zst"
        );
        let catalog = Catalog::embedded().mirrored(&mirror);
        assert!(
            catalog
                .get(DEFAULT_KERNEL)
                .unwrap()
                .url()
                .starts_with("http://127.0.0.1:8080/file/")
        );
        assert!(
            Mirrors {
                mirror: Some("ftp://x".into()),
                ..Mirrors::default()
            }
            .check()
            .is_err()
        );
    }
}
