//! What a pull may do: which registries speak plain HTTP, which are mirrored, where the
//! user's credentials are, which platform to pick from an index, and the limits that keep a
//! hostile registry from exhausting memory or disk.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Registry settings. bangerd fills `insecure` and `mirrors` from `config.toml`; the rest has
/// defaults that tests and the daemon may override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`, as written in image references) that are reached
    /// over plain HTTP. Every other registry is reached over HTTPS only, loopback included.
    pub insecure: Vec<String>,
    /// Registry host → mirror host, as containers-registries.conf rewrites a registry to a
    /// mirror: the repository path, tag and digest stay the same, only the host changes, and
    /// the mirror's own credentials and `insecure` entry apply. There is no fallback to the
    /// original registry: a mirror is configured to be used (offline setups, CI caches), and a
    /// silent fallback would hide that it does not work. `docker.io` names Docker Hub.
    pub mirrors: BTreeMap<String, String>,
    /// The docker client configuration file to read credentials from (its `auths`). `None`:
    /// `$DOCKER_CONFIG/config.json` when `DOCKER_CONFIG` is set, else
    /// `$HOME/.docker/config.json`. A missing file means anonymous pulls.
    pub docker_config: Option<PathBuf>,
    /// The platform to pick from image indexes (and to insist on in image configs).
    pub platform: Platform,
    pub limits: PullLimits,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            mirrors: BTreeMap::new(),
            docker_config: None,
            platform: Platform::host(),
            limits: PullLimits::default(),
        }
    }
}

/// Limits on what a registry may make a pull read, keep or download. Each one is checked
/// before the bytes it bounds are fetched (sizes come from descriptors, and a download that
/// runs past its descriptor's size is cut off there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullLimits {
    /// The largest manifest or index body read (it is held in memory to be parsed).
    pub max_manifest_bytes: u64,
    /// The largest image config blob (also parsed in memory).
    pub max_config_bytes: u64,
    /// The most layers one image may have.
    pub max_layers: usize,
    /// The most bytes the config and the layers together may have, as their descriptors
    /// declare them (compressed). The flattener bounds what they expand to separately.
    pub max_image_bytes: u64,
    /// How many blobs of one pull download at once.
    pub max_concurrent_downloads: usize,
}

impl Default for PullLimits {
    fn default() -> Self {
        PullLimits {
            max_manifest_bytes: 4 * MIB,
            max_config_bytes: 8 * MIB,
            // Docker's own limit was 127 (overlay's lower-dir limit); leave room above it.
            max_layers: 256,
            max_image_bytes: 32 * GIB,
            max_concurrent_downloads: 3,
        }
    }
}

/// An OCI platform: `linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux` and the architecture banger itself was built for, in OCI's spelling. For amd64
    /// no microarchitecture level is assumed above the baseline (`v1`): a guest may run under
    /// software emulation or a CPU template that lacks the host's extensions, so an index's
    /// `amd64/v3` entry is only picked when the configured platform asks for `v3`.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// The same platform with architecture and variant spelled the way OCI indexes do
    /// (`x86_64` → `amd64`, `aarch64` → `arm64`, `arm64/v8` → `arm64`, `amd64/v1` → `amd64`,
    /// `arm/7` → `arm/v7`, `arm` → `arm/v7`), so that two spellings of one platform compare
    /// equal. containerd normalises the same way.
    pub fn normalized(&self) -> Platform {
        let os = self.os.to_ascii_lowercase();
        let architecture = self.architecture.to_ascii_lowercase();
        let variant = self.variant.as_deref().map(str::to_ascii_lowercase);
        let (architecture, variant) = match architecture.as_str() {
            "x86_64" | "x86-64" | "amd64" => ("amd64".to_owned(), variant),
            "aarch64" | "arm64" => ("arm64".to_owned(), variant),
            "armhf" => ("arm".to_owned(), Some("v7".to_owned())),
            "armel" => ("arm".to_owned(), Some("v6".to_owned())),
            "i386" | "i486" | "i586" | "i686" | "386" => ("386".to_owned(), variant),
            _ => (architecture, variant),
        };
        let variant = variant.filter(|v| !v.is_empty()).map(|v| {
            if v.bytes().all(|b| b.is_ascii_digit()) {
                format!("v{v}")
            } else {
                v
            }
        });
        let variant = match (architecture.as_str(), variant.as_deref()) {
            ("arm64", Some("v8")) | ("amd64", Some("v1")) => None,
            ("arm", None) => Some("v7".to_owned()),
            _ => variant,
        };
        Platform {
            os,
            architecture,
            variant,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}
