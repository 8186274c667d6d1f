//! Secret environment values: sealed with ChaCha20-Poly1305 (a random nonce per
//! value) before they are stored, opened only to be passed to the job's process, and
//! masked in what the process prints.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Sealed values start with this, so that a later format can be told apart.
const PREFIX: &str = "v1:";
/// Bound into every sealed value: a value sealed for something else does not open.
const AAD: &[u8] = b"baton env secret";
const NONCE_LEN: usize = 12;
/// What a secret's value is replaced by in log lines and messages.
pub const MASK: &str = "***";

/// The key secrets are sealed with: 32 bytes.
#[derive(Clone)]
pub struct SecretKey(Key);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(Key::from(bytes))
    }

    /// Reads a key written as 64 hex digits or as base64 of 32 bytes (surrounding
    /// whitespace ignored, so a key file may end with a newline).
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?
        } else if text.len() != 43 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "is {} hex digits long; a key is 64 hex digits, 32 bytes (make one with `openssl rand -hex 32`)",
                text.len()
            ));
        } else {
            STANDARD.decode(text).map_err(|_| {
                "is neither 64 hex digits nor base64 (make one with `openssl rand -hex 32`)"
                    .to_string()
            })?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "is {} bytes long; a key is 32 bytes (make one with `openssl rand -hex 32`)",
                b.len()
            )
        })?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// Seals `value`: `v1:` and the base64 of the nonce and the ciphertext.
    pub fn seal(&self, value: &str) -> String {
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: AAD,
                },
            )
            .expect("ChaCha20-Poly1305 seals any message that fits in memory");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value sealed by [`SecretKey::seal`] with this key.
    pub fn open(&self, sealed: &str) -> Result<String, String> {
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or_else(|| "is not a sealed value".to_string())?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plain = ChaCha20Poly1305::new(&self.0)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: AAD,
                },
            )
            .map_err(|_| "cannot be opened with the configured secret_key (was it changed?)")?;
        String::from_utf8(plain).map_err(|_| "is not UTF-8 once opened".to_string())
    }
}

/// Replaces every occurrence of each secret in `line` with [`MASK`], longest secret
/// first (so that a secret that contains another is masked whole).
pub fn mask(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_owned();
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_their_key_only() {
        let key = SecretKey::parse(&"ab".repeat(32)).unwrap();
        let a = key.seal("hunter2");
        let b = key.seal("hunter2");
        assert_ne!(a, b, "a fresh nonce per value");
        assert!(!a.contains("hunter2"));
        assert_eq!(key.open(&a).unwrap(), "hunter2");
        let other = SecretKey::from_bytes([7; 32]);
        assert!(other.open(&a).unwrap_err().contains("secret_key"));
        let mut tampered = a.clone();
        tampered.pop();
        tampered.push('A');
        assert!(key.open(&tampered).is_err());
        assert!(key.open("hunter2").is_err());
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        assert!(SecretKey::parse(&format!("{}\n", "0f".repeat(32))).is_ok());
        assert!(SecretKey::parse(&STANDARD.encode([1u8; 32])).is_ok());
        let err = SecretKey::parse(&STANDARD.encode([1u8; 16])).unwrap_err();
        assert!(err.contains("is 16 bytes long"), "{err}");
        let err = SecretKey::parse(&"ab".repeat(16)).unwrap_err();
        assert!(err.contains("is 32 hex digits long"), "{err}");
        let err = SecretKey::parse("not a key!").unwrap_err();
        assert!(err.contains("neither 64 hex digits nor base64"), "{err}");
    }

    #[test]
    fn secrets_are_masked_longest_first() {
        let secrets = vec!["abcdef".to_owned(), "abc".to_owned(), String::new()];
        assert_eq!(mask("x abcdef abc y", &secrets), "x *** *** y");
        assert_eq!(mask("nothing here", &secrets), "nothing here");
    }
}
