//! The release manifest: which version, for which target, and the tarball with its sha256
//! and size. It is JSON and is only read after its signature verified, but it is still
//! checked field by field: a signed manifest with a path in its URL or a size of 100 GiB is
//! refused all the same.
//!
//! ```json
//! {
//!   "schema": 1,
//!   "version": "0.2.0",
//!   "target": "x86_64-unknown-linux-gnu",
//!   "tarball": {
//!     "url": "banger-0.2.0-x86_64-unknown-linux-gnu.tar.gz",
//!     "sha256": "5f0c…",
//!     "size": 31457280
//!   }
//! }
//! ```
//!
//! `url` may be absolute or relative to the manifest's own URL. The tarball is gzip or zstd
//! (by its name: `.tar.gz`/`.tgz`, `.tar.zst`) holding the four programs, at its top or in
//! one directory.

use serde::Deserialize;

use super::UpdateError;

/// The schema this banger reads.
pub const SCHEMA: u32 = 1;
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest tarball accepted.
pub const MAX_TARBALL_BYTES: u64 = 1 << 30;

/// The target triple of the releases this banger installs: its own.
pub fn this_target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// A release, as its manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub version: String,
    pub target: String,
    pub tarball: Tarball,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tarball {
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// How a tarball is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Manifest {
    /// Parses and checks a manifest (whose signature was verified already).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, UpdateError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| UpdateError::BadManifest(format!("not a release manifest: {e}")))?;
        if manifest.schema != SCHEMA {
            return Err(UpdateError::BadManifest(format!(
                "schema {} (this banger reads schema {SCHEMA}: update by hand)",
                manifest.schema
            )));
        }
        Version::parse(&manifest.version)?;
        if manifest.target != this_target() {
            return Err(UpdateError::BadManifest(format!(
                "a release for {:?}; this host needs {:?}",
                manifest.target,
                this_target()
            )));
        }
        let sha = &manifest.tarball.sha256;
        if sha.len() != 64
            || !sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(UpdateError::BadManifest(format!(
                "the tarball's sha256 {sha:?} is not 64 lowercase hex digits"
            )));
        }
        if manifest.tarball.size == 0 || manifest.tarball.size > MAX_TARBALL_BYTES {
            return Err(UpdateError::BadManifest(format!(
                "a tarball of {} bytes (at most {MAX_TARBALL_BYTES})",
                manifest.tarball.size
            )));
        }
        manifest.compression()?;
        Ok(manifest)
    }

    /// The tarball's compression, from its name.
    pub fn compression(&self) -> Result<Compression, UpdateError> {
        let name = self.tarball.url.rsplit('/').next().unwrap_or_default();
        let name = name.split(['?', '#']).next().unwrap_or_default();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Ok(Compression::Gzip)
        } else if name.ends_with(".tar.zst") {
            Ok(Compression::Zstd)
        } else {
            Err(UpdateError::BadManifest(format!(
                "the tarball {:?} is neither .tar.gz nor .tar.zst",
                self.tarball.url
            )))
        }
    }

    /// The tarball's absolute URL (`url` resolved against the manifest's).
    pub fn tarball_url(&self, manifest_url: &reqwest::Url) -> Result<reqwest::Url, UpdateError> {
        let url = manifest_url.join(&self.tarball.url).map_err(|e| {
            UpdateError::BadManifest(format!("the tarball URL {:?}: {e}", self.tarball.url))
        })?;
        match url.scheme() {
            "https" | "http" => {}
            other => {
                return Err(UpdateError::BadManifest(format!(
                    "the tarball URL has scheme {other:?}; only http(s) is fetched"
                )));
            }
        }
        // A signed manifest on https must not send the download to plain http.
        if manifest_url.scheme() == "https" && url.scheme() != "https" {
            return Err(UpdateError::BadManifest(
                "the manifest came over https but names its tarball over plain http".into(),
            ));
        }
        Ok(url)
    }
}

