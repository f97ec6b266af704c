#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/seed-*) from real shapes: the protocol frames
of shared PROTOCOL.md, the fixture state, configs and queue entries as the tests write them.
Run from anywhere; it rewrites only seed-* files."""
import json, os, pathlib, struct

root = pathlib.Path(__file__).resolve().parent
repo = root.parent
corpus = root / "corpus"

def put(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)

# Split prefixes: [a, b]: largest piece 1 << (a % 15) bytes (14: one piece), b seeds lengths.
WHOLE, BYTES, SMALL, MID = bytes([14, 0]), bytes([0, 1]), bytes([3, 5]), bytes([10, 7])

TOKEN = "fuzz-token"

# --- http_request
reqs = {
    "healthz": "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "readyz-head": "HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "metrics": f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
    "rpc": f'POST /api/rpc/sessions.usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{{"limit": 5}}',
    "pipelined": "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /api/rpc/health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /livez HTTP/1.0\r\n\r\n",
    "upgrade": "GET / HTTP/1.1\r\nHost: 127.0.0.1:18789\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n\x81\x80\x00\x00\x00\x00",
    "chunked": "POST /api/rpc/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "too-large": "POST /api/rpc/status HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
    "no-route-body": "POST /nowhere HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "hook": 'POST /hooks/agent HTTP/1.1\r\nx-openclaw-token: hook-token\r\nContent-Length: 19\r\n\r\n{"message":"hello"}',
    "two-lengths": "POST /api/rpc/x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "length-list": "POST /api/rpc/x HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n{}",
    "signed-length": f"POST /api/rpc/health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: +2\r\n\r\n{{}}GET /healthz HTTP/1.1\r\n\r\n",
    "expect-continue": f"POST /api/rpc/health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{{}}",
    "expect-refused": "POST /api/rpc/health HTTP/1.1\r\nAuthorization: Bearer wrong\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    "expect-other": "GET /healthz HTTP/1.1\r\nExpect: something-else\r\n\r\n",
    "upgrade-v8": "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    "malformed": "GET /\x01 HTTP/1.1\r\n\r\n",
    "forwarded": "POST /api/rpc/health HTTP/1.1\r\nAuthorization: Bearer wrong\r\nX-Forwarded-For: 198.51.100.1, [2001:db8::1], 127.0.0.1\r\nX-Forwarded-For: 203.0.113.5\r\nContent-Length: 2\r\n\r\n{}",
    "long-header": "GET / HTTP/1.1\r\nX-Long: " + "a" * 16400 + "\r\n\r\n",
}
for name, r in reqs.items():
    for pname, p in [("whole", WHOLE), ("bytes", BYTES), ("small", SMALL), ("mid", MID)]:
        if name == "long-header" and pname != "mid":
            continue
        put("http_request", f"{name}-{pname}", p + r.encode("latin-1"))

# --- WebSocket frames (client → server: masked; a zero mask leaves the payload as is)
def frame(payload, op=1, fin=True, mask=b"\0\0\0\0"):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | op
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + masked

def req(id, method, params=None):
    r = {"type": "req", "id": id, "method": method}
    if params is not None:
        r["params"] = params
    return json.dumps(r, separators=(",", ":"))

cli_connect = req("1:0b3c", "connect", {
    "minProtocol": 4, "maxProtocol": 4,
    "client": {"id": "cli", "version": "2026.9.6", "platform": "linux", "deviceFamily": "Linux", "mode": "cli", "instanceId": "9c1e"},
    "caps": [], "auth": {"token": TOKEN}, "role": "operator", "scopes": ["operator.read"]})
dash_connect = req("c1", "connect", {
    "minProtocol": 3, "maxProtocol": 3, "client": {"id": "webchat", "mode": "webchat"},
    "auth": {"token": TOKEN}, "device": {"id": "d", "publicKey": "k", "signature": "s", "signedAt": 1, "nonce": "n"}})
bad_token = req("1", "connect", {"minProtocol": 3, "maxProtocol": 4, "auth": {"token": "wrong"}})
mismatch = req("1", "connect", {"minProtocol": 1, "maxProtocol": 2, "auth": {"token": TOKEN}})

ws = {
    "cli-health": frame(cli_connect) + frame(req("2:aa", "health", {})) + frame(b"", op=8),
    "dashboard": frame(dash_connect) + frame(req("2", "sessions.subscribe", {"sessionKey": "agent:main:main"}))
        + frame(b"hi", op=9) + frame(req("3", "chat.history", {"sessionKey": "agent:main:main", "limit": 3})),
    "fragmented": frame(cli_connect[:40], fin=False) + frame(b"ping", op=9) + frame(cli_connect[40:], op=0)
        + frame(req("2", "status")),
    "binary": frame(cli_connect) + frame(b"\x00\x01", op=2),
    "bad-token": frame(bad_token),
    "mismatch": frame(mismatch),
    "not-connect": frame(req("1", "health")),
    "garbage-text": frame("{not json") + frame("[]"),
    "close-1000": frame(cli_connect) + frame(struct.pack(">H", 1000) + b"bye", op=8),
    "unmasked": bytes([0x81, 0x02]) + b"{}",
    "masked-key": frame(cli_connect, mask=b"\x12\x34\x56\x78") + frame(req("2", "agent", {"message": "hi", "idempotencyKey": "k1"}), mask=b"\x01\x02\x03\x04"),
    "big-len": frame(cli_connect) + bytes([0x81, 0xFF]) + struct.pack(">Q", 1 << 40) + b"\0\0\0\0",
    "bad-utf8": frame(cli_connect) + frame(b"\xff\xfe"),
    "requests": frame(cli_connect) + b"".join(frame(req(str(i), m, p)) for i, (m, p) in enumerate([
        ("sessions.usage", {"limit": 2}), ("usage.cost", {"days": 3}), ("sessions.list", {}),
        ("send", {"channel": "telegram", "to": "42", "message": "x", "idempotencyKey": "i"}),
        ("delivery.list", {"state": "failed"}), ("agent.wait", {"runId": "r", "timeoutMs": 0}),
        ("chat.send", {"sessionKey": "agent:main:main", "message": "m", "idempotencyKey": "k"}),
        ("connect", {}), ("no.such", None)], start=2)),
}
for name, data in ws.items():
    for pname, p in [("whole", bytes([14, 0])), ("leftover-eof", bytes([14, 3])), ("small", bytes([3, 4])), ("mid", bytes([8, 1]))]:
        put("ws_frames", f"{name}-{pname}", p + data)

# --- connect_params: the first frame's text
for name, text in {"cli": cli_connect, "dashboard": dash_connect, "bad-token": bad_token, "mismatch": mismatch,
                   "min-above-max": req("1", "connect", {"minProtocol": 4, "maxProtocol": 3}),
                   "scopes": req("1", "connect", {"minProtocol": 3, "maxProtocol": 4, "scopes": ["operator.admin", "x"], "role": "node"}),
                   "password": req("7", "connect", {"minProtocol": 3, "maxProtocol": 9, "auth": {"password": "p"}}),
                   "numeric-id": '{"type":"req","id":12,"method":"connect","params":null}',
                   "event": '{"type":"event","id":"3","event":"x"}'}.items():
    put("connect_params", name, text)

# --- method_params: [method index, caller, params]
names = ["health", "status", "sessions.list", "sessions.usage", "usage.cost", "chat.send", "agent",
         "agent.wait", "chat.abort", "chat.history", "sessions.subscribe", "sessions.unsubscribe", "send",
         "delivery.list", "delivery.retry", "delivery.drop", "keel.test.busy", "no.such.method", "connect"]
params = {
    "health": [{}],
    "status": [{}],
    "sessions.list": [{"limit": 2}, {"agentId": "agent-2", "search": "a", "offset": 1}, {"activeMinutes": 60, "includeGlobal": True}],
    "sessions.usage": [{"limit": 5}, {"startDate": "2026-11-01", "endDate": "2026-11-30", "mode": "specific", "utcOffset": "UTC+5:30"},
                       {"key": "agent:main:main", "includeContextWeight": True}, {"days": 3660}],
    "usage.cost": [{"days": 7}, {"startDate": "2026-11-10", "endDate": "2026-11-12", "utcOffset": "UTC-8"}, {"mode": "gateway"}],
    "chat.send": [{"sessionKey": "agent:main:main", "message": "hi", "idempotencyKey": "k1"},
                  {"sessionKey": "agent:../../../../tmp/y:s", "message": "hi", "idempotencyKey": "k3"},
                  {"sessionKey": "Agent:%2e%2e:x", "message": "hi", "idempotencyKey": "k4"}],
    "agent": [{"message": "hi", "idempotencyKey": "k2", "agentId": "main", "channel": "telegram", "to": 42, "deliver": True},
              {"message": "hi", "idempotencyKey": "k5", "agentId": "/tmp/x"},
              {"message": "hi", "idempotencyKey": "k6", "agentId": "..\\..\\x\u0000", "sessionKey": "agent::s"}],
    "agent.wait": [{"runId": "r1", "timeoutMs": 0}],
    "chat.abort": [{"runId": "r1"}],
    "chat.history": [{"sessionKey": "agent:main:main", "limit": 5}, {"sessionKey": "agent:agent-2:main"},
                     {"sessionKey": "agent:/some/dir:x"}],
    "sessions.subscribe": [{"sessionKey": "agent:main:main"}],
    "sessions.unsubscribe": [{"sessionKey": "agent:main:main"}],
    "send": [{"channel": "telegram", "to": "42", "message": "hello", "idempotencyKey": "s1", "threadId": 7}],
    "delivery.list": [{"state": "failed", "limit": 10}],
    "delivery.retry": [{"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}],
    "delivery.drop": [{"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}],
    "keel.test.busy": [{"ms": 1}],
    "no.such.method": [{}],
    "connect": [{"minProtocol": 3, "maxProtocol": 4}],
}
for i, m in enumerate(names):
    for j, p in enumerate(params[m]):
        for caller in (0, 1):
            put("method_params", f"{m}-{j}-{'http' if caller else 'ws'}", bytes([i, caller]) + json.dumps(p).encode())

# --- ids: names from outside, as the checked constructor sees them
for i, name in enumerate(["main", "Ops_2", "/tmp/x", "../../../../etc/passwd", "..", ".", "a\\b", "a\x00b",
                          "%2e%2e%2f", "agent:main:main", "agent:../x:s", "agent::s", "Agent:K\u212aelvin:x",
                          "x" * 70, "_" + "a" * 62 + "/b", "café", "0f5e9c1a-2b3c-4d5e-8f90-123456789abc.jsonl"]):
    put("ids", f"{i}", name)

# --- ui_path: request paths as the dashboard sees them (first byte even: no base path)
for i, target in enumerate(["/", "/chat/deep?x=1", "/assets/index-a1.js", "/chat/assets/a.css", "/__openclaw__/favicon.svg",
                            "/control-ui-config.json", "/../etc/passwd", "/%2e%2e/%2e%2e/x", "/a%2fb", "/x%00.js", "/%zz",
                            "/.env", "/caf%C3%A9", "//assets//x.js", "/api/rpc/x", "/share/card.png"]):
    put("ui_path", f"{i}", bytes([0]) + target.encode())
for i, target in enumerate(["/oc", "/oc?t=1", "/oc/", "/oc/assets/a.js", "/ocx", "/oc/__openclaw/control-ui-config.json"]):
    put("ui_path", f"base-{i}", bytes([1]) + target.encode())
put("ui_path", "document", bytes([0]) + b'<!doctype html><HTML data-openclaw-control-ui-build-id="b" lang="en"><script>a()</script>'
    b'<script type="module" src="./assets/i.js"></script><link href="./favicon.svg"><SCRIPT\nasync>b()</Script></HTML>')

# --- config
configs = {
    "empty": {},
    "token": {"gateway": {"auth": {"mode": "token", "token": "from-config"}}},
    "password": {"gateway": {"auth": {"mode": "password", "password": "hunter2"}, "port": 18790, "bind": "loopback"}},
    "bad-values": {"gateway": {"port": "x", "bind": "moon", "drainGraceMs": -1}, "hooks": {"enabled": True}, "wat": 1},
    "drain": {"gateway": {"drainTimeoutMs": "later", "someday": 1}},
    "limits": {"gateway": {"limits": {"maxPayload": 1048576, "maxBufferedBytes": 4194304, "rpcBodyBytes": 65536, "headerTimeoutMs": 5000, "maxConnections": 100, "maxInflightPerConn": 8},
                           "workers": {"cpu": 2, "io": 4, "nice": 10}, "handshakeTimeoutMs": 3000, "tickIntervalMs": 30000,
                           "pressure": {"rssElevatedMb": 512, "rssCriticalMb": 1024, "holdMs": 10000}}},
    "hooks": {"hooks": {"enabled": True, "token": "h", "path": "/hooks"}},
    "models": {"models": {"providers": {"anthropic": {"baseUrl": "http://127.0.0.1:9/v1", "apiKey": "k", "api": "anthropic-messages",
               "models": [{"id": "claude", "cost": {"input": 3, "output": 15, "cacheRead": 0.3, "cacheWrite": 3.75}}]}}},
               "agents": {"defaults": {"model": {"primary": "anthropic/claude", "fallbacks": ["openai/gpt"]}, "timeoutSeconds": 60},
                          "list": [{"id": "main", "default": True}, {"id": "agent-2"}]}},
    "channels": {"channels": {"telegram": {"botToken": "1:x", "apiBase": "http://127.0.0.1:9"}, "feishu": {"appId": "a", "appSecret": "s"}}},
    "openclaw": {"session": {}, "ui": {}, "gateway": {"mode": "local", "controlUi": {}}},
}
for name, c in configs.items():
    put("config", name, json.dumps(c, indent=2))
put("config", "not-object", "[1,2]")
put("config", "not-json", "{gateway:")

# --- transcripts and session stores from the fixture state
state = repo / "fixtures" / "small" / "state"
n = 0
for f in sorted(state.rglob("*")):
    if not f.is_file():
        continue
    data = f.read_bytes()
    if f.name == "sessions.json":
        put("sessions_json", f"fixture-{f.parent.parent.name}", data)
    elif ".jsonl" in f.name:
        n += 1
        lines = data.split(b"\n")
        put("transcript", f"fixture-{n}", bytes([9, n]) + b"\n".join(lines[:40]))
put("transcript", "crlf-partial", bytes([2, 3]) + b'{"type":"message","message":{"role":"user","timestamp":"2026-11-15T04:40:21.304Z"}}\r\n{"type":"message","timestamp":1,"message":{"role":"assistant","stopReason":"error","usage":{"input":1,"output":2,"cost":{"total":0.5}},"content":[{"type":"toolCall","name":"exec"}]}}\n{"type":"mess')
put("sessions_json", "odd", json.dumps({"agent:main:main": {"sessionId": "s", "updatedAt": 5, "origin": {"provider": "telegram"}},
                                         "x": {"sessionId": ""}, "y": 1, "z": {"sessionId": "s", "updatedAt": -9}}))

# --- queue files, as the queue writes them
entry = {"id": "0f8fad5b-d9cb-469f-a165-70867728950e", "idempotencyKey": "run-1:reply",
         "route": {"channel": "telegram", "to": "42", "accountId": "bot", "threadId": "7"},
         "payload": {"text": "hello"}, "createdMs": 1763000000000, "attempts": 2, "nextAttemptMs": 1763000005000,
         "state": "failed", "lastError": "telegram: 400 chat not found", "lastErrorClass": "permanent", "updatedMs": 1763000001000}
put("queue_file", "failed", json.dumps(entry, indent=2) + "\n")
put("queue_file", "pending-min", json.dumps({"id": "a", "route": {"channel": "feishu", "to": "ou_1"}, "payload": {}, "createdMs": 1, "state": "pending"}))
put("queue_file", "future-fields", json.dumps({**entry, "state": "sending", "retriedMs": 5, "priority": 3, "route": {**entry["route"], "replyTo": "m1"}}))
put("queue_file", "unknown-state", json.dumps({**entry, "state": "exploded"}))

# --- idempotency logs, as keel appends them (and as a crash or another program leaves them)
line = lambda k, t, r: json.dumps({"k": k, "t": t, "r": r}, separators=(",", ":")) + "\n"
T = 1763000000000
send = {"messageId": "0f8fad5b-d9cb-469f-a165-70867728950e", "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "status": "pending", "channel": "telegram", "to": "42"}
run = {"runId": "r-1", "status": "ok", "sessionKey": "agent:main:main", "agentId": "main", "startedAt": T,
       "endedAt": T + 900, "summary": "hi", "result": {"payloads": [{"text": "hi"}], "meta": {"model": "m"}},
       "error": None}
put("idempotency_log", "send", line("greet-1", T, send) + line("greet-2", T + 1000, send))
put("idempotency_log", "runs", line("c1", T, run) + line("a1", T + 5, {**run, "status": "error", "error": "boom"}))
put("idempotency_log", "torn", line("c1", T, run) + line("c2", T, run)[:40])
put("idempotency_log", "duplicate-and-expired", line("k", T, 1) + line("k", T + 1, 2) + line("old", T - 3600000, 3))
put("idempotency_log", "garbage", "not json\n\n[1,2]\n" + line("", T, 1) + line("k" * 300, T, 1) + line("ok", T, None))
put("idempotency_log", "many", "".join(line(f"k{i}", T + i, "x" * 300) for i in range(20)))

# --- inbound webhooks: a flags byte (see each target), then the body as the channel sends it
NOW_MS = 1796600000000
slack_msg = lambda ev: json.dumps({"type": "event_callback", "event_id": "Ev1", "team_id": "T1",
    "authorizations": [{"user_id": "U0BOT", "is_bot": True}], "event": ev})
put("inbound_slack", "challenge", b"\x00" + json.dumps({"type": "url_verification", "challenge": "c", "token": "t"}).encode())
put("inbound_slack", "channel", b"\x00" + slack_msg({"type": "message", "channel": "C1", "channel_type": "channel",
    "user": "U1", "text": "hi <@U0BOT> &amp; <@U2|ada>", "ts": "1796600000.000100", "thread_ts": "1796599999.000001"}).encode())
put("inbound_slack", "mention-configured", b"\x10" + slack_msg({"type": "app_mention", "channel": "C1", "user": "U1",
    "text": "<@U0BOT|keel>", "ts": "1.5", "user_profile": {"real_name": "Ada"}}).encode())
put("inbound_slack", "edit", b"\x00" + slack_msg({"type": "message", "subtype": "message_changed", "channel": "D1",
    "message": {"text": "x"}, "ts": "1.0"}).encode())
put("inbound_slack", "unsigned", b"\x02" + slack_msg({"type": "message", "channel": "D1", "channel_type": "im", "user": "U1", "text": "x", "ts": "1"}).encode())
feishu_ev = lambda chat, text, mentions: json.dumps({"schema": "2.0", "header": {"event_id": "e1",
    "event_type": "im.message.receive_v1", "create_time": str(NOW_MS - 1000), "token": "fuzz-token"},
    "event": {"sender": {"sender_id": {"open_id": "ou_u1"}, "sender_type": "user"},
    "message": {"message_id": "om_1", "chat_id": "oc_1", "chat_type": chat, "message_type": "text",
    "thread_id": "omt_1", "content": json.dumps({"text": text}), "create_time": str(NOW_MS - 2000), "mentions": mentions}}})
mentions = [{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "keel"}, {"key": "@_user_10", "id": {"open_id": "ou_x"}, "name": "X"}]
# flags: bit 0 key set, bit 1 sealed, bits 2-3 signature (0 good, 2 none), bit 5 bot id known
put("inbound_feishu", "plain-p2p", bytes([0x08]) + feishu_ev("p2p", "hello", []).encode())
put("inbound_feishu", "plain-group", bytes([0x28]) + feishu_ev("group", "@_user_1 hi @_user_10 @_user_1", mentions).encode())
put("inbound_feishu", "sealed-signed", bytes([0x23]) + feishu_ev("group", "@_user_1 hi", mentions).encode())
put("inbound_feishu", "challenge", bytes([0x08]) + json.dumps({"type": "url_verification", "challenge": "c", "token": "fuzz-token"}).encode())
put("inbound_feishu", "challenge-sealed", bytes([0x0b]) + json.dumps({"type": "url_verification", "challenge": "c", "token": "fuzz-token"}).encode())
put("inbound_feishu", "encrypt-garbage", bytes([0x01]) + b'{"encrypt":"P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="}')
