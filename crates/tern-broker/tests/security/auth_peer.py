#!/usr/bin/env python3
"""Real peers for the broker's JWT and HTTP hook tests (pyjwt + cryptography, standard library).

  auth_peer.py keys DIR           RSA, EC P-256 and Ed25519 key pairs and an HMAC secret in DIR
                                  (*.key private PEM, *.pub public PEM, hmac.secret) and
                                  DIR/jwks.json with the three public keys (kid rsa1, ec1, ed1).
  auth_peer.py tokens DIR SPEC    SPEC: JSON list of {"name", "alg", "key", "claims", "kid"?,
                                  "raw_header"?}; prints a JSON object name -> token. "key" is
                                  rsa, ec, ed, hmac or a file name in DIR; alg "none" makes an
                                  unsigned token by hand (pyjwt refuses to).
  auth_peer.py serve DIR [CERT KEY]
                                  An HTTP/1.1 service on 127.0.0.1, port 0 (HTTPS with CERT and
                                  KEY, PEM files); prints "PORT n".
                                  GET /jwks.json: DIR/jwks.json (503 while DIR/jwks.down exists).
                                  POST /auth: the answer depends on the user name (see answer()).
                                  GET /stats: {"requests": n, "connections": n} seen so far (not counting /stats).
"""

import base64
import json
import os
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"requests": 0, "connections": 0}
LOCK = threading.Lock()
# The ACL questions asked, in order: [action, topic].
ACL_ASKED = []


def keys(d):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    made = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        # A second RSA key nobody trusts.
        "rsa-other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    for name, k in made.items():
        with open(os.path.join(d, name + ".key"), "wb") as f:
            f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
        with open(os.path.join(d, name + ".pub"), "wb") as f:
            f.write(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    with open(os.path.join(d, "hmac.secret"), "w") as f:
        f.write(base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=") + "\n")
    jwks = []
    for name, kid, alg_cls, alg in [("rsa", "rsa1", RSAAlgorithm, "RS256"), ("ec", "ec1", ECAlgorithm, "ES256"),
                                    ("ed", "ed1", OKPAlgorithm, "EdDSA")]:
        jwk = json.loads(alg_cls.to_jwk(made[name].public_key()))
        jwk.update({"kid": kid, "use": "sig", "alg": alg})
        jwks.append(jwk)
    with open(os.path.join(d, "jwks.json"), "w") as f:
        json.dump({"keys": jwks}, f)


def b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def tokens(d, spec):
    import jwt

    out = {}
    for t in json.loads(spec):
        claims = t["claims"]
        if t["alg"] == "none":
            header = t.get("raw_header", {"alg": "none", "typ": "JWT"})
            out[t["name"]] = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode()) + "."
            continue
        key_name = t["key"]
        if key_name == "hmac":
            with open(os.path.join(d, "hmac.secret")) as f:
                key = f.read().strip()
        else:
            with open(os.path.join(d, key_name + ".key"), "rb") as f:
                key = f.read()
        headers = {"kid": t["kid"]} if t.get("kid") else None
        out[t["name"]] = jwt.encode(claims, key, algorithm=t["alg"], headers=headers)
    print(json.dumps(out))


def answer(body):
    """The hook's behaviour, chosen by the user name of the CONNECT."""
    user = body.get("username") or ""
    if user.startswith("allow"):
        return 200, json.dumps({"result": "allow"})
    if user == "acl":
        return 200, json.dumps({"result": "allow", "username": "from-hook",
                                "acl": {"publish": ["hook/%c/#"], "subscribe": ["hook/#"]}})
    if user == "empty":
        return 200, ""
    if user == "deny":
        return 200, json.dumps({"result": "deny"})
    if user == "forbidden":
        return 403, ""
    if user == "ignore":
        return 200, json.dumps({"result": "ignore"})
    if user == "error":
        return 500, "internal error"
    if user == "garbage":
        return 200, "<html>not json</html>"
    if user == "slow":
        time.sleep(5)
        return 200, json.dumps({"result": "allow"})
    if user == "password":
        # Allowed when the password is "open sesame".
        ok = body.get("password") == "open sesame"
        return 200, json.dumps({"result": "allow" if ok else "deny"})
    return 200, json.dumps({"result": "ignore"})


def acl_answer(body):
    """The ACL hook's behaviour, chosen by the first level of the topic."""
    first = (body.get("topic") or "").split("/")[0]
    with LOCK:
        ACL_ASKED.append([body.get("action"), body.get("topic")])
    if first == "ok":
        return 200, json.dumps({"result": "allow"})
    if first == "no":
        return 200, json.dumps({"result": "deny"})
    if first == "ignore":
        return 200, json.dumps({"result": "ignore"})
    if first == "error":
        return 500, "internal error"
    if first == "garbage":
        return 200, "<html>not json</html>"
    if first == "slow":
        time.sleep(5)
        return 200, json.dumps({"result": "allow"})
    return 403, ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with LOCK:
            STATS["connections"] += 1

    def log_message(self, *args):
        pass

    def send(self, status, body, ctype="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            # The test asking: neither its request nor its connection counts.
            with LOCK:
                if not getattr(self, "stats_conn", False):
                    STATS["connections"] -= 1
                    self.stats_conn = True
                return self.send(200, json.dumps(dict(STATS, acl=ACL_ASKED)))
        with LOCK:
            STATS["requests"] += 1
        if self.path == "/jwks.json":
            if os.path.exists(os.path.join(self.server.dir, "jwks.down")):
                return self.send(503, "down")
            with open(os.path.join(self.server.dir, "jwks.json")) as f:
                return self.send(200, f.read())
        self.send(404, "")

    def do_POST(self):
        with LOCK:
            STATS["requests"] += 1
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        status, text = acl_answer(body) if self.path == "/acl" else answer(body)
        self.send(status, text)


class Server(ThreadingHTTPServer):
    daemon_threads = True


def serve(d, cert=None, key=None):
    srv = Server(("127.0.0.1", 0), Handler)
    srv.dir = d
    if cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("PORT", srv.server_address[1], flush=True)
    # Stop when the test that started us goes away (its end of stdin closes).
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    srv.serve_forever()


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "keys":
        keys(sys.argv[2])
    elif cmd == "tokens":
        tokens(sys.argv[2], sys.argv[3])
    elif cmd == "serve":
        serve(*sys.argv[2:5])
    else:
        sys.exit("unknown command " + cmd)
