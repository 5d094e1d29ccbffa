//! Callosum message codec (callosum 1.0.3, `rpc/message.py` and `lower/zeromq.py`).
//!
//! A message is three ZeroMQ frames `[b"UPPER", header, body]`; a ROUTER prefixes the peer's routing id. The
//! header is the msgpack map `{"type", "meth", "okey", "seq", "zip"}` in that order, the body the map
//! `{"meta": bin, "body": bin | nil}` whose values are themselves msgpack documents. Control messages are
//! `[b"PING", x, y]`, answered with `[b"PONG", x, y]`.
//!
//! The agent's Callosum stops serving *everyone* after one request it cannot decode (unknown method, missing header
//! key, `body` not `bin`), so requests are written exactly as the Python manager writes them and the golden-byte
//! tests pin that down.

use serde::Serialize;
use serde_bytes::ByteBuf;

/// First frame of an RPC message.
pub const UPPER: &[u8] = b"UPPER";
/// First frame of a liveness probe; the peer echoes the other two frames back under [`PONG`].
pub const PING: &[u8] = b"PING";
pub const PONG: &[u8] = b"PONG";

/// The only method this client sends. Keep it a constant: an unknown method name kills the agent's RPC loop.
pub const SYNC_KERNEL_REGISTRY: &str = "sync_kernel_registry";

/// Callosum's `RPCMessageTypes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    Null = 0,
    Function = 1,
    Result = 2,
    Failure = 3,
    Error = 4,
    Cancel = 5,
    Cancelled = 6,
}

impl MsgType {
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Null,
            1 => Self::Function,
            2 => Self::Result,
            3 => Self::Failure,
            4 => Self::Error,
            5 => Self::Cancel,
            6 => Self::Cancelled,
            _ => return None,
        })
    }
}

/// A message that is not valid Callosum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

fn err(msg: impl Into<String>) -> CodecError {
    CodecError(msg.into())
}

/// The order key as it travels: the Python manager sends `""` (str) per call and `b""` (bin) on pooled peers, and
/// the reply echoes whichever was sent. Correlation compares the bytes only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    Str(String),
    Bin(Vec<u8>),
}

impl OrderKey {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Str(s) => s.as_bytes(),
            Self::Bin(b) => b,
        }
    }
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub msgtype: MsgType,
    pub meth: String,
    pub okey: OrderKey,
    pub seq: u32,
    pub zip: bool,
}

#[derive(Serialize)]
struct WireHeader<'a> {
    #[serde(rename = "type")]
    msgtype: u8,
    meth: &'a str,
    okey: WireOkey<'a>,
    seq: u32,
    zip: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireOkey<'a> {
    Str(&'a str),
    Bin(&'a serde_bytes::Bytes),
}

#[derive(Serialize)]
struct Envelope {
    meta: ByteBuf,
    body: Option<ByteBuf>,
}

#[derive(Serialize)]
struct Call<A, K> {
    args: A,
    kwargs: K,
}

#[derive(Serialize)]
struct SyncKwargs<'a> {
    agent_id: &'a str,
}

fn to_msgpack<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(value).map_err(|e| err(format!("msgpack encoding failed: {e}")))
}

/// Encodes a header with the key order and types Callosum writes.
pub fn encode_header(msgtype: MsgType, meth: &str, okey: &OrderKey, seq: u32) -> Result<Vec<u8>, CodecError> {
    let okey = match okey {
        OrderKey::Str(s) => WireOkey::Str(s),
        OrderKey::Bin(b) => WireOkey::Bin(serde_bytes::Bytes::new(b)),
    };
    to_msgpack(&WireHeader { msgtype: msgtype as u8, meth, okey, seq, zip: false })
}

/// The nested call document of `sync_kernel_registry(pairs, agent_id=...)`: `{"args": [[[kid, sid], ...]],
/// "kwargs": {"agent_id": ...}}`, UUIDs as hyphenated lower-case strings (the agent does `UUID(raw)`).
pub fn sync_kernel_registry_call(kernels: &[(uuid::Uuid, uuid::Uuid)], agent_id: &str) -> Result<Vec<u8>, CodecError> {
    let pairs: Vec<(String, String)> =
        kernels.iter().map(|(k, s)| (k.hyphenated().to_string(), s.hyphenated().to_string())).collect();
    to_msgpack(&Call { args: (&pairs,), kwargs: SyncKwargs { agent_id } })
}

