//! Backend.AI keypair request signing (HMAC-SHA256), as the official client 23.09 computes it and the manager
//! verifies it. Pure functions with no I/O, shared by the daemon (verification) and by clients such as `agentctl`
//! (signing).
//!
//! ```text
//! Authorization: BackendAI signMethod=HMAC-SHA256, credential=<access_key>:<signature>
//!
//! signing string (7 lines joined by "\n", no trailing newline):
//!   <METHOD>  <request target as on the wire>  <raw Date header>  host:<Host>
//!   content-type:<mimetype, lower-case>  x-backendai-version:<version>  <hex sha256 of the empty body>
//! key       = HMAC(HMAC(secret, "YYYYMMDD" of the Date), host)
//! signature = hex(HMAC(key, signing string))
//! ```
//!
//! The body is never hashed (the last line is always the digest of the empty string): that is what the client sends
//! for every API version since v4.20181215.

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The authorization scheme (Backend.AI also accepts the legacy `Sorna`).
pub const SCHEME: &str = "BackendAI";
/// The only signing method supported (the official client always uses it).
pub const SIGN_METHOD: &str = "HMAC-SHA256";
/// Hex SHA-256 of the empty byte string: the last line of every signing string.
pub const EMPTY_BODY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Content type that stands in for a missing `Content-Type` header (aiohttp's default on the manager side).
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// What a signature covers. Every field is taken verbatim from the request, except `content_type`, which is the
/// mimetype as [`normalize_content_type`] gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningInput<'a> {
    /// Upper-cased before signing.
    pub method: &'a str,
    /// The request target (path plus `?query`) exactly as sent on the wire: never decoded or re-encoded.
    pub rel_url: &'a str,
    /// The raw `Date` header value.
    pub date: &'a str,
    /// The `Host` header value (`host[:port]`).
    pub host: &'a str,
    pub content_type: &'a str,
    /// The raw `X-BackendAI-Version` header value.
    pub api_version: &'a str,
}

/// Why a date or an `Authorization` header could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("the date {0:?} is not an ISO-8601 timestamp")]
    BadDate(String),
    #[error("the Authorization header is malformed: {0}")]
    MalformedHeader(&'static str),
    #[error("unsupported authorization scheme (expected {SCHEME})")]
    UnsupportedScheme,
    #[error("unsupported signMethod (expected {SIGN_METHOD})")]
    UnsupportedSignMethod,
}

/// The parts of an `Authorization: BackendAI …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential<'a> {
    pub access_key: &'a str,
    /// Hex; compared in constant time by [`verify`]. Never log it.
    pub signature: &'a str,
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// `k_signing = HMAC(HMAC(secret, YYYYMMDD), host)`, for the calendar day `YYYYMMDD` written in the `Date` header.
fn derive_key(secret_key: &str, day: &str, host: &str) -> [u8; 32] {
    hmac(&hmac(secret_key.as_bytes(), day.as_bytes()), host.as_bytes())
}

/// The `YYYYMMDD` the signing key is derived with: the calendar day as written in the `Date` header (its own
/// offset, not UTC).
pub fn signing_day(date: &DateTime<FixedOffset>) -> String {
    use chrono::Datelike;
    format!("{:04}{:02}{:02}", date.year(), date.month(), date.day())
}

/// A signing key ready to sign with: the HMAC state keyed with `k_signing`. A verifier keeps one per access key, day
/// and host, so that a request costs one HMAC instead of three.
#[derive(Clone)]
pub struct PreparedKey(HmacSha256);

impl PreparedKey {
    /// For `secret_key` and the day and host `input` is signed for. Fails only when `input.date` does not parse.
    pub fn for_input(secret_key: &str, input: &SigningInput<'_>) -> Result<Self, SigningError> {
        Ok(Self::new(secret_key, &signing_day(&parse_date(input.date)?), input.host))
    }

    /// For `secret_key`, the day `YYYYMMDD` ([`signing_day`]) and `host`.
    pub fn new(secret_key: &str, day: &str, host: &str) -> Self {
        Self(
            <HmacSha256 as Mac>::new_from_slice(&derive_key(secret_key, day, host))
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length")),
        )
    }

