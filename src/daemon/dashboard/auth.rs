//! Who may use the dashboard: the secret token, the session cookie and CSRF token derived
//! from it, and the checks every request goes through ([`check_request`]). The threat model
//! and the reasons for each check are in the module docs of [`super`].

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How long a session cookie is good for. After that the browser needs a sign-in link again
/// (`banger dashboard`): a cookie that leaked (see the module docs of [`super`] on ports) is
/// only worth something for this long.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);

/// How far in the future a session's issue time may be (clock steps) before it is refused.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Random bytes in a token (64 hex digits).
const TOKEN_BYTES: usize = 32;

/// The dashboard's secret: a random token kept in a 0600 file in the state directory, and
/// what is derived from it (HMAC-SHA256 with the token as the key, one purpose string each).
/// Deriving rather than storing keeps sessions valid across restarts of bangerd (so a page
/// left open reconnects) and makes replacing the token end every session at once.
pub struct Secret {
    token: String,
}

impl Secret {
    /// Reads the token at `path`, or makes a new one when the file is missing, is not a
    /// regular file owned by this user, can be read or written by anyone else (the token may
    /// have leaked: it is replaced), or does not hold a token.
    pub fn load_or_create(path: &Path) -> io::Result<Secret> {
        match read_token(path)? {
            Some(token) => Ok(Secret { token }),
            None => {
                let token = new_token()?;
                write_token(path, &token)?;
                Ok(Secret { token })
            }
        }
    }

    #[cfg(test)]
    pub fn from_token(token: &str) -> Secret {
        Secret {
            token: token.to_owned(),
        }
    }

    /// Whether `candidate` is the token, compared in constant time (its length aside, which
    /// is public: always 64).
    pub fn token_matches(&self, candidate: &str) -> bool {
        bool::from(candidate.as_bytes().ct_eq(self.token.as_bytes()))
    }

    fn mac(&self, purpose: &str, message: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.token.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(message);
        mac
    }

    /// A session cookie's value, issued at `issued_unix_s`: `v1.ISSUED.MAC`.
    pub fn session(&self, issued_unix_s: u64) -> String {
        let mac = self.mac("session", issued_unix_s.to_string().as_bytes());
        format!("v1.{issued_unix_s}.{}", hex(&mac.finalize().into_bytes()))
    }

    /// Whether `value` is a session this secret issued that has not expired at `now_unix_s`.
    pub fn session_valid(&self, value: &str, now_unix_s: u64) -> bool {
        let mut parts = value.split('.');
        let (Some("v1"), Some(issued_text), Some(mac_hex), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(issued), Some(mac)) = (issued_text.parse::<u64>(), unhex(mac_hex)) else {
            return false;
        };
        // The MAC covers the text as issued: "01" is not "1".
        if issued.to_string() != issued_text {
            return false;
        }
        let fresh = issued <= now_unix_s.saturating_add(CLOCK_SKEW.as_secs())
            && now_unix_s.saturating_sub(issued) < SESSION_MAX_AGE.as_secs();
        // verify_slice compares in constant time.
        let genuine = self
            .mac("session", issued_text.as_bytes())
            .verify_slice(&mac)
            .is_ok();
        fresh && genuine
    }

    /// The CSRF token every form carries: only a page of the dashboard (which a signed-in
    /// browser fetched) knows it.
    pub fn csrf_token(&self) -> String {
        hex(&self.mac("csrf", b"").finalize().into_bytes())
    }

    pub fn csrf_matches(&self, candidate: &str) -> bool {
        bool::from(candidate.as_bytes().ct_eq(self.csrf_token().as_bytes()))
    }
}

/// The token in `path`, when the file can be trusted to hold this user's secret.
fn read_token(path: &Path) -> io::Result<Option<String>> {
    let mut file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        // A symlink (ELOOP) is not trusted either: it is replaced below.
        Err(error)
            if error.kind() == io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    let metadata = file.metadata()?;
    let private = metadata.is_file()
        && metadata.uid() == nix::unistd::geteuid().as_raw()
        && metadata.mode() & 0o077 == 0;
    if !private {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", metadata.mode() & 0o7777),
            "the dashboard token file is not a private file of this user; replacing the token"
        );
        return Ok(None);
    }
    let mut text = String::new();
    // A token is 64 bytes; a file much larger is not one.
    (&mut file).take(256).read_to_string(&mut text)?;
    let token = text.trim();
    let well_formed = token.len() == TOKEN_BYTES * 2
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    Ok(well_formed.then(|| token.to_owned()))
}

fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|error| io::Error::other(format!("no randomness for a token: {error}")))?;
    Ok(hex(&bytes))
}

/// Writes the token to a new 0600 file (created with that mode, so it is never readable by
/// others, not even for a moment) and renames it over `path`.
fn write_token(path: &Path, token: &str) -> io::Result<()> {
    let mut partial = PathBuf::from(path);
    partial.as_mut_os_string().push(".new");
    match fs::remove_file(&partial) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&partial)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&partial, path)
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The Host header is not the dashboard's own address (DNS rebinding).
    WrongHost,
    /// An `Origin` other than the dashboard's own.
    ForeignOrigin,
    /// A request the browser says another site made that is not a plain navigation.
    CrossSite,
    /// No valid session cookie.
    NotSignedIn,
    /// A state-changing request without an `Origin` header.
    NoOrigin,
    /// A form without the right CSRF token.
    BadCsrf,
    /// The sign-in link's token is wrong.
    BadToken,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::NotSignedIn | Refusal::BadToken => StatusCode::UNAUTHORIZED,
            Refusal::WrongHost
            | Refusal::ForeignOrigin
            | Refusal::CrossSite
            | Refusal::NoOrigin
            | Refusal::BadCsrf => StatusCode::FORBIDDEN,
        }
    }

    /// What the person reading the refusal should know.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::WrongHost => {
                "This dashboard answers only at 127.0.0.1 or localhost; open the link `banger dashboard` prints."
            }
            Refusal::ForeignOrigin | Refusal::CrossSite => {
                "Refused: this request came from another web page. The dashboard only takes requests from its own pages."
            }
            Refusal::NotSignedIn => {
                "Not signed in, or the session expired. Run `banger dashboard` for a sign-in link (or `banger dashboard --open`)."
            }
            Refusal::NoOrigin => {
                "Refused: a request that changes something must come from a dashboard page (it had no Origin header)."
            }
            Refusal::BadCsrf => {
                "Refused: the form's CSRF token is missing or wrong. Reload the page and try again."
            }
            Refusal::BadToken => {
                "That sign-in link is not valid (the token changes when dashboard.token is replaced). Run `banger dashboard` for a new one."
            }
        }
    }
}

/// The address a request came in on, once the Host header was found to be one of the
/// dashboard's own: `127.0.0.1:PORT` or `localhost:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnHost(String);

impl OwnHost {
    /// The dashboard's origin as the browser names it when it sends this Host.
    pub fn origin(&self) -> String {
        format!("http://{}", self.0)
    }
}

/// The name of the session cookie of the dashboard on `port`. Cookies are kept per host,
/// not per port, so two dashboards on one host (two users' bangerds) need two names.
pub fn cookie_name(port: u16) -> String {
    format!("banger_dashboard_{port}")
}

/// What a request must show, in order: it came to our own Host; it carries no foreign
/// `Origin`; the browser does not say another site made it (unless it is a plain top-level
/// navigation); it has a valid session (except the sign-in route itself); and when it may
/// change something (any method but GET and HEAD), it carries our own `Origin`. A form's CSRF
/// token is checked by the handler that reads the form.
pub fn check_request(
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    port: u16,
    secret: &Secret,
    now_unix_s: u64,
) -> Result<OwnHost, Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .ok_or(Refusal::WrongHost)?;
    let own = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    if !own.iter().any(|name| name.eq_ignore_ascii_case(host)) {
        return Err(Refusal::WrongHost);
    }
    let own_host = OwnHost(host.to_ascii_lowercase());
    let origin = headers.get(header::ORIGIN).map(|value| value.as_bytes());
    if let Some(origin) = origin
        && origin != own_host.origin().as_bytes()
    {
        return Err(Refusal::ForeignOrigin);
    }
    // Fetch metadata (sent by every current browser): a request another site's page made
    // (a script, an image, a form, a fetch from some other local port) is refused, unless
    // it is a top-level navigation, which shows the page to the user and not to that site.
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok());
    if let Some(site) = fetch_site
        && site != "same-origin"
        && site != "none"
    {
        let navigation = headers
            .get("sec-fetch-mode")
            .is_some_and(|mode| mode == "navigate")
            && (method == Method::GET || method == Method::HEAD);
        if !navigation {
            return Err(Refusal::CrossSite);
        }
    }
    if path != "/login" {
        let signed_in =
            session_cookie(headers, port).any(|value| secret.session_valid(value, now_unix_s));
        if !signed_in {
            return Err(Refusal::NotSignedIn);
        }
    }
    let safe = method == Method::GET || method == Method::HEAD;
    if !safe && origin.is_none() {
        return Err(Refusal::NoOrigin);
    }
    Ok(own_host)
}

