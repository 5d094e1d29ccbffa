//! New API keypairs, in Backend.AI's shapes: an access key `AKIA` + 16 upper-case alphanumerics (20 characters) and a
//! 40-character secret from the base64 alphabet, both from the operating system's random source.

use rand::{Rng, rngs::OsRng};

use crate::config::Secret;

pub const ACCESS_KEY_PREFIX: &str = "AKIA";
pub const ACCESS_KEY_LEN: usize = 20;
pub const SECRET_KEY_LEN: usize = 40;

const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A freshly generated keypair. `Debug` hides the secret.
#[derive(Debug, Clone)]
pub struct GeneratedKeypair {
    pub access_key: String,
    pub secret_key: Secret,
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    (0..len).map(|_| char::from(alphabet[OsRng.gen_range(0..alphabet.len())])).collect()
}

pub fn generate_keypair() -> GeneratedKeypair {
    GeneratedKeypair {
        access_key: format!(
            "{ACCESS_KEY_PREFIX}{}",
            random_string(UPPER_ALNUM, ACCESS_KEY_LEN - ACCESS_KEY_PREFIX.len())
        ),
        secret_key: Secret::new(random_string(BASE64, SECRET_KEY_LEN)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_uniqueness() {
        let a = generate_keypair();
        let b = generate_keypair();
        assert_eq!(a.access_key.len(), 20);
        assert!(a.access_key.starts_with("AKIA"));
        assert!(a.access_key.bytes().all(|c| UPPER_ALNUM.contains(&c)));
        assert_eq!(a.secret_key.expose().len(), 40);
        assert!(a.secret_key.expose().bytes().all(|c| BASE64.contains(&c)));
        assert_ne!(a.access_key, b.access_key);
        assert_ne!(a.secret_key, b.secret_key);
        assert!(!format!("{a:?}").contains(a.secret_key.expose()));
    }
}