/// The three frames of a FUNCTION request carrying an already encoded call document.
pub fn encode_request(meth: &str, okey: &OrderKey, seq: u32, call: Vec<u8>) -> Result<[Vec<u8>; 3], CodecError> {
    let header = encode_header(MsgType::Function, meth, okey, seq)?;
    let body = to_msgpack(&Envelope { meta: ByteBuf::new(), body: Some(ByteBuf::from(call)) })?;
    Ok([UPPER.to_vec(), header, body])
}

/// Header and body frames of a RESULT reply (`ResultMetadata()` is `[]`, the value is nested msgpack).
pub fn encode_result(req: &Header, value: &rmpv::Value) -> Result<[Vec<u8>; 2], CodecError> {
    let mut inner = Vec::new();
    rmpv::encode::write_value(&mut inner, value).map_err(|e| err(format!("msgpack encoding failed: {e}")))?;
    let header = encode_header(MsgType::Result, &req.meth, &req.okey, req.seq)?;
    let body = to_msgpack(&Envelope { meta: ByteBuf::from(vec![0x90]), body: Some(ByteBuf::from(inner)) })?;
    Ok([header, body])
}

/// Header and body frames of a FAILURE (handler raised) or ERROR (Callosum itself failed) reply: meta is
/// `[name, repr, traceback]`, body nil.
pub fn encode_error(
    msgtype: MsgType,
    req: &Header,
    name: &str,
    repr: &str,
    traceback: &str,
) -> Result<[Vec<u8>; 2], CodecError> {
    let meta = to_msgpack(&(name, repr, traceback))?;
    let header = encode_header(msgtype, &req.meth, &req.okey, req.seq)?;
    let body = to_msgpack(&Envelope { meta: ByteBuf::from(meta), body: None })?;
    Ok([header, body])
}

fn read_value(bytes: &[u8], what: &str) -> Result<rmpv::Value, CodecError> {
    let mut cursor = bytes;
    let value = rmpv::decode::read_value(&mut cursor).map_err(|e| err(format!("{what}: invalid msgpack ({e})")))?;
    if !cursor.is_empty() {
        return Err(err(format!("{what}: {} trailing bytes after the msgpack document", cursor.len())));
    }
    Ok(value)
}

fn map_get<'a>(map: &'a [(rmpv::Value, rmpv::Value)], key: &str) -> Option<&'a rmpv::Value> {
    map.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

/// Decodes a header frame; like Callosum, all five keys are required.
pub fn decode_header(bytes: &[u8]) -> Result<Header, CodecError> {
    let value = read_value(bytes, "header")?;
    let map = value.as_map().ok_or_else(|| err("header: not a msgpack map"))?;
    let field = |key: &str| map_get(map, key).ok_or_else(|| err(format!("header: missing key {key:?}")));
    let raw_type = field("type")?.as_u64().ok_or_else(|| err("header: \"type\" is not an unsigned integer"))?;
    let msgtype = MsgType::from_u64(raw_type).ok_or_else(|| err(format!("header: unknown message type {raw_type}")))?;
    let meth = field("meth")?.as_str().ok_or_else(|| err("header: \"meth\" is not a string"))?.to_owned();
    let okey = match field("okey")? {
        rmpv::Value::String(s) => {
            OrderKey::Str(s.as_str().ok_or_else(|| err("header: \"okey\" is not UTF-8"))?.to_owned())
        }
        rmpv::Value::Binary(b) => OrderKey::Bin(b.clone()),
        other => return Err(err(format!("header: \"okey\" is {other}, expected str or bin"))),
    };
    let seq = field("seq")?
        .as_u64()
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| err("header: \"seq\" is not a 32-bit unsigned integer"))?;
    let zip = field("zip")?.as_bool().ok_or_else(|| err("header: \"zip\" is not a boolean"))?;
    Ok(Header { msgtype, meth, okey, seq, zip })
}

/// The `meta` and `body` members of a body frame, each still nested msgpack (`None` for nil).
fn decode_envelope(bytes: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), CodecError> {
    let value = read_value(bytes, "body")?;
    let map = value.as_map().ok_or_else(|| err("body: not a msgpack map"))?;
    let meta = match map_get(map, "meta") {
        Some(rmpv::Value::Binary(b)) => b.clone(),
        Some(rmpv::Value::Nil) | None => Vec::new(),
        Some(other) => return Err(err(format!("body: \"meta\" is {other}, expected bin"))),
    };
    let body = match map_get(map, "body") {
        Some(rmpv::Value::Binary(b)) => Some(b.clone()),
        Some(rmpv::Value::Nil) | None => None,
        Some(other) => return Err(err(format!("body: \"body\" is {other}, expected bin"))),
    };
    Ok((meta, body))
}