    /// The raw signature of `input`; the signing string is fed to the HMAC piece by piece, never built.
    pub fn signature(&self, input: &SigningInput<'_>) -> [u8; 32] {
        let mut mac = self.0.clone();
        if input.method.bytes().any(|b| b.is_ascii_lowercase()) {
            mac.update(input.method.to_ascii_uppercase().as_bytes());
        } else {
            mac.update(input.method.as_bytes());
        }
        for piece in [
            b"\n",
            input.rel_url.as_bytes(),
            b"\n",
            input.date.as_bytes(),
            b"\nhost:",
            input.host.as_bytes(),
            b"\ncontent-type:",
        ] {
            mac.update(piece);
        }
        if input.content_type.bytes().any(|b| b.is_ascii_uppercase()) {
            mac.update(input.content_type.to_ascii_lowercase().as_bytes());
        } else {
            mac.update(input.content_type.as_bytes());
        }
        for piece in [b"\nx-backendai-version:", input.api_version.as_bytes(), b"\n", EMPTY_BODY_SHA256.as_bytes()] {
            mac.update(piece);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `signature` (hex, any case) is the signature of `input`, compared in constant time.
    pub fn verify(&self, input: &SigningInput<'_>, signature: &str) -> bool {
        let mut given = [0u8; 32];
        // The length is public (always 64 hex digits for SHA-256); the contents are compared without early exit.
        if hex::decode_to_slice(signature, &mut given).is_err() {
            return false;
        }
        bool::from(self.signature(input).ct_eq(&given))
    }
}

/// The lower-case hex signature of `input` with `secret_key`. Fails only when `input.date` does not parse.
pub fn sign(secret_key: &str, input: &SigningInput<'_>) -> Result<String, SigningError> {
    Ok(hex::encode(PreparedKey::for_input(secret_key, input)?.signature(input)))
}

/// Whether `signature` (hex, any case) is the signature of `input` with `secret_key`, compared in constant time.
pub fn verify(secret_key: &str, input: &SigningInput<'_>, signature: &str) -> bool {
    PreparedKey::for_input(secret_key, input).is_ok_and(|key| key.verify(input, signature))
}

/// `BackendAI signMethod=HMAC-SHA256, credential=<access_key>:<signature>`, exactly as the official client writes it.
pub fn authorization_header(access_key: &str, signature: &str) -> String {
    format!("{SCHEME} signMethod={SIGN_METHOD}, credential={access_key}:{signature}")
}

/// Parses an `Authorization` header the way the 23.09 manager does: split once on the first space; the scheme is
/// `BackendAI` (or legacy `Sorna`); the rest is `,`-separated `key=value` pairs; `credential` splits once on `:`.
pub fn parse_authorization(header: &str) -> Result<Credential<'_>, SigningError> {
    let (scheme, params) = header.trim().split_once(' ').ok_or(SigningError::MalformedHeader("no parameters"))?;
    if scheme != SCHEME && scheme != "Sorna" {
        return Err(SigningError::UnsupportedScheme);
    }
    let mut method = None;
    let mut credential = None;
    for piece in params.split(',') {
        let (k, v) = piece.trim().split_once('=').ok_or(SigningError::MalformedHeader("a parameter has no value"))?;
        match k.trim() {
            "signMethod" => method = Some(v.trim()),
            "credential" => credential = Some(v.trim()),
            _ => {}
        }
    }
    let method = method.ok_or(SigningError::MalformedHeader("no signMethod"))?;
    if !method.eq_ignore_ascii_case(SIGN_METHOD) {
        return Err(SigningError::UnsupportedSignMethod);
    }
    let (access_key, signature) = credential
        .ok_or(SigningError::MalformedHeader("no credential"))?
        .split_once(':')
        .ok_or(SigningError::MalformedHeader("credential is not <access key>:<signature>"))?;
    if access_key.is_empty() || signature.is_empty() {
        return Err(SigningError::MalformedHeader("empty access key or signature"));
    }
    Ok(Credential { access_key, signature })
}

/// Parses a `Date` header: ISO-8601 / RFC 3339 with or without fractional seconds; no offset means UTC.
pub fn parse_date(raw: &str) -> Result<DateTime<FixedOffset>, SigningError> {
    let raw = raw.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(raw) {
        return Ok(d);
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(raw, fmt) {
            return Ok(naive.and_utc().fixed_offset());
        }
    }
    Err(SigningError::BadDate(raw.chars().take(64).collect()))
}

/// The `Date` value the official client sends: Python's `isoformat()` of an aware UTC datetime
/// (`2026-11-27T12:18:33.853035+00:00`, without the fraction when it is zero).
pub fn format_date(now: DateTime<Utc>) -> String {
    if now.timestamp_subsec_micros() == 0 {
        now.to_rfc3339_opts(SecondsFormat::Secs, false)
    } else {
        now.to_rfc3339_opts(SecondsFormat::Micros, false)
    }
}

/// The mimetype of a `Content-Type` header as the signature covers it: parameters dropped, trimmed, lower-cased;
/// [`DEFAULT_CONTENT_TYPE`] when the header is absent.
pub fn normalize_content_type(header: Option<&str>) -> String {
    match header {
        None => DEFAULT_CONTENT_TYPE.to_owned(),
        Some(v) => v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase(),
    }
}

/// The headers a client adds to sign one request.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub date: String,
    pub authorization: String,
}

