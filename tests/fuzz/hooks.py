"""Schemathesis hooks for agent-supervisor: sign every request the way the official Backend.AI client does.

The keypair comes from BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY (the official client's variables). Signing happens
on the prepared request (a `requests` auth handler), so it covers the method, the request target exactly as sent,
the Host and Content-Type headers that go on the wire. Recipe: src/auth/signing.rs.

FUZZ_AGENT_IDS (comma-separated) names agents that exist: some generated cases get one of them instead of the
generated id, so the happy paths (and the 409s of a real watcher) are reached too. Registrations (POST, PATCH and
DELETE of /v1/agents) get FUZZ_REGISTRY_AGENT_IDS instead, always, even when schemathesis itself found one of the
commanded ids in an earlier response: a generated watcher address must never land on an agent the commands are run
against. Schemathesis does reuse the registry ids it reads from responses on the command routes, and there a
`502 watcher_unreachable` is the right answer for an agent whose watcher the fuzzer moved to a closed port: the check
`not_a_server_error_but_a_moved_watcher` allows exactly that, and nothing else, on top of schemathesis' own
`not_a_server_error`.
"""

import hashlib
import hmac
import os
import random
from datetime import datetime, timezone
from urllib.parse import urlsplit

import requests
import schemathesis
from schemathesis.checks import not_a_server_error

API_VERSION = os.environ.get("BACKEND_API_VERSION", "v7.20230615")
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
KNOWN_AGENTS = [a for a in os.environ.get("FUZZ_AGENT_IDS", "").split(",") if a]
REGISTRY_AGENTS = [a for a in os.environ.get("FUZZ_REGISTRY_AGENT_IDS", "").split(",") if a]
REAL_ID_SHARE = 0.3
# Our own generator: hypothesis wants the module-level one left alone.
_rng = random.Random(7)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def signature(secret_key, method, rel_url, date, host, content_type, api_version=API_VERSION):
    """The hex signature of one request (Backend.AI's `generate_signature`)."""
    signing_string = "\n".join([
        method.upper(),
        rel_url,
        date,
        f"host:{host}",
        f"content-type:{content_type.lower()}",
        f"x-backendai-version:{api_version}",
        EMPTY_BODY_SHA256,
    ])
    day = datetime.fromisoformat(date).strftime("%Y%m%d")
    key = _hmac(_hmac(secret_key.encode(), day.encode()), host.encode())
    return hmac.new(key, signing_string.encode(), hashlib.sha256).hexdigest()


class BackendAISigner(requests.auth.AuthBase):
    def __init__(self, access_key, secret_key):
        self.access_key = access_key
        self.secret_key = secret_key

    def __call__(self, r):
        host = urlsplit(r.url).netloc
        date = datetime.now(timezone.utc).isoformat()
        raw_type = r.headers.get("Content-Type")
        content_type = raw_type.split(";")[0].strip() if raw_type else "application/octet-stream"
        r.headers["Host"] = host
        r.headers["Date"] = date
        r.headers["X-BackendAI-Version"] = API_VERSION
        sig = signature(self.secret_key, r.method, r.path_url, date, host, content_type)
        r.headers["Authorization"] = f"BackendAI signMethod=HMAC-SHA256, credential={self.access_key}:{sig}"
        return r


def _signer():
    return BackendAISigner(os.environ["BACKEND_ACCESS_KEY"], os.environ["BACKEND_SECRET_KEY"])


def _changes_registration(case):
    return case.method.upper() in ("POST", "PATCH", "DELETE") and case.path in ("/v1/agents", "/v1/agents/{id}")


def _keep_commanded_agents_registered(case):
    params = case.path_parameters or {}
    if params.get("id") in KNOWN_AGENTS:
        params["id"] = _rng.choice(REGISTRY_AGENTS)
    if isinstance(case.body, dict) and case.body.get("id") in KNOWN_AGENTS:
        case.body["id"] = _rng.choice(REGISTRY_AGENTS)


def _maybe_real_agent(case):
    if _changes_registration(case):
        _keep_commanded_agents_registered(case)
        known = REGISTRY_AGENTS
    else:
        known = KNOWN_AGENTS
    if not known or _rng.random() >= REAL_ID_SHARE:
        return
    agent = _rng.choice(known)
    if case.path_parameters and "id" in case.path_parameters:
        case.path_parameters["id"] = agent
    elif isinstance(case.body, dict) and ("agent_id" in case.body or "agent" in case.body):
        case.body["agent_id" if "agent_id" in case.body else "agent"] = agent
    elif case.query and ("agent_id" in case.query or "agent" in case.query):
        case.query["agent_id" if "agent_id" in case.query else "agent"] = agent


@schemathesis.hook
def before_call(context, case, kwargs):
    _maybe_real_agent(case)
    kwargs["auth"] = _signer()


def _moved_watcher(response):
    if response.status_code != 502:
        return False
    try:
        problem = response.json()
    except ValueError:
        return False
    return problem.get("error_code") == "watcher_unreachable" and problem.get("agent_id") in REGISTRY_AGENTS


@schemathesis.check
def not_a_server_error_but_a_moved_watcher(ctx, response, case):
    if _moved_watcher(response):
        return None
    return not_a_server_error(ctx, response, case)