/// A release version: MAJOR.MINOR.PATCH, compared numerically. Pre-release and build
/// suffixes are refused rather than half-understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    pub fn parse(text: &str) -> Result<Version, UpdateError> {
        let bad =
            || UpdateError::BadManifest(format!("{text:?} is not a MAJOR.MINOR.PATCH version"));
        let mut parts = text.split('.');
        let mut next = || -> Result<u64, UpdateError> {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 9 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let version = Version(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str, url: &str, sha: &str, size: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schema": 1, "version": version, "target": this_target(),
            "tarball": {"url": url, "sha256": sha, "size": size}
        }))
        .unwrap()
    }

    const SHA: &str = "5f0c3a1e9d8b7a6c5f0c3a1e9d8b7a6c5f0c3a1e9d8b7a6c5f0c3a1e9d8b7a6c";

    #[test]
    fn a_good_manifest_parses_and_resolves_its_tarball() {
        let parsed = Manifest::parse(&manifest("0.2.0", "banger-0.2.0.tar.gz", SHA, 10)).unwrap();
        assert_eq!(parsed.version, "0.2.0");
        assert_eq!(parsed.compression().unwrap(), Compression::Gzip);
        let base = reqwest::Url::parse("https://releases.example/latest/manifest.json").unwrap();
        assert_eq!(
            parsed.tarball_url(&base).unwrap().as_str(),
            "https://releases.example/latest/banger-0.2.0.tar.gz"
        );
        let zst =
            Manifest::parse(&manifest("0.2.0", "https://cdn.example/b.tar.zst", SHA, 10)).unwrap();
        assert_eq!(zst.compression().unwrap(), Compression::Zstd);
    }

    #[test]
    fn bad_manifests_are_refused_with_a_reason() {
        for (bytes, why) in [
            (b"not json".to_vec(), "not a release manifest"),
            (manifest("0.2", "b.tar.gz", SHA, 10), "MAJOR.MINOR.PATCH"),
            (manifest("0.2.0-rc1", "b.tar.gz", SHA, 10), "MAJOR.MINOR.PATCH"),
            (manifest("0.2.0", "b.tar.gz", "abc", 10), "64 lowercase hex"),
            (manifest("0.2.0", "b.tar.gz", &SHA.to_uppercase(), 10), "64 lowercase hex"),
            (manifest("0.2.0", "b.tar.gz", SHA, 0), "a tarball of 0 bytes"),
            (manifest("0.2.0", "b.tar.gz", SHA, MAX_TARBALL_BYTES + 1), "at most"),
            (manifest("0.2.0", "b.zip", SHA, 10), "neither .tar.gz nor .tar.zst"),
            (
                serde_json::to_vec(&serde_json::json!({"schema": 1, "version": "0.2.0",
                    "target": "riscv64-unknown-linux-gnu",
                    "tarball": {"url": "b.tar.gz", "sha256": SHA, "size": 1}})).unwrap(),
                "this host needs",
            ),
            (
                br#"{"schema":2,"version":"1.0.0","target":"x","tarball":{"url":"a.tar.gz","sha256":"","size":1}}"#.to_vec(),
                "schema 2",
            ),
            (
                br#"{"schema":1,"version":"1.0.0","target":"x","extra":1,"tarball":{"url":"a.tar.gz","sha256":"","size":1}}"#.to_vec(),
                "unknown field",
            ),
        ] {
            let error = Manifest::parse(&bytes).unwrap_err().to_string();
            assert!(error.contains(why), "{error} (wanted {why})");
        }
        let parsed =
            Manifest::parse(&manifest("0.2.0", "file:///etc/passwd.tar.gz", SHA, 1)).unwrap();
        let base = reqwest::Url::parse("https://releases.example/m.json").unwrap();
        assert!(parsed.tarball_url(&base).is_err());
        let downgrade =
            Manifest::parse(&manifest("0.2.0", "http://x.example/b.tar.gz", SHA, 1)).unwrap();
        assert!(downgrade.tarball_url(&base).is_err());
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(Version::parse("0.10.0").unwrap() > Version::parse("0.9.9").unwrap());
        assert!(Version::parse("1.0.0").unwrap() > Version::parse("0.99.99").unwrap());
        assert_eq!(Version::parse("0.1.0").unwrap().to_string(), "0.1.0");
        for bad in [
            "", "1", "1.2", "1.2.3.4", "a.b.c", "1..2", "+1.2.3", "1.2.3 ",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
    }
}
