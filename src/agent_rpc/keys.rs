//! CurveZMQ keys: Z85 text (40 characters for 32 bytes), as stored in `agents.public_key` and in ZeroMQ
//! certificate files written by pyzmq's `zmq.auth.create_certificates`.

use std::{fmt, path::Path};

use crate::config::Secret;

/// Length of a Z85-encoded CURVE key.
pub const Z85_KEY_LEN: usize = 40;

const Z85_ALPHABET: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Checks that `key` is a 40-character Z85 text that decodes to 32 bytes, and returns it trimmed.
pub fn validate_z85_key(key: &str) -> Result<&str, String> {
    let key = key.trim();
    if key.len() != Z85_KEY_LEN {
        return Err(format!("a CURVE key is {Z85_KEY_LEN} Z85 characters, got {}", key.len()));
    }
    // libzmq's decoder does not reject every character outside the alphabet.
    if let Some(c) = key.chars().find(|c| !Z85_ALPHABET.contains(*c)) {
        return Err(format!("{c:?} is not a Z85 character"));
    }
    match zmq::z85_decode(key) {
        Ok(bytes) if bytes.len() == 32 => Ok(key),
        _ => Err("not valid Z85 text".to_owned()),
    }
}

/// Whether the linked libzmq supports CURVE (it needs libsodium or tweetnacl at build time).
pub fn curve_available() -> bool {
    zmq::has("curve").unwrap_or(false)
}

/// A CURVE key pair in Z85 text; `Debug` never shows the secret.
#[derive(Clone)]
pub struct CurveKeyPair {
    pub public: String,
    pub secret: Secret,
}

impl fmt::Debug for CurveKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurveKeyPair").field("public", &self.public).field("secret", &self.secret).finish()
    }
}

impl CurveKeyPair {
    /// A fresh key pair from libzmq.
    pub fn generate() -> Result<Self, String> {
        let pair = zmq::CurveKeyPair::new().map_err(|e| format!("cannot generate a CURVE key pair: {e}"))?;
        let public = zmq::z85_encode(&pair.public_key).map_err(|e| e.to_string())?;
        let secret = zmq::z85_encode(&pair.secret_key).map_err(|e| e.to_string())?;
        Ok(Self { public, secret: Secret::new(secret) })
    }

    /// Reads a ZeroMQ secret certificate file (`curve` section with `public-key = "..."` and `secret-key = "..."`).
    pub fn load_certificate(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse_certificate(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the ZPL text of a ZeroMQ certificate; both keys are required.
    pub fn parse_certificate(text: &str) -> Result<Self, String> {
        let (public, secret) = parse_curve_section(text);
        let public = public.ok_or("no public-key in the curve section")?;
        let secret = secret.ok_or("no secret-key in the curve section (is this the public certificate?)")?;
        let public = validate_z85_key(&public).map_err(|e| format!("public-key: {e}"))?.to_owned();
        let secret = validate_z85_key(&secret).map_err(|e| format!("secret-key: {e}"))?.to_owned();
        Ok(Self { public, secret: Secret::new(secret) })
    }

    /// The secret certificate text in pyzmq's layout.
    pub fn to_secret_certificate(&self) -> String {
        format!(
            "#   ZeroMQ CURVE **Secret** Certificate\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS.\n\nmetadata\ncurve\n    \
             public-key = \"{}\"\n    secret-key = \"{}\"\n",
            self.public,
            self.secret.expose()
        )
    }
}

/// Reads the public key of a ZeroMQ certificate file (public or secret one).
pub fn load_public_key(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let public = parse_curve_section(&text)
        .0
        .ok_or_else(|| format!("{}: no public-key in the curve section", path.display()))?;
    validate_z85_key(&public).map(str::to_owned).map_err(|e| format!("{}: public-key: {e}", path.display()))
}

/// `(public-key, secret-key)` of the top-level `curve` section of a ZPL document.
fn parse_curve_section(text: &str) -> (Option<String>, Option<String>) {
    let mut in_curve = false;
    let (mut public, mut secret) = (None, None);
    for line in text.lines() {
        // `#` is also a Z85 character, so only whole-line comments exist.
        let content = line.trim_end();
        if content.trim().is_empty() || content.trim_start().starts_with('#') {
            continue;
        }
        if !content.starts_with([' ', '\t']) {
            in_curve = content.trim() == "curve";
            continue;
        }
        if !in_curve {
            continue;
        }
        let Some((name, value)) = content.split_once('=') else { continue };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
        match name.trim() {
            "public-key" => public = Some(value),
            "secret-key" => secret = Some(value),
            _ => {}
        }
    }
    (public, secret)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // Layout of pyzmq's `zmq.auth.create_certificates` output (keys from the CurveZMQ RFC test vectors).
    const PYZMQ_SECRET_CERT: &str = "#   ****  Generated on 2024-01-01 00:00:00 by pyzmq  ****\n\
        #   ZeroMQ CURVE **Secret** Certificate\n\
        #   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n\
        metadata\n\
        curve\n    public-key = \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\"\n    \
        secret-key = \"JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6\"\n";

    #[test]
    fn parses_a_pyzmq_secret_certificate() {
        let pair = CurveKeyPair::parse_certificate(PYZMQ_SECRET_CERT).unwrap();
        assert_eq!(pair.public, "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
        assert_eq!(pair.secret.expose(), "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6");
        assert!(!format!("{pair:?}").contains("JTKVSB"));
    }

    #[test]
    fn a_public_certificate_is_not_a_key_pair() {
        let public_only =
            PYZMQ_SECRET_CERT.lines().filter(|l| !l.contains("secret-key")).collect::<Vec<_>>().join("\n");
        assert!(CurveKeyPair::parse_certificate(&public_only).unwrap_err().contains("secret-key"));
    }

    #[test]
    fn generated_pairs_round_trip_through_the_certificate_text() {
        let pair = CurveKeyPair::generate().unwrap();
        let back = CurveKeyPair::parse_certificate(&pair.to_secret_certificate()).unwrap();
        assert_eq!(back.public, pair.public);
        assert_eq!(back.secret, pair.secret);
    }

    #[test]
    fn rejects_keys_of_the_wrong_shape() {
        assert!(validate_z85_key("short").is_err());
        assert!(validate_z85_key(&"~".repeat(40)).is_err());
    }
}
