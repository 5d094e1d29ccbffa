//! Golden bytes: our Callosum frames equal the ones captured from the Python manager (callosum 1.0.3,
//! a Python manager talking to a Backend.AI agent), and captured replies decode as the agent meant them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_supervisor::agent_rpc::codec::{self, Header, MsgType, OrderKey, Reply};
use uuid::Uuid;

/// §4.2 header: `{"type": 1, "meth": "sync_kernel_registry", "okey": "", "seq": 0, "zip": false}`.
const REQUEST_HEADER: &str =
    "85a47479706501a46d657468b473796e635f6b65726e656c5f7265676973747279a46f6b6579a0a373657100a37a6970c2";

/// §4.2 body, 207 bytes: `{"meta": b"", "body": bin(192)}` around `{"args": [[[k1, s1], [k2, s2]]], "kwargs":
/// {"agent_id": "i-mock-agent"}}`.
const REQUEST_BODY: &str = concat!(
    "82a46d657461c400a4626f6479c4c0",
    "82a461726773919292",
    "d92431313131313131312d313131312d313131312d313131312d313131313131313131313131",
    "d92461616161616161612d616161612d616161612d616161612d616161616161616161616161",
    "92",
    "d92432323232323232322d323232322d323232322d323232322d323232323232323232323232",
    "d92462626262626262622d626262622d626262622d626262622d626262626262626262626262",
    "a66b776172677381a86167656e745f6964ac692d6d6f636b2d6167656e74",
);

/// §4.3 RESULT header and body (`meta` = msgpack `[]`, `body` = msgpack nil).
const RESULT_HEADER: &str =
    "85a47479706502a46d657468b473796e635f6b65726e656c5f7265676973747279a46f6b6579a0a373657100a37a6970c2";
const RESULT_BODY: &str = "82a46d657461c40190a4626f6479c401c0";

/// A FAILURE as Python msgpack writes it, with the order key echoed as bin (the HEAD manager's pooled peers).
const FAILURE_HEADER: &str =
    "85a47479706503a46d657468b473796e635f6b65726e656c5f7265676973747279a46f6b6579c400a373657100a37a6970c2";
const FAILURE_BODY: &str = concat!(
    "82a46d657461c47093b44167656e7449644e6f74466f756e644572726f72d92f4167656e7449644e6f74466f756e644572726f722827",
    "4167656e7420692d77726f6e67206e6f7420666f756e642729d92754726163656261636b20286d6f737420726563656e742063616c6c",
    "206c617374293a0a2020780aa4626f6479c0",
);

fn kernels() -> Vec<(Uuid, Uuid)> {
    vec![
        (
            Uuid::parse_str("11111111-1111-1111-1111-111111111111").unwrap(),
            Uuid::parse_str("aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa").unwrap(),
        ),
        (
            Uuid::parse_str("22222222-2222-2222-2222-222222222222").unwrap(),
            Uuid::parse_str("bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb").unwrap(),
        ),
    ]
}

fn captured_request() -> [Vec<u8>; 3] {
    let call = codec::sync_kernel_registry_call(&kernels(), "i-mock-agent").unwrap();
    codec::encode_request(codec::SYNC_KERNEL_REGISTRY, &OrderKey::Str(String::new()), 0, call).unwrap()
}

#[test]
fn request_frames_equal_the_python_managers_bytes() {
    let [kind, header, body] = captured_request();
    assert_eq!(kind, b"UPPER");
    assert_eq!(hex::encode(&header), REQUEST_HEADER);
    assert_eq!(header.len(), 49);
    assert_eq!(body.len(), 207);
    assert_eq!(hex::encode(&body), REQUEST_BODY);
}

#[test]
fn uuids_are_sent_as_lower_case_hyphenated_strings() {
    let upper = Uuid::parse_str("ABCDEF01-2345-6789-ABCD-EF0123456789").unwrap();
    let call = codec::sync_kernel_registry_call(&[(upper, upper)], "a").unwrap();
    let text = String::from_utf8_lossy(&call);
    assert!(text.contains("abcdef01-2345-6789-abcd-ef0123456789"), "{text}");
}