impl std::fmt::Debug for SignedHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedHeaders").field("date", &self.date).finish_non_exhaustive()
    }
}

/// The API version the official client 23.09 negotiates and sends in `X-BackendAI-Version`.
pub const API_VERSION: &str = "v7.20230615";

/// What a client is about to send, for [`sign_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutgoingRequest<'a> {
    pub method: &'a str,
    /// Path plus `?query`, percent-encoded exactly as it will go on the wire.
    pub rel_url: &'a str,
    /// The `Host` header the HTTP client will send (no default port).
    pub host: &'a str,
    /// The `Content-Type` header that will be sent (or [`DEFAULT_CONTENT_TYPE`] if none).
    pub content_type: &'a str,
    /// The `X-BackendAI-Version` header that will be sent.
    pub api_version: &'a str,
}

/// Client side: the `Date` and `Authorization` headers for `req` made at `now`. The caller must send the `Host`,
/// `Content-Type` and `X-BackendAI-Version` headers exactly as given in `req`.
pub fn sign_request(
    access_key: &str,
    secret_key: &str,
    req: &OutgoingRequest<'_>,
    now: DateTime<Utc>,
) -> SignedHeaders {
    let date = format_date(now);
    let input = SigningInput {
        method: req.method,
        rel_url: req.rel_url,
        date: &date,
        host: req.host,
        content_type: req.content_type,
        api_version: req.api_version,
    };
    let key = PreparedKey::new(secret_key, &signing_day(&now.fixed_offset()), req.host);
    let signature = hex::encode(key.signature(&input));
    SignedHeaders { authorization: authorization_header(access_key, &signature), date }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use sha2::Digest;

    use super::*;

    /// The 7-line string that is signed, built whole: the reference [`PreparedKey::signature`] is checked against.
    fn signing_string(input: &SigningInput<'_>) -> String {
        format!(
            "{}\n{}\n{}\nhost:{}\ncontent-type:{}\nx-backendai-version:{}\n{}",
            input.method.to_ascii_uppercase(),
            input.rel_url,
            input.date,
            input.host,
            input.content_type.to_ascii_lowercase(),
            input.api_version,
            EMPTY_BODY_SHA256
        )
    }

    /// `k_signing` for the day written in `date`.
    fn signing_key(secret_key: &str, date: &DateTime<FixedOffset>, host: &str) -> [u8; 32] {
        derive_key(secret_key, &signing_day(date), host)
    }

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const HOST: &str = "127.0.0.1:18091";
    const VERSION: &str = "v7.20230615";

    fn input<'a>(method: &'a str, rel_url: &'a str, date: &'a str, content_type: &'a str) -> SigningInput<'a> {
        SigningInput { method, rel_url, date, host: HOST, content_type, api_version: VERSION }
    }

    #[test]
    fn worked_example_5_1_step_by_step() {
        let i = input("POST", "/resource/recalculate-usage", "2026-11-27T12:18:37.025313+00:00", "text/plain");
        assert_eq!(
            signing_string(&i),
            "POST\n/resource/recalculate-usage\n2026-11-27T12:18:37.025313+00:00\nhost:127.0.0.1:18091\n\
             content-type:text/plain\nx-backendai-version:v7.20230615\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(hex::encode(Sha256::digest(b"")), EMPTY_BODY_SHA256);
        let k_date = hmac(SK.as_bytes(), b"20261127");
        assert_eq!(hex::encode(k_date), "0d90a4b750b429e0a923fc0f8bd851e6a79640dc4e83f4baf2d2cc7827bde1a9");
        let date = parse_date(i.date).unwrap();
        assert_eq!(
            hex::encode(signing_key(SK, &date, HOST)),
            "9c18fda17824c7eaf5b8af85a38c531b6d5d28ef1d7cf2ae2cd825971ae7a197"
        );
        let sig = sign(SK, &i).unwrap();
        assert_eq!(sig, "697466c95cb976f318f8c9823607c5096e3d846c8276c2ba1174d2461927c87c");
        assert_eq!(
            authorization_header(AK, &sig),
            "BackendAI signMethod=HMAC-SHA256, credential=AKIAIOSFODNN7EXAMPLE:697466c95cb976f318f8c9823607c5096e3d846c8276c2ba1174d2461927c87c"
        );
        assert!(verify(SK, &i, &sig));
    }

    /// Reference §5.2, all 12 rows.
    const GOLDEN: [(&str, &str, &str, &str, &str); 12] = [
        (
            "GET",
            "/manager/announcement",
            "2026-11-27T12:18:33.810612+00:00",
            "text/plain",
            "3f92c35c95abcd0c84fab9aa629f3497fabf22d0266c8aeb0eb25393ee7545d9",
        ),
        (
            "GET",
            "/resource/watcher",
            "2026-11-27T12:18:33.853035+00:00",
            "application/json",
            "da7da47fb97ae02c5030724cdd1743a7ad75a1dd5e91593e12a3a89b74f17116",
        ),
        (
            "GET",
            "/manager/announcement",
            "2026-11-27T12:18:34.609182+00:00",
            "text/plain",
            "7cbb74e778b1043d45d574ddff212414dfa2487c81c23042dee42d3a7dc40636",
        ),
        (
            "POST",
            "/resource/watcher/agent/start",
            "2026-11-27T12:18:34.656707+00:00",
            "application/json",
            "d9866e4b36900cbc6d1beba451bcd37294a5638865af6ed9b2dea838dd19569f",
        ),
        (
            "GET",
            "/manager/announcement",
            "2026-11-27T12:18:35.454458+00:00",
            "text/plain",
            "4f1aa4be26c70353cebf29ed27e1c86bf1c55f12948de6e302316d320f800be0",
        ),
        (
            "POST",
            "/resource/watcher/agent/stop",
            "2026-11-27T12:18:35.496784+00:00",
            "application/json",
            "9ce0a0f82f7df95b39f3d56b5bef7e2817053a97bcae97f06e76efec2462f131",
        ),
        (
            "GET",
            "/manager/announcement",
            "2026-11-27T12:18:36.233812+00:00",
            "text/plain",
            "c168aef63e894bc64dae3f748b03c1c38c3505dd09fdc7ca330884e6d89bca98",
        ),
        (
            "POST",
            "/resource/watcher/agent/restart",
            "2026-11-27T12:18:36.276869+00:00",
            "application/json",
            "157553114f2c6a2041ba85e99f477b9f431230bad7df16a9383a2b745db7d77d",
        ),
        (
            "POST",
            "/resource/recalculate-usage",
            "2026-11-27T12:18:37.025313+00:00",
            "text/plain",
            "697466c95cb976f318f8c9823607c5096e3d846c8276c2ba1174d2461927c87c",
        ),
        (
            "GET",
            "/resource/watcher?agent_id=i-agent-001",
            "2026-11-27T12:30:22.658021+00:00",
            "text/plain",
            "f72cde59f9c9af891fec8f747b26928cdbfef75bb1249add8a2a1906b616fe40",
        ),
        (
            "GET",
            "/resource/watcher?agent_id=i+agent/%C3%A9%2B1",
            "2026-11-27T12:30:22.700554+00:00",
            "text/plain",
            "809aaebf8e56f37109c13d42dbdfee98c2b74b10e0645ef8d00a96a21b8270b8",
        ),
        (
            "POST",
            "/resource/recalculate-usage",
            "2026-11-27T12:00:00+00:00",
            "text/plain",
            "a4f0e8c5312422a94bb4dd5363c91bc9c4c71e1660fc3633290a36a9718b5c48",
        ),
    ];

    #[test]
    fn golden_vectors_5_2_sign_and_verify() {
        for (n, (method, rel_url, date, ct, expected)) in GOLDEN.iter().enumerate() {
            let i = input(method, rel_url, date, ct);
            assert_eq!(sign(SK, &i).unwrap(), *expected, "row {}", n + 1);
            assert!(verify(SK, &i, expected), "row {}", n + 1);
            assert!(verify(SK, &i, &expected.to_ascii_uppercase()), "hex case does not matter (row {})", n + 1);
        }
    }

    #[test]
    fn a_prepared_key_signs_exactly_the_signing_string_and_can_be_reused() {
        let date = parse_date("2026-11-27T12:18:37.025313+00:00").unwrap();
        let key = PreparedKey::new(SK, &signing_day(&date), HOST);
        for (method, ct) in [("post", "Text/Plain"), ("POST", "text/plain"), ("Get", "APPLICATION/JSON")] {
            let i = input(method, "/resource/recalculate-usage", "2026-11-27T12:18:37.025313+00:00", ct);
            let whole = hmac(&signing_key(SK, &date, HOST), signing_string(&i).as_bytes());
            assert_eq!(key.signature(&i), whole, "{method} {ct}");
            assert!(key.verify(&i, &hex::encode(whole)));
        }
        // The day is the one written in the Date header, in its own offset.
        let late = parse_date("2026-11-27T23:30:00-05:00").unwrap();
        assert_eq!(signing_day(&late), "20261127");
    }

    #[test]
    fn client_side_signing_reproduces_the_golden_vectors() {
        // Row 12 (zero microseconds: the short Date form) and row 9.
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:00:00+00:00").unwrap().to_utc();
        let req = OutgoingRequest {
            method: "POST",
            rel_url: "/resource/recalculate-usage",
            host: HOST,
            content_type: "text/plain",
            api_version: VERSION,
        };
        let h = sign_request(AK, SK, &req, now);
        assert_eq!(h.date, "2026-11-27T12:00:00+00:00");
        assert!(h.authorization.ends_with(":a4f0e8c5312422a94bb4dd5363c91bc9c4c71e1660fc3633290a36a9718b5c48"));
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:18:37.025313+00:00").unwrap().to_utc();
        let h = sign_request(AK, SK, &OutgoingRequest { method: "post", ..req }, now);
        assert_eq!(h.date, "2026-11-27T12:18:37.025313+00:00");
        assert_eq!(
            parse_authorization(&h.authorization).unwrap().signature,
            "697466c95cb976f318f8c9823607c5096e3d846c8276c2ba1174d2461927c87c"
        );
        assert!(!format!("{h:?}").contains("697466"), "Debug hides the signature");
    }

    #[test]
    fn negative_vector_default_port_in_the_endpoint_does_not_verify() {
        // The client signed host:127.0.0.1:80 while aiohttp sent Host: 127.0.0.1.
        let date = "2026-11-27T12:18:37.025313+00:00";
        let signed_by_client =
            SigningInput { host: "127.0.0.1:80", ..input("POST", "/resource/recalculate-usage", date, "text/plain") };
        let sig = sign(SK, &signed_by_client).unwrap();
        let as_received = SigningInput { host: "127.0.0.1", ..signed_by_client };
        assert!(!verify(SK, &as_received, &sig));
        assert!(verify(SK, &signed_by_client, &sig));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let (method, rel_url, date, ct, sig) = GOLDEN[9];
        let base = input(method, rel_url, date, ct);
        let variants = [
            SigningInput { method: "POST", ..base },
            SigningInput { rel_url: "/resource/watcher?agent_id=i-agent-002", ..base },
            SigningInput { rel_url: "/resource/watcher", ..base },
            SigningInput { date: "2026-11-27T12:30:22.658022+00:00", ..base },
            SigningInput { host: "127.0.0.1:18092", ..base },
            SigningInput { content_type: "application/json", ..base },
            SigningInput { api_version: "v6.20220615", ..base },
        ];
        for v in variants {
            assert!(!verify(SK, &v, sig), "{v:?}");
        }
        assert!(!verify("another-secret-key-000", &base, sig));
        assert!(!verify(SK, &base, &sig[..63]));
        assert!(!verify(SK, &base, "not hex at all"));
        // The re-encoded target (what a decoding server would see) does not verify row 11.
        let (m, _, d, c, s) = GOLDEN[10];
        assert!(!verify(SK, &input(m, "/resource/watcher?agent_id=i%20agent/%C3%A9%2B1", d, c), s));
    }

    #[test]
    fn authorization_header_parsing() {
        let c =
            parse_authorization("BackendAI signMethod=HMAC-SHA256, credential=AKIAIOSFODNN7EXAMPLE:abcdef").unwrap();
        assert_eq!((c.access_key, c.signature), ("AKIAIOSFODNN7EXAMPLE", "abcdef"));
        let c = parse_authorization("Sorna credential=AK12345678:ff,signMethod=hmac-sha256").unwrap();
        assert_eq!(c.access_key, "AK12345678");
        assert_eq!(parse_authorization("Bearer abc"), Err(SigningError::UnsupportedScheme));
        assert_eq!(
            parse_authorization("BackendAI signMethod=HMAC-MD5, credential=a:b"),
            Err(SigningError::UnsupportedSignMethod)
        );
        for bad in [
            "",
            "BackendAI",
            "BackendAI signMethod=HMAC-SHA256",
            "BackendAI signMethod=HMAC-SHA256, credential=nocolon",
            "BackendAI credential",
            "BackendAI signMethod=HMAC-SHA256, credential=:sig",
            "BackendAI signMethod=HMAC-SHA256, credential=ak:",
        ] {
            assert!(
                matches!(
                    parse_authorization(bad),
                    Err(SigningError::MalformedHeader(_) | SigningError::UnsupportedScheme)
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dates_with_and_without_fraction_and_offset() {
        let utc = |s: &str| parse_date(s).unwrap().to_utc().to_rfc3339();
        assert_eq!(utc("2026-11-27T12:18:33.853035+00:00"), "2026-11-27T12:18:33.853035+00:00");
        assert_eq!(utc("2026-11-27T12:00:00+00:00"), "2026-11-27T12:00:00+00:00");
        assert_eq!(utc("2026-11-27T12:00:00Z"), "2026-11-27T12:00:00+00:00");
        assert_eq!(utc("2026-11-27T21:00:00+09:00"), "2026-11-27T12:00:00+00:00");
        assert_eq!(utc("2026-11-27T12:00:00.5"), "2026-11-27T12:00:00.500+00:00", "naive means UTC");
        assert_eq!(utc("2026-11-27T12:00:00"), "2026-11-27T12:00:00+00:00");
        assert!(parse_date("Fri, 27 Nov 2026 12:00:00 GMT").is_err());
        assert!(parse_date("yesterday").is_err());
        // The key uses the calendar day written in the header, not the UTC day.
        let d = parse_date("2026-11-28T01:00:00+09:00").unwrap();
        assert_eq!(d.format("%Y%m%d").to_string(), "20261128");
    }

    #[test]
    fn content_type_normalisation() {
        assert_eq!(normalize_content_type(None), "application/octet-stream");
        assert_eq!(normalize_content_type(Some("Application/JSON; charset=UTF-8")), "application/json");
        assert_eq!(normalize_content_type(Some("text/plain")), "text/plain");
    }
}
