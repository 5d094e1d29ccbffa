"""A Callosum RPC server set up the way Backend.AI's agent sets it up (ai/backend/agent/server.py, AgentRPCServer).

- Peer(bind=tcp://127.0.0.1:*, ZeroMQRPCTransport, ExitOrderedAsyncScheduler, msgpack packb/unpackb replicas of
  ai.backend.common.msgpack), authenticator = AgentAuthHandler("local", manager_pk, agent_pk, agent_sk) when
  --curve-dir is given (certificates from zmq.auth.create_certificates: agent.key_secret, manager.key).
- sync_kernel_registry(raw_kernel_session_ids, agent_id=None) registered through an @rpc_function-style wrapper:
  records what it got (one JSON line per call in --record) and returns None; an agent id other than --agent-id
  raises AgentIdNotFoundError (a Callosum FAILURE).

Prints "READY tcp://127.0.0.1:PORT" once bound, and runs until stdin closes.
"""

import argparse
import asyncio
import functools
import json
import sys
import uuid
from pathlib import Path

import msgpack as _msgpack
import zmq
import zmq.auth
from callosum.auth import AbstractServerAuthenticator, AuthResult, Credential, Identity
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.ordering import ExitOrderedAsyncScheduler
from callosum.rpc import Peer, RPCMessage


# ai.backend.common.msgpack (the ext types are not needed for sync_kernel_registry).
def packb(data):
    return _msgpack.packb(data, use_bin_type=True, strict_types=True, default=_default)


def _default(obj):
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj)!r}")


def unpackb(packed):
    return _msgpack.unpackb(packed, raw=False, strict_map_key=False, use_list=False)


# ai.backend.common.auth.AgentAuthHandler
class AgentAuthHandler(AbstractServerAuthenticator):
    def __init__(self, domain, manager_public_key, agent_public_key, agent_secret_key):
        self.domain = domain
        self.manager_public_key = manager_public_key
        self.agent_public_key = agent_public_key
        self.agent_secret_key = agent_secret_key

    async def server_identity(self) -> Identity:
        return Identity(self.domain, self.agent_secret_key)

    async def server_public_key(self) -> bytes:
        return self.agent_public_key

    async def check_client(self, creds: Credential) -> AuthResult:
        if creds.domain == self.domain and creds.public_key == self.manager_public_key:
            return AuthResult(success=True, user_id="manager")
        return AuthResult(success=False)


class AgentIdNotFoundError(RuntimeError):
    pass


def rpc_function(meth):
    """The body of ai.backend.agent.server.RPCFunctionRegistry.__call__."""

    @functools.wraps(meth)
    async def _inner(self, request: RPCMessage):
        if request.body is None:
            return await meth(self)
        return await meth(self, *request.body["args"], **request.body["kwargs"], _request=request)

    return _inner


class Agent:
    def __init__(self, agent_id: str, record: Path):
        self.agent_id = agent_id
        self.record = record

    @rpc_function
    async def sync_kernel_registry(self, raw_kernel_session_ids, agent_id=None, *, _request=None):
        entry = {
            "agent_id": agent_id,
            "pairs": [list(p) for p in raw_kernel_session_ids],
            "seq": _request.client_seq_id,
            "okey": _request.order_key if isinstance(_request.order_key, str) else _request.order_key.hex(),
            "okey_type": type(_request.order_key).__name__,
        }
        if agent_id is not None and agent_id != self.agent_id:
            entry["failure"] = "AgentIdNotFoundError"
            self._write(entry)
            raise AgentIdNotFoundError(f"Agent {agent_id!r} not found")
        for kid, sid in raw_kernel_session_ids:
            uuid.UUID(kid), uuid.UUID(sid)
        self._write(entry)
        return None

    def _write(self, entry):
        with self.record.open("a") as f:
            f.write(json.dumps(entry) + "\n")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent-id", required=True)
    ap.add_argument("--record", required=True, type=Path)
    ap.add_argument("--curve-dir", type=Path)
    args = ap.parse_args()

    auth_handler = None
    if args.curve_dir:
        manager_pk, _ = zmq.auth.load_certificate(args.curve_dir / "manager.key")
        agent_pk, agent_sk = zmq.auth.load_certificate(args.curve_dir / "agent.key_secret")
        auth_handler = AgentAuthHandler("local", manager_pk, agent_pk, agent_sk)

    agent = Agent(args.agent_id, args.record)
    peer = Peer(
        bind=ZeroMQAddress("tcp://127.0.0.1:*"),
        transport=ZeroMQRPCTransport,
        authenticator=auth_handler,
        scheduler=ExitOrderedAsyncScheduler(),
        serializer=packb,
        deserializer=unpackb,
    )
    peer.handle_function("sync_kernel_registry", functools.partial(Agent.sync_kernel_registry, agent))
    async with peer:
        # Callosum binds its ZAP handler in a task that first runs after the ROUTER is bound; until then libzmq
        # admits any CURVE client (no ZAP handler = no check). Announce readiness only once ZAP is up.
        while auth_handler is not None and peer._transport._zap_server._zap_socket is None:
            await asyncio.sleep(0.01)
        endpoint = peer._transport._sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        print(f"READY {endpoint}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
