//! Registry credentials from the user's docker client configuration (`config.json`), the file
//! `docker login` writes: its `auths` map of registry → base64 `user:password` (or separate
//! `username`/`password` fields). Credential helpers (`credsStore`, `credHelpers`) are programs
//! banger does not run; when they are all there is, the 401 error says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::error::PullError;
use super::reference::canonical_registry;

/// The largest docker config file read (it is parsed in memory).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// What a pull authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            // Never print a password, not even in a debug log.
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

impl Credentials {
    pub fn to_registry_auth(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            Credentials::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

/// The docker config file a pull reads: the configured one, else `$DOCKER_CONFIG/config.json`,
/// else `$HOME/.docker/config.json`.
pub(crate) fn docker_config_path(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path.to_owned());
    }
    let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials found for one registry, and what to tell the user when they do not work.
#[derive(Debug)]
pub(crate) struct Lookup {
    pub credentials: Credentials,
    /// The file that was (or would be) read.
    pub path: Option<PathBuf>,
    /// A credential helper configured for this registry, which banger does not run.
    pub helper: Option<String>,
}

impl Lookup {
    /// How to fix a 401 from `registry`.
    pub fn login_hint(&self, registry: &str) -> String {
        let file = match &self.path {
            Some(path) => path.display().to_string(),
            None => "~/.docker/config.json".to_owned(),
        };
        let login = if registry == "docker.io" {
            "docker login".to_owned()
        } else {
            format!("docker login {registry}")
        };
        let mut hint = match self.credentials {
            Credentials::Anonymous => format!(
                "no credentials for {registry} in {file}; log in with `{login}`, or add \
                 {registry} to the \"auths\" of that file (\"auth\": base64 of user:password)"
            ),
            Credentials::Basic { .. } => format!(
                "the credentials for {registry} in {file} were refused; log in again with \
                 `{login}`, or fix its entry in the \"auths\" of that file"
            ),
        };
        if let Some(helper) = &self.helper {
            hint.push_str(&format!(
                " (that file names the credential helper docker-credential-{helper}, which \
                 banger does not run: it reads only \"auths\")"
            ));
        }
        hint
    }
}

/// Looks up the credentials for `registry` in the docker config file at `path` (`None`: no
/// file can be named, so anonymous). A missing file is anonymous; an unreadable or malformed
/// one is an error that names it, as `docker` refuses it too.
pub(crate) fn lookup(path: Option<PathBuf>, registry: &str) -> Result<Lookup, PullError> {
    let anonymous = |path, helper| Lookup {
        credentials: Credentials::Anonymous,
        path,
        helper,
    };
    let Some(path) = path else {
        return Ok(anonymous(None, None));
    };
    let fail = |reason: String| PullError::Credentials {
        path: path.clone(),
        reason,
    };
    let bytes = match std::fs::File::open(&path) {
        Ok(file) => {
            use std::io::Read as _;
            let mut bytes = Vec::new();
            file.take(MAX_CONFIG_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| fail(e.to_string()))?;
            if bytes.len() as u64 > MAX_CONFIG_BYTES {
                return Err(fail(format!("it is larger than {MAX_CONFIG_BYTES} bytes")));
            }
            bytes
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(anonymous(Some(path), None));
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let file: ConfigFile =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let wanted = canonical_registry(registry);
    let helper = file
        .cred_helpers
        .iter()
        .find(|(key, _)| canonical_registry(key) == wanted)
        .map(|(_, helper)| helper.clone())
        .or(file.creds_store.clone());
    let Some((key, entry)) = file
        .auths
        .iter()
        .find(|(key, _)| canonical_registry(key) == wanted)
    else {
        return Ok(anonymous(Some(path), helper));
    };
    let credentials = match (&entry.auth, &entry.username, &entry.password) {
        (Some(auth), _, _) if !auth.is_empty() => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| fail(format!("the \"auth\" of {key:?} is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| fail(format!("the \"auth\" of {key:?} is not UTF-8 text")))?;
            let Some((username, password)) = decoded.split_once(':') else {
                return Err(fail(format!(
                    "the \"auth\" of {key:?} is not base64 of user:password (no colon)"
                )));
            };
            Credentials::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            }
        }
        (_, Some(username), Some(password)) if !username.is_empty() => Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        },
        // An entry with neither (docker writes `{}` when a helper holds the secret).
        _ => Credentials::Anonymous,
    };
    Ok(Lookup {
        credentials,
        path: Some(path),
        helper,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_base64_auth_and_matches_docker_hub_names() {
        let dir = tempfile::tempdir().unwrap();
        // "alice:s3cr:et" — the password may hold a colon.
        let path = write(
            dir.path(),
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcjpldA=="},
                "127.0.0.1:5000":{"username":"bob","password":"pw"}}}"#,
        );
        let hub = lookup(Some(path.clone()), "docker.io").unwrap();
        assert_eq!(
            hub.credentials,
            Credentials::Basic {
                username: "alice".into(),
                password: "s3cr:et".into()
            }
        );
        let local = lookup(Some(path.clone()), "127.0.0.1:5000").unwrap();
        assert_eq!(
            local.credentials,
            Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            }
        );
        let other = lookup(Some(path), "ghcr.io").unwrap();
        assert_eq!(other.credentials, Credentials::Anonymous);
        assert!(other.login_hint("ghcr.io").contains("docker login ghcr.io"));
        assert!(!format!("{:?}", hub.credentials).contains("s3cr"));
    }

    #[test]
    fn missing_file_is_anonymous_and_broken_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = lookup(Some(dir.path().join("nope.json")), "docker.io").unwrap();
        assert_eq!(missing.credentials, Credentials::Anonymous);
        let broken = write(dir.path(), "{not json");
        let error = lookup(Some(broken.clone()), "docker.io").unwrap_err();
        assert!(error.to_string().contains(&broken.display().to_string()));
        let bad_auth = write(
            dir.path(),
            r#"{"auths":{"docker.io":{"auth":"bm9jb2xvbg=="}}}"#,
        );
        let error = lookup(Some(bad_auth), "docker.io").unwrap_err();
        assert!(error.to_string().contains("no colon"), "{error}");
    }

    #[test]
    fn a_credential_helper_is_named_in_the_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            r#"{"auths":{"ghcr.io":{}},"credsStore":"desktop"}"#,
        );
        let found = lookup(Some(path), "ghcr.io").unwrap();
        assert_eq!(found.credentials, Credentials::Anonymous);
        let hint = found.login_hint("ghcr.io");
        assert!(hint.contains("docker-credential-desktop"), "{hint}");
    }
}
