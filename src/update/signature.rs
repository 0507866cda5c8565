//! The release key and the manifest's signature, in the format `cosign sign-blob` writes: an
//! ECDSA P-256 signature over SHA-256 of the blob, DER-encoded, then base64 (one line). The
//! same bytes come out of `openssl dgst -sha256 -sign key.pem FILE | base64 -w0`, which is how
//! a release can be signed without cosign.
//!
//! The public key is built into banger: `BANGER_RELEASE_PUBLIC_KEY` (a PEM "PUBLIC KEY") at
//! build time. A build without one carries a placeholder that refuses every update, so a
//! developer build can never be talked into installing something unverified.

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use super::UpdateError;

/// What a build without a release key carries instead of one.
pub const PLACEHOLDER_KEY: &str = "PLACEHOLDER: this build has no release key";

/// The release key built into this banger.
pub const EMBEDDED_KEY: &str = match option_env!("BANGER_RELEASE_PUBLIC_KEY") {
    Some(key) => key,
    None => PLACEHOLDER_KEY,
};

/// Largest signature file accepted (a DER P-256 signature is at most 72 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 1024;

/// A public key release manifests must be signed with.
#[derive(Clone, Debug)]
pub struct ReleaseKey(VerifyingKey);

impl ReleaseKey {
    /// The key built into this banger; an error when the build carries the placeholder.
    pub fn embedded() -> Result<ReleaseKey, UpdateError> {
        ReleaseKey::from_pem(EMBEDDED_KEY)
    }

    /// A key from its PEM ("-----BEGIN PUBLIC KEY-----", SubjectPublicKeyInfo, as
    /// `cosign generate-key-pair` and `openssl ec -pubout` write it).
    pub fn from_pem(pem: &str) -> Result<ReleaseKey, UpdateError> {
        if pem.trim().is_empty() || pem.starts_with("PLACEHOLDER") {
            return Err(UpdateError::NoReleaseKey);
        }
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(ReleaseKey)
            .map_err(|e| UpdateError::BadReleaseKey(e.to_string()))
    }

    /// Checks `signature` (base64 of a DER ECDSA signature, surrounding whitespace ignored)
    /// over `blob`.
    pub fn verify(&self, blob: &[u8], signature: &[u8]) -> Result<(), UpdateError> {
        if signature.len() > MAX_SIGNATURE_BYTES {
            return Err(UpdateError::BadSignature(format!(
                "the signature file has {} bytes; a signature has at most {MAX_SIGNATURE_BYTES}",
                signature.len()
            )));
        }
        let text = std::str::from_utf8(signature)
            .map_err(|_| UpdateError::BadSignature("the signature is not base64 text".into()))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| UpdateError::BadSignature(format!("the signature is not base64: {e}")))?;
        let signature = Signature::from_der(&der).map_err(|_| {
            UpdateError::BadSignature("the signature is not a DER ECDSA P-256 signature".into())
        })?;
        self.0.verify(blob, &signature).map_err(|_| {
            UpdateError::BadSignature(
                "the manifest's signature does not verify against banger's release key".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    fn key_pair_from(secret: u8) -> (SigningKey, ReleaseKey) {
        // A fixed scalar: signing is deterministic (RFC 6979), so no randomness is needed.
        let signing = SigningKey::from_slice(&[secret; 32]).unwrap();
        let pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (signing, ReleaseKey::from_pem(&pem).unwrap())
    }

    fn sign(key: &SigningKey, blob: &[u8]) -> Vec<u8> {
        let signature: Signature = key.sign(blob);
        base64::engine::general_purpose::STANDARD
            .encode(signature.to_der().as_bytes())
            .into_bytes()
    }

    #[test]
    fn a_signature_by_the_key_verifies_and_anything_else_does_not() {
        let (signing, key) = key_pair_from(7);
        let blob = br#"{"version":"9.9.9"}"#;
        let mut signature = sign(&signing, blob);
        key.verify(blob, &signature).unwrap();
        signature.push(b'\n');
        key.verify(blob, &signature)
            .expect("a trailing newline is fine");

        // Another blob, another key, garbage: all refused with a reason.
        let other = br#"{"version":"6.6.6"}"#;
        assert!(matches!(
            key.verify(other, &signature),
            Err(UpdateError::BadSignature(_))
        ));
        let (stranger, _) = key_pair_from(9);
        assert!(key.verify(blob, &sign(&stranger, blob)).is_err());
        for garbage in [
            &b""[..],
            b"!!!",
            b"aGVsbG8=",
            &[0xff; 20][..],
            &[b'A'; 4096][..],
        ] {
            assert!(
                matches!(key.verify(blob, garbage), Err(UpdateError::BadSignature(_))),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn the_placeholder_and_broken_keys_refuse_to_verify_anything() {
        assert!(matches!(
            ReleaseKey::from_pem(PLACEHOLDER_KEY),
            Err(UpdateError::NoReleaseKey)
        ));
        assert!(matches!(
            ReleaseKey::from_pem(""),
            Err(UpdateError::NoReleaseKey)
        ));
        assert!(matches!(
            ReleaseKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Err(UpdateError::BadReleaseKey(_))
        ));
        // This build (tests are never built with a release key) carries the placeholder.
        if option_env!("BANGER_RELEASE_PUBLIC_KEY").is_none() {
            assert!(matches!(
                ReleaseKey::embedded(),
                Err(UpdateError::NoReleaseKey)
            ));
        }
    }
}
