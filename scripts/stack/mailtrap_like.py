"""A real SMTP server that behaves like MailTrap's sandbox inbox, for tests.

MailDev and Mailpit accept everything; MailTrap (sandbox.smtp.mailtrap.io)
does not, and a sender that only ever met the former proves nothing about the
latter. This server keeps MailTrap's documented rules (see
shared/stack/NOTES.md, SMTP section) and can be told to break on purpose:

  - AUTH (PLAIN, LOGIN) is required before MAIL FROM:
    `530 5.7.0 Authentication required`; wrong credentials:
    `535 5.7.8 Authentication failed`.
  - With --cert/--key, STARTTLS is offered and required before AUTH and MAIL
    (`530 Must issue a STARTTLS command first`); AUTH is only advertised after it.
  - Rate limit per inbox: at most --rate accepted messages in any sliding
    window of --window-secs; past it each message is refused at the end of DATA
    with `550 5.7.0 Requested action not taken: too many emails per second`.
  - At most --max-connections authenticated connections at once (per account):
    the AUTH of one more gets `535 5.7.8 Too many connections per account`.
  - After --max-messages-per-connection messages (DATA transactions that got an
    answer, accepted or refused by the rate limit) on one connection, the next
    MAIL FROM gets `421 4.7.0 Too many messages per connection` and the server
    closes that connection.
  A limit of 0 means unlimited.

Usage (scripts/stack.sh installs aiosmtpd into .stack/venv-mailtrap):
  .stack/venv-mailtrap/bin/python scripts/stack/mailtrap_like.py \
      [--host 127.0.0.1] [--port 0] [--control-port 0] [--username U] [--password P] \
      [--rate N] [--window-secs 10] [--cert PEM --key PEM] [--max-connections 10] \
      [--max-messages-per-connection 100] [--stop-on-stdin-eof]

It binds only to --host (port 0 picks a free port). Once both ports listen it
prints ONE line on stdout, `{"smtp_port": N, "control_port": M}`, and nothing
else there; every SMTP and control event is logged as one line on stderr.
SIGTERM or SIGINT stop it at once; so does the end of stdin with
--stop-on-stdin-eof (a test harness keeps stdin open, so the server dies with it).

Control API (HTTP/JSON on --control-port, same host; every answer is JSON,
200 on success, 400 {"error": ...} on bad input, 404/405 on unknown routes):
  GET    /messages  accepted messages, oldest first: [{"message_id" (the Message-ID
                    header as sent, angle brackets included, or null), "mail_from",
                    "rcpt_tos": [...], "subject" (RFC 2047 decoded, or null), "data" (the
                    whole raw message as text), "received_at" (unix seconds),
                    "connection_id", "tls"}]
  DELETE /messages  empties that list -> {"deleted": n}
  GET    /stats     {"accepted", "throttled", "auth_refused", "rejected_recipients",
                    "connections_total", "max_concurrent_connections" (peak of open SMTP
                    connections), "max_messages_on_one_connection", "open_connections",
                    "listening"}
  POST   /auth      {"refuse": true, "reply": "535 5.7.0 Monthly messages limit reached"}:
                    every AUTH answers that reply (default `535 5.7.8 Authentication
                    failed`); {"refuse": false}: valid credentials are accepted again
  POST   /reject    {"rcpt": "x@y", "reply": "550 5.1.1 <x@y>: Recipient address rejected:
                    User unknown"}: RCPT TO of that address (any case) gets that reply
                    (this one is the default reply)
  POST   /down      stop listening on the SMTP port and drop every open SMTP connection
  POST   /up        listen again on the same port (both idempotent) -> {"listening", "smtp_port"}
"""

import argparse
import asyncio
import collections
import email
import json
import logging
import os
import re
import signal
import socket
import ssl
import stat
import sys
import time
import warnings
from email.header import decode_header, make_header

from aiosmtpd.smtp import SMTP, AuthResult, TLSSetupException

log = logging.getLogger("mailtrap-like")

REPLY_AUTH_FAILED = "535 5.7.8 Authentication failed"
REPLY_TOO_MANY_CONNECTIONS = "535 5.7.8 Too many connections per account"
REPLY_RATE_LIMITED = "550 5.7.0 Requested action not taken: too many emails per second"
REPLY_TOO_MANY_MESSAGES = "421 4.7.0 Too many messages per connection"