/// The values of every session cookie of the dashboard on `port` in the request.
fn session_cookie(headers: &HeaderMap, port: u16) -> impl Iterator<Item = &str> {
    let name = cookie_name(port);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// The `Set-Cookie` value that signs a browser in: HttpOnly (no script reads it),
/// SameSite=Strict (no other site's page makes the browser send it), for the whole path.
/// There is no `Secure`: the dashboard speaks plain HTTP on the loopback interface.
pub fn session_set_cookie(secret: &Secret, port: u16, now_unix_s: u64) -> String {
    format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        cookie_name(port),
        secret.session(now_unix_s),
        SESSION_MAX_AGE.as_secs()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const NOW: u64 = 1_800_000_000;
    const PORT: u16 = 7707;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn signed_in(extra: &[(&'static str, &str)]) -> HeaderMap {
        let secret = Secret::from_token(TOKEN);
        let cookie = format!("other=1; {}={}", cookie_name(PORT), secret.session(NOW));
        let mut pairs = vec![("host", "127.0.0.1:7707")];
        pairs.extend_from_slice(extra);
        let mut map = headers(&pairs);
        map.append(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        map
    }

    fn check(method: Method, headers: &HeaderMap, path: &str) -> Result<OwnHost, Refusal> {
        check_request(
            &method,
            headers,
            path,
            PORT,
            &Secret::from_token(TOKEN),
            NOW,
        )
    }

    #[test]
    fn the_token_and_csrf_token_are_compared_whole() {
        let secret = Secret::from_token(TOKEN);
        assert!(secret.token_matches(TOKEN));
        assert!(!secret.token_matches(&TOKEN[..63]));
        assert!(!secret.token_matches(""));
        assert!(!secret.token_matches(&TOKEN.replace('0', "1")));
        let csrf = secret.csrf_token();
        assert!(secret.csrf_matches(&csrf));
        assert!(!secret.csrf_matches(&csrf[1..]));
        assert_ne!(
            csrf,
            Secret::from_token(&TOKEN.replace('f', "e")).csrf_token()
        );
    }

    #[test]
    fn sessions_expire_and_cannot_be_forged() {
        let secret = Secret::from_token(TOKEN);
        let session = secret.session(NOW);
        assert!(secret.session_valid(&session, NOW));
        assert!(secret.session_valid(&session, NOW + SESSION_MAX_AGE.as_secs() - 1));
        assert!(!secret.session_valid(&session, NOW + SESSION_MAX_AGE.as_secs()));
        assert!(!secret.session_valid(&session, NOW - CLOCK_SKEW.as_secs() - 1));
        // Another token's session, a moved issue time, a cut MAC, junk.
        let other = Secret::from_token(&TOKEN.replace('a', "b")).session(NOW);
        assert!(!secret.session_valid(&other, NOW));
        let mac = session.rsplit('.').next().unwrap();
        assert!(!secret.session_valid(&format!("v1.{}.{mac}", NOW + 100), NOW + 100));
        assert!(!secret.session_valid(&format!("v1.0{NOW}.{mac}"), NOW));
        assert!(!secret.session_valid(&session[..session.len() - 2], NOW));
        for junk in ["", "v1", "v1..", "v2.1.00", &format!("{session}.x"), TOKEN] {
            assert!(!secret.session_valid(junk, NOW), "{junk}");
        }
    }

    #[test]
    fn a_signed_in_request_from_our_own_pages_passes() {
        let own = check(Method::GET, &signed_in(&[]), "/").unwrap();
        assert_eq!(own.origin(), "http://127.0.0.1:7707");
        let post = signed_in(&[
            ("origin", "http://127.0.0.1:7707"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(check(Method::POST, &post, "/vms/dev/stop").is_ok());
        let mut localhost = signed_in(&[("origin", "http://localhost:7707")]);
        localhost.insert(header::HOST, HeaderValue::from_static("localhost:7707"));
        assert!(check(Method::POST, &localhost, "/vms/dev/stop").is_ok());
    }

    #[test]
    fn requests_without_a_session_are_refused_except_sign_in() {
        let anonymous = headers(&[("host", "127.0.0.1:7707")]);
        for path in ["/", "/vms/dev", "/stream", "/assets/dashboard.js", "/nope"] {
            assert_eq!(
                check(Method::GET, &anonymous, path),
                Err(Refusal::NotSignedIn)
            );
        }
        assert!(check(Method::GET, &anonymous, "/login").is_ok());
        let expired = Secret::from_token(TOKEN).session(NOW - SESSION_MAX_AGE.as_secs());
        let mut stale = anonymous.clone();
        stale.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{}={expired}", cookie_name(PORT))).unwrap(),
        );
        assert_eq!(check(Method::GET, &stale, "/"), Err(Refusal::NotSignedIn));
        // Another port's dashboard cookie is not ours.
        let mut other_port = anonymous.clone();
        other_port.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "{}={}",
                cookie_name(7708),
                Secret::from_token(TOKEN).session(NOW)
            ))
            .unwrap(),
        );
        assert_eq!(
            check(Method::GET, &other_port, "/"),
            Err(Refusal::NotSignedIn)
        );
    }

    #[test]
    fn foreign_hosts_origins_and_sites_are_refused() {
        let mut rebound = signed_in(&[]);
        rebound.insert(header::HOST, HeaderValue::from_static("evil.example:7707"));
        assert_eq!(check(Method::GET, &rebound, "/"), Err(Refusal::WrongHost));
        let mut other_port = signed_in(&[]);
        other_port.insert(header::HOST, HeaderValue::from_static("127.0.0.1:80"));
        assert_eq!(
            check(Method::GET, &other_port, "/login"),
            Err(Refusal::WrongHost)
        );
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:8080",
            "http://127.0.0.1:7707.evil.example",
            "null",
        ] {
            let request = signed_in(&[("origin", origin)]);
            assert_eq!(
                check(Method::GET, &request, "/"),
                Err(Refusal::ForeignOrigin)
            );
            assert_eq!(
                check(Method::POST, &request, "/vms/dev/stop"),
                Err(Refusal::ForeignOrigin)
            );
        }
        // A script or image another local page includes: the cookie would be sent (same
        // site), so fetch metadata is what refuses it.
        let included = signed_in(&[
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "no-cors"),
        ]);
        assert_eq!(check(Method::GET, &included, "/"), Err(Refusal::CrossSite));
        let navigation = signed_in(&[
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ]);
        assert!(check(Method::GET, &navigation, "/").is_ok());
        assert_eq!(
            check(Method::POST, &navigation, "/vms/dev/stop"),
            Err(Refusal::CrossSite)
        );
        // A POST must name its origin.
        assert_eq!(
            check(Method::POST, &signed_in(&[]), "/vms/dev/stop"),
            Err(Refusal::NoOrigin)
        );
    }

    #[test]
    fn the_token_file_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dashboard.token");
        let first = Secret::load_or_create(&path).unwrap();
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!(metadata.mode() & 0o777, 0o600);
        assert_eq!(first.token.len(), 64);
        // Kept across loads (sessions survive a restart of bangerd).
        assert_eq!(Secret::load_or_create(&path).unwrap().token, first.token);
        // A token others could read is replaced, and so is junk.
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let replaced = Secret::load_or_create(&path).unwrap();
        assert_ne!(replaced.token, first.token);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        fs::write(&path, "not a token").unwrap();
        assert_ne!(Secret::load_or_create(&path).unwrap().token, replaced.token);
        // A symlink is not followed: it is replaced by a file.
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, format!("{TOKEN}\n")).unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_ne!(Secret::load_or_create(&path).unwrap().token, TOKEN);
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(
            fs::read_to_string(&elsewhere).unwrap(),
            format!("{TOKEN}\n")
        );
    }
}