/// What a reply says about a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// RESULT: the handler's return value.
    Result(rmpv::Value),
    /// FAILURE: the handler raised (`name` is the exception class).
    Failure { name: String, repr: String, traceback: String },
    /// ERROR: Callosum itself failed while handling the call.
    Error { name: String, repr: String },
    /// CANCELLED: the call was cancelled on the server.
    Cancelled,
}

fn error_metadata(meta: &[u8]) -> Result<(String, String, String), CodecError> {
    if meta.is_empty() {
        return Ok((String::new(), String::new(), String::new()));
    }
    let value = read_value(meta, "error metadata")?;
    let items = value.as_array().ok_or_else(|| err("error metadata: not an array"))?;
    let text = |i: usize| items.get(i).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    Ok((text(0), text(1), text(2)))
}

/// Decodes the body frame of a reply whose header has already been read.
pub fn decode_reply(header: &Header, body: &[u8]) -> Result<Reply, CodecError> {
    if header.zip {
        return Err(err("compressed (zip) replies are not supported"));
    }
    let (meta, inner) = decode_envelope(body)?;
    match header.msgtype {
        MsgType::Result => {
            let inner = inner.ok_or_else(|| err("RESULT without a body"))?;
            Ok(Reply::Result(read_value(&inner, "result value")?))
        }
        MsgType::Failure => {
            let (name, repr, traceback) = error_metadata(&meta)?;
            Ok(Reply::Failure { name, repr, traceback })
        }
        MsgType::Error => {
            let (name, repr, _) = error_metadata(&meta)?;
            Ok(Reply::Error { name, repr })
        }
        MsgType::Cancelled => Ok(Reply::Cancelled),
        other => Err(err(format!("unexpected message type {other:?} in a reply"))),
    }
}

/// A FUNCTION request as a server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub header: Header,
    /// Positional arguments (`args`), empty when the body is nil.
    pub args: Vec<rmpv::Value>,
    /// Keyword arguments (`kwargs`) in wire order.
    pub kwargs: Vec<(String, rmpv::Value)>,
}

/// Decodes the body frame of a FUNCTION request whose header has already been read.
pub fn decode_request(header: Header, body: &[u8]) -> Result<Request, CodecError> {
    if header.zip {
        return Err(err("compressed (zip) requests are not supported"));
    }
    let (_, inner) = decode_envelope(body)?;
    let Some(inner) = inner else { return Ok(Request { header, args: Vec::new(), kwargs: Vec::new() }) };
    let call = read_value(&inner, "call")?;
    let map = call.as_map().ok_or_else(|| err("call: not a map"))?;
    let args = match map_get(map, "args") {
        Some(rmpv::Value::Array(a)) => a.clone(),
        _ => return Err(err("call: \"args\" missing or not an array")),
    };
    let kwargs = match map_get(map, "kwargs") {
        Some(rmpv::Value::Map(m)) => m
            .iter()
            .map(|(k, v)| {
                k.as_str().map(|k| (k.to_owned(), v.clone())).ok_or_else(|| err("call: non-string kwarg name"))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(err("call: \"kwargs\" missing or not a map")),
    };
    Ok(Request { header, args, kwargs })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_with_str_and_bin_order_keys() {
        for okey in [OrderKey::Str("k".into()), OrderKey::Bin(b"k".to_vec())] {
            let bytes = encode_header(MsgType::Result, "m", &okey, u32::MAX).unwrap();
            let h = decode_header(&bytes).unwrap();
            assert_eq!(h, Header { msgtype: MsgType::Result, meth: "m".into(), okey, seq: u32::MAX, zip: false });
        }
    }

    #[test]
    fn header_missing_a_key_is_rejected() {
        // {"type": 2, "meth": "m", "okey": "", "seq": 0} without "zip"
        let bytes = hex::decode("84a474797065 02 a46d657468 a16d a46f6b6579 a0 a3736571 00".replace(' ', "")).unwrap();
        assert!(decode_header(&bytes).unwrap_err().0.contains("zip"));
    }

    #[test]
    fn error_reply_round_trips() {
        let req = Header {
            msgtype: MsgType::Function,
            meth: "m".into(),
            okey: OrderKey::Str(String::new()),
            seq: 7,
            zip: false,
        };
        let [h, b] = encode_error(MsgType::Error, &req, "KeyError", "KeyError('x')", "tb").unwrap();
        let h = decode_header(&h).unwrap();
        assert_eq!(h.seq, 7);
        assert_eq!(
            decode_reply(&h, &b).unwrap(),
            Reply::Error { name: "KeyError".into(), repr: "KeyError('x')".into() }
        );
    }
}