# A single-line negative SMTP reply: what /auth and /reject may make the server say.
_NEGATIVE_REPLY = re.compile(r"[45][0-9][0-9](?: [\x20-\x7e]*)?")
_FOLD = re.compile(r"\r?\n(?=[ \t])")

_HTTP_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


class BadRequest(Exception):
    pass


def _header(msg, name):
    value = msg.get(name)
    if value is None:
        return None
    return _FOLD.sub("", str(value)).strip()


def _text(value):
    """SMTPUTF8 arguments may carry undecodable bytes as surrogates: JSON (and
    serde_json) want real text."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _decoded(value):
    if value is None:
        return None
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a malformed encoded word: keep it as sent
        return value


class Inbox:
    """Everything the server knows; only touched from the event loop."""

    def __init__(self, args, tls_context):
        self.host = args.host
        self.port = args.port
        self.username = args.username.encode()
        self.password = args.password.encode()
        self.rate = args.rate
        self.window_secs = args.window_secs
        self.max_connections = args.max_connections
        self.max_messages = args.max_messages_per_connection
        self.tls_context = tls_context
        self.server = None
        self.connections = set()
        self.next_connection_id = 1
        self.accepted_at = collections.deque()  # monotonic times, for the rate limit
        self.messages = []
        self.refuse_reply = None
        self.rejects = {}
        self.stats = {
            "accepted": 0,
            "throttled": 0,
            "auth_refused": 0,
            "rejected_recipients": 0,
            "connections_total": 0,
            "max_concurrent_connections": 0,
            "max_messages_on_one_connection": 0,
        }

    # ------------------------------------------------------------ listening

    def _new_session(self):
        return Session(
            self,
            Hooks(self),
            hostname="smtp.mailtrap-like.test",
            ident="mailtrap-like ESMTP (aiosmtpd)",
            enable_SMTPUTF8=True,
            tls_context=self.tls_context,
            require_starttls=self.tls_context is not None,
            auth_required=True,
            auth_require_tls=self.tls_context is not None,
            authenticator=self.authenticate,
        )

    async def up(self):
        if self.server is not None:
            return
        self.server = await asyncio.get_running_loop().create_server(
            self._new_session, host=self.host, port=self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("smtp listening on %s:%d", self.host, self.port)

    def down(self):
        if self.server is not None:
            self.server.close()
            self.server = None
            log.info("smtp stopped listening on %s:%d", self.host, self.port)
        for conn in list(self.connections):
            conn.drop("the server went down")

    # ------------------------------------------------------------ connections

    def opened(self, conn):
        conn.connection_id = self.next_connection_id
        self.next_connection_id += 1
        self.connections.add(conn)
        self.stats["connections_total"] += 1
        self.stats["max_concurrent_connections"] = max(
            self.stats["max_concurrent_connections"], len(self.connections)
        )
        log.info("%s connected (%d open)", conn.tag(), len(self.connections))
        if self.server is None:  # accepted just before /down closed the socket
            conn.drop("the server is down")

    def closed(self, conn):
        if conn in self.connections:
            self.connections.discard(conn)
            log.info("%s disconnected after %d message(s) (%d open)", conn.tag(), conn.messages, len(self.connections))

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        login = getattr(auth_data, "login", b"")
        password = getattr(auth_data, "password", b"")
        user = login.decode("utf-8", "replace")
        if self.refuse_reply is not None:
            reply, why = self.refuse_reply, "refused (refuse mode)"
        elif login != self.username or password != self.password:
            reply, why = REPLY_AUTH_FAILED, "wrong credentials"
        elif self.max_connections and (
            sum(1 for c in self.connections if c.account_slot and c is not server) >= self.max_connections
        ):
            reply, why = REPLY_TOO_MANY_CONNECTIONS, f"over {self.max_connections} connections"
        else:
            server.account_slot = True
            log.info("%s AUTH %s ok user=%s", server.tag(), mechanism, user)
            return AuthResult(success=True, auth_data=auth_data)
        self.stats["auth_refused"] += 1
        log.info("%s AUTH %s user=%s %s: %s", server.tag(), mechanism, user, why, reply)
        return AuthResult(success=False, handled=False, message=reply)

    def deliver(self, conn, envelope):
        conn.messages += 1
        self.stats["max_messages_on_one_connection"] = max(
            self.stats["max_messages_on_one_connection"], conn.messages
        )
        now = time.monotonic()
        while self.accepted_at and self.accepted_at[0] <= now - self.window_secs:
            self.accepted_at.popleft()
        if self.rate and len(self.accepted_at) >= self.rate:
            self.stats["throttled"] += 1
            log.info(
                "%s DATA throttled (%d accepted in the last %ss): %s",
                conn.tag(), len(self.accepted_at), self.window_secs, REPLY_RATE_LIMITED,
            )
            return REPLY_RATE_LIMITED
        self.accepted_at.append(now)
        raw = envelope.original_content or b""
        try:
            msg = email.message_from_string(raw.decode("utf-8", "replace"))
            message_id = _header(msg, "Message-ID")
            subject = _decoded(_header(msg, "Subject"))
        except Exception:  # keep what can be kept: the raw data
            message_id = subject = None
        self.messages.append(
            {
                "message_id": message_id,
                "mail_from": _text(envelope.mail_from),
                "rcpt_tos": [_text(r) for r in envelope.rcpt_tos],
                "subject": subject,
                "data": raw.decode("utf-8", "replace"),
                "received_at": time.time(),
                "connection_id": conn.connection_id,
                "tls": conn.session.ssl is not None,
            }
        )
        self.stats["accepted"] += 1
        n = len(self.messages)
        log.info(
            "%s DATA accepted #%d message_id=%s from=%s to=%s (%d bytes)",
            conn.tag(), n, message_id, envelope.mail_from, ",".join(envelope.rcpt_tos), len(raw),
        )
        return f"250 2.0.0 Ok: queued as {n}"

    # ------------------------------------------------------------ control API

    def route(self, method, path, body):
        routes = {
            "/messages": {"GET": self.get_messages, "DELETE": self.delete_messages},
            "/stats": {"GET": self.get_stats},
            "/auth": {"POST": self.post_auth},
            "/reject": {"POST": self.post_reject},
            "/down": {"POST": self.post_down},
            "/up": {"POST": self.post_up},
        }
        if path not in routes:
            return 404, {"error": f"no route {path}"}
        handler = routes[path].get(method)
        if handler is None:
            return 405, {"error": f"{method} {path} is not allowed (use {', '.join(routes[path])})"}
        if body.strip():
            try:
                payload = json.loads(body)
            except ValueError as e:
                raise BadRequest(f"the body is not JSON: {e}") from None
        else:
            payload = {}
        if not isinstance(payload, dict):
            raise BadRequest("the body must be a JSON object")
        return handler(payload)

    def get_messages(self, _):
        return 200, self.messages

    def delete_messages(self, _):
        n = len(self.messages)
        self.messages = []
        log.info("control: %d message(s) deleted", n)
        return 200, {"deleted": n}

    def get_stats(self, _):
        return 200, {
            **self.stats,
            "open_connections": len(self.connections),
            "listening": self.server is not None,
        }

    @staticmethod
    def _reply(payload, default):
        reply = payload.get("reply", default)
        if not isinstance(reply, str) or not _NEGATIVE_REPLY.fullmatch(reply):
            raise BadRequest(f"reply must be one line starting with a 4xx or 5xx code, got {reply!r}")
        return reply

    def post_auth(self, payload):
        refuse = payload.get("refuse")
        if not isinstance(refuse, bool):
            raise BadRequest('"refuse" must be true or false')
        if refuse:
            self.refuse_reply = self._reply(payload, REPLY_AUTH_FAILED)
            log.info("control: every AUTH now answers %r", self.refuse_reply)
        else:
            self.refuse_reply = None
            log.info("control: valid credentials are accepted again")
        return 200, {"refuse": refuse, "reply": self.refuse_reply}

    def post_reject(self, payload):
        rcpt = payload.get("rcpt")
        if not isinstance(rcpt, str) or not rcpt.strip("<> ") or any(c.isspace() for c in rcpt.strip("<> ")):
            raise BadRequest('"rcpt" must be an address')
        rcpt = rcpt.strip("<> ")
        reply = self._reply(payload, f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown")
        self.rejects[rcpt.lower()] = reply
        log.info("control: RCPT TO <%s> now answers %r", rcpt, reply)
        return 200, {"rcpt": rcpt, "reply": reply}

    def post_down(self, _):
        self.down()
        return 200, {"listening": False, "smtp_port": self.port}

    async def post_up(self, _):
        try:
            await self.up()
        except OSError as e:
            return 500, {"error": f"cannot listen again on {self.host}:{self.port}: {e}"}
        return 200, {"listening": True, "smtp_port": self.port}

    async def serve_http(self, reader, writer):
        """One request per connection (answers say `Connection: close`)."""
        try:
            request_line = await reader.readline()
            if not request_line.strip():
                return
            try:
                method, target, _version = request_line.decode("latin-1").split()
            except ValueError:
                status, payload = 400, {"error": "malformed request line"}
                target = "?"
                method = "?"
            else:
                status, payload = None, None
            headers = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if status is None:
                try:
                    if "chunked" in headers.get("transfer-encoding", "").lower():
                        raise BadRequest("chunked bodies are not supported: send Content-Length")
                    try:
                        length = int(headers.get("content-length", "0") or 0)
                    except ValueError:
                        raise BadRequest("bad Content-Length") from None
                    if length < 0 or length > 1 << 20:
                        raise BadRequest("bad Content-Length")
                    body = (await reader.readexactly(length)).decode("utf-8") if length else ""
                    result = self.route(method.upper(), target.split("?", 1)[0], body)
                    if asyncio.iscoroutine(result):
                        result = await result
                    status, payload = result
                except BadRequest as e:
                    status, payload = 400, {"error": str(e)}
                except UnicodeDecodeError:
                    status, payload = 400, {"error": "the body is not UTF-8"}
            if status != 200 or method.upper() != "GET":
                log.info("control: %s %s -> %d%s", method, target, status,
                         f" {payload['error']}" if status != 200 else "")
            data = json.dumps(payload).encode()
            writer.write(
                (
                    f"HTTP/1.1 {status} {_HTTP_REASONS.get(status, 'Error')}\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                + data
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


class Session(SMTP):
    """One SMTP connection, with the per-connection counters the limits need."""

    def __init__(self, inbox, handler, **kwargs):
        super().__init__(handler, **kwargs)
        self.inbox = inbox
        self.connection_id = 0
        self.messages = 0
        self.account_slot = False  # authenticated: counts against --max-connections

    def tag(self):
        peer = self.session.peer if self.session is not None else None
        peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        return f"conn={self.connection_id} peer={peer}"

    def connection_made(self, transport):
        first = self.transport is None  # called again on the TLS transport after STARTTLS
        super().connection_made(transport)
        if first:
            self.inbox.opened(self)

    def connection_lost(self, error):
        self.inbox.closed(self)
        super().connection_lost(error)

    def drop(self, why):
        log.info("%s dropped: %s", self.tag(), why)
        transport = self._original_transport or self.transport
        if transport is not None:
            transport.abort()

    async def smtp_STARTTLS(self, arg):
        try:
            await super().smtp_STARTTLS(arg)
        except Exception as e:
            log.info("%s STARTTLS failed: %r", self.tag(), e.__cause__ or e)
            raise
        if self._tls_protocol is not None and self.session.ssl is not None:
            cipher = self.session.ssl.get("cipher")
            log.info("%s STARTTLS done %s", self.tag(), cipher[1] if cipher else "")

    async def smtp_MAIL(self, arg):
        if self.inbox.max_messages and self.messages >= self.inbox.max_messages:
            log.info("%s MAIL refused after %d messages: %s (closing)", self.tag(), self.messages, REPLY_TOO_MANY_MESSAGES)
            await self.push(REPLY_TOO_MANY_MESSAGES)
            # As aiosmtpd's own QUIT does: stop reading commands, then close.
            self._handler_coroutine.cancel()
            self.transport.close()
            return
        await super().smtp_MAIL(arg)

    async def smtp_QUIT(self, arg):
        log.info("%s QUIT", self.tag())
        await super().smtp_QUIT(arg)


class Hooks:
    """aiosmtpd handler hooks: `server` is the Session of the connection."""

    def __init__(self, inbox):
        self.inbox = inbox

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        log.info("%s EHLO %s", server.tag(), hostname)
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        log.info("%s MAIL FROM:<%s>", server.tag(), address)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.inbox.rejects.get(address.lower())
        if reply is not None:
            self.inbox.stats["rejected_recipients"] += 1
            log.info("%s RCPT TO:<%s> rejected: %s", server.tag(), address, reply)
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        log.info("%s RCPT TO:<%s>", server.tag(), address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        return self.inbox.deliver(server, envelope)

    async def handle_exception(self, error):
        # aiosmtpd closes the connection after a failed handshake (logged by
        # Session.smtp_STARTTLS); anything else is a bug here: log it whole.
        if not isinstance(error, TLSSetupException):
            log.exception("SMTP session exception")
        return f"500 Error: ({error.__class__.__name__}) {error}"


def parse_args(argv):
    def count(text):
        value = int(text)
        if value < 0:
            raise argparse.ArgumentTypeError("must be >= 0")
        return value

    def positive(text):
        value = float(text)
        if not value > 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return value

    p = argparse.ArgumentParser(description="A MailTrap-sandbox-like SMTP server for tests.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (SMTP and control API)")
    p.add_argument("--port", type=count, default=0, help="SMTP port (0: a free one)")
    p.add_argument("--control-port", type=count, default=0, help="control API port (0: a free one)")
    p.add_argument("--username", default="inbox-user")
    p.add_argument("--password", default="inbox-pass")
    p.add_argument("--rate", type=count, default=0, help="accepted emails per window (0: unlimited)")
    p.add_argument("--window-secs", type=positive, default=10.0, help="the rate limit's sliding window")
    p.add_argument("--cert", help="PEM certificate (chain): offer and require STARTTLS")
    p.add_argument("--key", help="PEM private key of --cert")
    p.add_argument("--max-connections", type=count, default=10, help="authenticated connections at once (0: unlimited)")
    p.add_argument("--max-messages-per-connection", type=count, default=100, help="0: unlimited")
    p.add_argument("--stop-on-stdin-eof", action="store_true", help="exit when stdin closes")
    args = p.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        p.error("--cert and --key go together")
    return args


class _StdinWatch(asyncio.Protocol):
    """Sets `stop` when stdin reaches its end (the parent that holds it died)."""

    def __init__(self, stop):
        self.stop = stop

    def data_received(self, data):
        pass

    def eof_received(self):
        self.stop.set()

    def connection_lost(self, exc):
        self.stop.set()


async def run(args):
    if args.stop_on_stdin_eof:
        mode = os.fstat(sys.stdin.fileno()).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty()):
            log.error("--stop-on-stdin-eof needs stdin to be a pipe, a socket or a terminal")
            return 2
    tls_context = None
    if args.cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.minimum_version = ssl.TLSVersion.TLSv1_2
        tls_context.load_cert_chain(args.cert, args.key)
    # Bind one address (a name like localhost may resolve to several, each
    # with its own port 0 pick).
    host = socket.getaddrinfo(args.host, None, type=socket.SOCK_STREAM)[0][4][0]
    args.host = host
    inbox = Inbox(args, tls_context)
    await inbox.up()
    control = await asyncio.start_server(inbox.serve_http, host=host, port=args.control_port, reuse_address=True)
    control_port = control.sockets[0].getsockname()[1]
    log.info(
        "control API on http://%s:%d; user=%s rate=%s/%ss tls=%s max_connections=%s max_messages_per_connection=%s",
        host, control_port, args.username, args.rate or "unlimited", args.window_secs,
        tls_context is not None, args.max_connections or "unlimited", args.max_messages_per_connection or "unlimited",
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.stop_on_stdin_eof:
        await loop.connect_read_pipe(lambda: _StdinWatch(stop), sys.stdin.buffer)

    sys.stdout.write(json.dumps({"smtp_port": inbox.port, "control_port": control_port}) + "\n")
    sys.stdout.flush()

    await stop.wait()
    log.info("stopping")
    control.close()
    inbox.down()
    await asyncio.sleep(0)  # let the dropped connections see connection_lost
    return 0


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d mailtrap-like %(message)s",
        datefmt="%H:%M:%S",
    )
    # aiosmtpd's own logger repeats every command; keep only its errors.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # Plain AUTH without TLS is what a test server without --cert is for.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    try:
        return asyncio.run(run(args))
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