#[test]
fn the_captured_request_decodes_on_the_server_side() {
    let [_, header, body] = captured_request();
    let header = codec::decode_header(&header).unwrap();
    assert_eq!(
        header,
        Header {
            msgtype: MsgType::Function,
            meth: "sync_kernel_registry".into(),
            okey: OrderKey::Str(String::new()),
            seq: 0,
            zip: false
        }
    );
    let req = codec::decode_request(header, &body).unwrap();
    assert_eq!(req.args.len(), 1);
    let pairs = req.args[0].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[1].as_array().unwrap()[1].as_str(), Some("bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"));
    assert_eq!(req.kwargs, vec![("agent_id".to_owned(), rmpv::Value::from("i-mock-agent"))]);
}

#[test]
fn the_captured_result_decodes_to_nil() {
    let header = codec::decode_header(&hex::decode(RESULT_HEADER).unwrap()).unwrap();
    assert_eq!((header.msgtype, header.seq, header.meth.as_str()), (MsgType::Result, 0, "sync_kernel_registry"));
    let reply = codec::decode_reply(&header, &hex::decode(RESULT_BODY).unwrap()).unwrap();
    assert_eq!(reply, Reply::Result(rmpv::Value::Nil));
}

#[test]
fn our_result_encoding_equals_the_captured_reply() {
    let request = codec::decode_header(&hex::decode(REQUEST_HEADER).unwrap()).unwrap();
    let [header, body] = codec::encode_result(&request, &rmpv::Value::Nil).unwrap();
    assert_eq!(hex::encode(header), RESULT_HEADER);
    assert_eq!(hex::encode(body), RESULT_BODY);
}

#[test]
fn a_failure_decodes_to_exception_name_and_repr_with_a_bin_order_key() {
    let header = codec::decode_header(&hex::decode(FAILURE_HEADER).unwrap()).unwrap();
    assert_eq!(header.okey, OrderKey::Bin(Vec::new()));
    assert_eq!(header.okey.as_bytes(), OrderKey::Str(String::new()).as_bytes());
    match codec::decode_reply(&header, &hex::decode(FAILURE_BODY).unwrap()).unwrap() {
        Reply::Failure { name, repr, traceback } => {
            assert_eq!(name, "AgentIdNotFoundError");
            assert_eq!(repr, "AgentIdNotFoundError('Agent i-wrong not found')");
            assert!(traceback.starts_with("Traceback"));
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn our_failure_encoding_equals_python_msgpack() {
    let request = Header {
        msgtype: MsgType::Function,
        meth: "sync_kernel_registry".into(),
        okey: OrderKey::Bin(Vec::new()),
        seq: 0,
        zip: false,
    };
    let [header, body] = codec::encode_error(
        MsgType::Failure,
        &request,
        "AgentIdNotFoundError",
        "AgentIdNotFoundError('Agent i-wrong not found')",
        "Traceback (most recent call last):\n  x\n",
    )
    .unwrap();
    assert_eq!(hex::encode(header), FAILURE_HEADER);
    assert_eq!(hex::encode(body), FAILURE_BODY);
}

#[test]
fn cancelled_and_malformed_replies_are_told_apart() {
    let cancelled =
        codec::encode_header(MsgType::Cancelled, "sync_kernel_registry", &OrderKey::Str(String::new()), 3).unwrap();
    let header = codec::decode_header(&cancelled).unwrap();
    assert_eq!(
        codec::decode_reply(&header, &hex::decode("82a46d657461c400a4626f6479c0").unwrap()).unwrap(),
        Reply::Cancelled
    );
    // A RESULT whose body is a str instead of bin is not Callosum.
    let result = codec::decode_header(&hex::decode(RESULT_HEADER).unwrap()).unwrap();
    assert!(codec::decode_reply(&result, &hex::decode("82a46d657461c40190a4626f6479a0").unwrap()).is_err());
    assert!(codec::decode_header(b"\xc0").is_err());
}
