#!/usr/bin/python3
"""Drive a LAVA coordinator with LAVA's OWN client code (Debian 12 packages).

LAVA's code is never kept in this repository: scripts/install-lava-clients.sh
downloads lava-coordinator, lava-common and lava-dispatcher 2023.01 from Debian and
unpacks them into .cache/lava-debs/root/. This driver imports from there.

Subcommands (all exit 0 on success, 1 on a failed expectation, 2 on usage/setup
errors; `status` exits with status.py's own code):

  status --host H --port P [--deadline S]
      runs lava/coordinator/status.py (lava-coordinator package): group_data, then
      clear_group, for client "status" in group "group1".
  pair --host H --port P [--poll-delay N] [--timeout S] [--deadline S] [--lenient]
      two lava_dispatcher.protocols.multinode.MultinodeProtocol clients (threads),
      roles "server" and "client", one fresh group of 2: group_data barrier,
      server lava_send ready {"ip": "10.0.0.1"}, client lava_wait ready, client
      lava_wait_all ready server, both lava_sync done, both lava_send results +
      lava_wait_all results, both finalise (clear_group). Prints a JSON summary.
  frames --host H --port P [--no-check]
      one raw framed request of each type (and some malformed ones), prints the raw
      replies as JSON and checks them against what Debian's lava-coordinator answers.
  barrier --host H --port P --nodes N --rounds R [--poll-delays 3,1] [--deadline S]
      N MultinodeProtocol clients (threads) in one fresh group: the group_data start
      barrier, then R lava_sync rounds per poll delay. Each round starts with every
      client released at once and ends when the last has its reply. Prints JSON
      {"setup_s", "rounds_s": {delay: [...]}, "connection_errors": {delay: n},
      "gave_up"}; --give-up S stops after S seconds with what was measured.
  reference --port P
      runs Debian's lava-coordinator daemon itself in the foreground (for replays).
  selftest
      starts Debian's lava-coordinator on a free loopback port, runs status, pair and
      frames against it, stops it.

Interpreter: Debian's /usr/bin/python3, which the packages are built for; their
imports (yaml, pexpect, requests) come from python3-yaml, python3-pexpect and
python3-requests. When started with another python3 this script re-executes itself
with /usr/bin/python3 (set LAVA_COMPAT_ANY_PYTHON=1 to prevent that).

The only shim: LAVA hard-codes its settings file, "/etc/lava-coordinator/
lava-coordinator.conf", as a string constant inside status.main() and inside
MultinodeProtocol.set_up(). Rather than write to /etc, we run copies of those two
functions whose code object differs from LAVA's in that one constant only, pointing
at a temporary file holding {"port", "coordinator_hostname", "blocksize",
"poll_delay"}. LAVA's own read_settings() then parses it. For `pair`, the protocol
instance's _send_message/_recv_message are additionally wrapped to *record* every
request and reply (the wrappers call LAVA's methods unchanged).
"""

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from pathlib import Path

DEBIAN_PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parents[2]
LAVA_CONF = "/etc/lava-coordinator/lava-coordinator.conf"
INSTALL_HINT = "run: bash scripts/install-lava-clients.sh"


def _reexec_with_debian_python():
    if os.environ.get("LAVA_COMPAT_ANY_PYTHON") or not os.path.exists(DEBIAN_PYTHON):
        return
    if os.path.realpath(sys.executable) != os.path.realpath(DEBIAN_PYTHON):
        os.environ["LAVA_COMPAT_ANY_PYTHON"] = "1"  # no loop, whatever happens
        os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])


def lava_root():
    return Path(os.environ.get("LAVA_DEBS_DIR", REPO / ".cache" / "lava-debs")) / "root"


def lava_site():
    return lava_root() / "usr" / "lib" / "python3" / "dist-packages"


def die(msg, code=2):
    print("lava_clients: error: %s" % msg, file=sys.stderr)
    sys.exit(code)


def import_lava():
    site = lava_site()
    if not (site / "lava_dispatcher" / "protocols" / "multinode.py").is_file():
        die("LAVA packages not extracted under %s; %s" % (site, INSTALL_HINT))
    sys.path.insert(0, str(site))
    try:
        import lava.coordinator.status  # noqa: F401
        import lava_dispatcher.protocols.multinode  # noqa: F401
    except ImportError as exc:
        die("cannot import LAVA's code with %s: %s; %s" % (sys.executable, exc, INSTALL_HINT))


def lava_version():
    try:
        return (lava_site() / "lava_common" / "VERSION").read_text().strip()
    except OSError:
        return "?"


def with_conf_path(func, conf_path):
    """A copy of `func` whose code differs only in the constant LAVA_CONF."""
    code = func.__code__
    hits = [c for c in code.co_consts if isinstance(c, str) and c == LAVA_CONF]
    if len(hits) != 1:
        die("%s no longer holds %r once; the shim needs updating" % (func.__qualname__, LAVA_CONF))
    consts = tuple(
        conf_path if isinstance(c, str) and c == LAVA_CONF else c for c in code.co_consts
    )
    new = types.FunctionType(
        code.replace(co_consts=consts),
        func.__globals__,
        func.__name__,
        func.__defaults__,
        func.__closure__,
    )
    new.__qualname__ = func.__qualname__
    return new


def write_conf(directory, host, port, poll_delay=1, blocksize=4096):
    path = os.path.join(directory, "lava-coordinator.conf")
    with open(path, "w") as f:
        json.dump(
            {
                "port": port,
                "coordinator_hostname": host,
                "blocksize": blocksize,
                "poll_delay": poll_delay,
            },
            f,
        )
    return path


def setup_logging(verbose):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
    logger = logging.getLogger("dispatcher")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


# --------------------------------------------------------------------------- status


def cmd_status(args):
    import_lava()
    from lava.coordinator import status

    print(
        "lava_clients: LAVA %s status.py against %s:%s" % (lava_version(), args.host, args.port),
        file=sys.stderr,
    )
    tmp = tempfile.mkdtemp(prefix="lava-status-")

    def hung():
        # status.py's sockets have no timeout: a coordinator that waits for EOF before
        # replying (status.py never half-closes) or never replies hangs it for ever.
        print("lava_clients: status.py still blocked after --deadline %ss" % args.deadline,
              file=sys.stderr)
        sys.stdout.flush()
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(124)

    watchdog = threading.Timer(args.deadline, hung)
    watchdog.daemon = True
    watchdog.start()
    main = with_conf_path(status.main, write_conf(tmp, args.host, args.port))
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        watchdog.cancel()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.flush()
    return code


# --------------------------------------------------------------------------- pair

ROLES = ("server", "client")
IP = "10.0.0.1"
LOCK = threading.Lock()  # guards the records while the summary is taken


class Client:
    """One LAVA MultinodeProtocol instance plus a record of its exchanges."""

    def __init__(self, role, ids, group, conf, timeout):
        from lava_dispatcher.protocols.multinode import MultinodeProtocol

        self.role = role
        self.job_id = job_id = ids[role]
        # The job parameters lava-server gives each sub-job of a MultiNode job.
        self.parameters = {
            "protocols": {
                MultinodeProtocol.name: {
                    "target_group": group,
                    "role": role,
                    "group_size": 2,
                    "sub_id": ROLES.index(role),
                    "roles": {ids[r]: r for r in ROLES},
                    "timeout": {"seconds": timeout},
                }
            }
        }
        self.proto = MultinodeProtocol(self.parameters, job_id)
        self.proto.set_up = types.MethodType(with_conf_path(MultinodeProtocol.set_up, conf), self.proto)
        # What MultinodeMixin.SignalDirector.setup() adds to every API call.
        self.base_message = {"timeout": timeout}
        self.steps = []
        self.error = None
        self.done = False
        orig_send, orig_recv = self.proto._send_message, self.proto._recv_message

        def send(message):
            with LOCK:
                self._exchange_log().append({"request": json.loads(message), "reply": None})
            return orig_send(message)

        def recv():
            raw = orig_recv()
            try:
                reply = json.loads(raw)
            except ValueError:
                reply = {"not_json": raw}
            with LOCK:
                log = self._exchange_log()
                if log and log[-1]["reply"] is None:
                    log[-1]["reply"] = reply
                else:
                    log.append({"request": None, "reply": reply})
            return raw

        self.proto._send_message = send
        self.proto._recv_message = recv

    def _exchange_log(self):
        return self.steps[-1]["exchanges"]

    def step(self, name, call, run, check):
        rec = {"step": name, "call": call, "exchanges": []}
        with LOCK:
            self.steps.append(rec)
        start = time.monotonic()
        try:
            result = run()
        finally:
            rec["seconds"] = round(time.monotonic() - start, 3)
        rec["result"] = result
        ok, expected = check(result, [e["reply"] for e in rec["exchanges"]])
        rec["expected"] = expected
        rec["ok"] = ok
        return ok

    def api(self, name, msg, check):
        """An API call as the test shell's <LAVA_...> marker makes the dispatcher do it."""
        msg = dict(msg)
        msg.update(self.base_message)
        return self.step(name, msg, lambda: self.proto(msg), check)


def final(replies):
    return replies[-1] if replies else None


def expect_result(exact, final_reply=None, lenient=False):
    """protocol() must return `exact`; in strict mode the last reply must also match."""

    def check(result, replies):
        ok = result == exact
        exp = {"result": exact}
        if final_reply is not None and not lenient:
            ok = ok and final(replies) == final_reply
            exp["final_reply"] = final_reply
        return ok, exp

    return check


def run_pair_client(c, peers, lenient):
    srv, cli = peers["server"], peers["client"]
    try:
        roles = {srv: "server", cli: "client"}
        gd = {"response": "group_data", "roles": roles}

        def check_gd(result, replies):
            if lenient:
                return (final(replies) or {}).get("response") == "group_data", {
                    "final_reply.response": "group_data"
                }
            return final(replies) == gd, {"final_reply": gd}

        if not c.step("group_data", "set_up()", c.proto.set_up, check_gd):
            return
        ack = {"response": "ack"}
        ready = {srv: {"ip": IP}}
        if c.role == "server":
            ok = c.api(
                "lava_send ready",
                {"request": "lava_send", "messageID": "ready", "message": {"ip": IP}},
                expect_result("ack", ack, lenient),
            )
        else:
            ok = c.api(
                "lava_wait ready",
                {"request": "lava_wait", "messageID": "ready", "message": None},
                expect_result(ready, {"response": "ack", "message": ready}, lenient),
            ) and c.api(
                "lava_wait_all ready server",
                {"request": "lava_wait_all", "messageID": "ready", "role": "server"},
                expect_result(ready, {"response": "ack", "message": ready}, lenient),
            )
        if not ok:
            return

        def check_sync(result, replies):
            if lenient:
                return result != "nack", {"result": "anything but 'nack'"}
            want = {"response": "ack", "message": "done"}
            return result == "done" and final(replies) == want, {
                "result": "done",
                "final_reply": want,
            }

        if not c.api(
            "lava_sync done",
            {"request": "lava_sync", "messageID": "done", "message": None},
            check_sync,
        ):
            return
        if not c.api(
            "lava_send results",
            {"request": "lava_send", "messageID": "results", "message": {"role": c.role}},
            expect_result("ack", ack, lenient),
        ):
            return
        results = {srv: {"role": "server"}, cli: {"role": "client"}}
        if not c.api(
            "lava_wait_all results",
            {"request": "lava_wait_all", "messageID": "results", "role": None},
            expect_result(results, {"response": "ack", "message": results}, lenient),
        ):
            return

        def check_clear(result, replies):
            if lenient:
                return (final(replies) or {}).get("response") in ("ack", "nack"), {
                    "final_reply.response": "ack or nack"
                }
            return final(replies) == ack, {"final_reply": ack}

        if not c.step("clear_group", "finalise_protocol()", c.proto.finalise_protocol, check_clear):
            return
        c.done = True
    except BaseException as exc:  # report everything, including LAVA's own errors
        c.error = "%s: %s" % (type(exc).__name__, exc)


def cmd_pair(args):
    import_lava()
    setup_logging(args.verbose)
    if args.poll_delay * 10 < 1:
        die("--poll-delay must be >= 0.1 (LAVA computes c_iter %% int(10 * poll_delay))")
    group = str(uuid.uuid4())
    base_id = "%d" % (int(time.time() * 1000) % 10**9)
    ids = {role: "%s.%d" % (base_id, i) for i, role in enumerate(ROLES)}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lava-pair-") as tmp:
        delay = int(args.poll_delay) if float(args.poll_delay).is_integer() else args.poll_delay
        conf = write_conf(tmp, args.host, args.port, poll_delay=delay)
        clients = [Client(role, ids, group, conf, args.timeout) for role in ROLES]
        threads = [
            threading.Thread(target=run_pair_client, args=(c, ids, args.lenient), name=c.role, daemon=True)
            for c in clients
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, args.deadline - (time.monotonic() - start)))
    failures = []
    with LOCK:
        snapshot = json.loads(json.dumps([c.steps for c in clients], default=str))
    for c, t, steps in zip(clients, threads, snapshot):
        replies = [e["reply"] for s in steps for e in s["exchanges"]]
        bad = [r for r in replies if isinstance(r, dict) and "not_json" in r]
        if bad:
            failures.append(
                "%s: %d repl%s not JSON as LAVA's client read %s (it does recv(8) for the header, "
                "then recv(4096) until it has counted 4096 bytes per recv, so header+body must "
                "go out in one write): first %r" % (
                    c.role, len(bad), "y was" if len(bad) == 1 else "ies were",
                    "them" if len(bad) > 1 else "it", bad[0]["not_json"][:80]))
        if t.is_alive():
            failures.append(
                "%s: still running after --deadline %ss in step %r after %d exchange(s), last "
                "reply %s (LAVA's client polls forever on 'wait', on an empty reply, and on "
                "refused connections)" % (
                    c.role, args.deadline, steps[-1]["step"] if steps else None, len(replies),
                    json.dumps(replies[-1] if replies else None)[:200]))
        elif c.error:
            failures.append("%s: %s" % (c.role, c.error))
        for s in steps:
            if s.get("ok") is False:
                failures.append("%s: step '%s' got result %s (replies %s), expected %s" % (
                    c.role, s["step"], json.dumps(s.get("result")),
                    json.dumps([e["reply"] for e in s["exchanges"]]), json.dumps(s["expected"])))
        if not c.done and not t.is_alive() and not c.error and not failures:
            failures.append("%s: did not finish" % c.role)
    summary = {
        "lava_version": lava_version(),
        "python": sys.version.split()[0],
        "coordinator": "%s:%s" % (args.host, args.port),
        "group": group,
        "poll_delay": args.poll_delay,
        "mode": "lenient" if args.lenient else "strict",
        "seconds": round(time.monotonic() - start, 3),
        "ok": not failures,
        "failures": failures,
        "clients": {
            c.role: {"client_name": c.job_id, "finished": c.done, "steps": steps}
            for c, steps in zip(clients, snapshot)
        },
    }
    print(json.dumps(summary, indent=2))
    sys.stdout.flush()
    if failures:
        print("lava_clients: pair FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
    else:
        print("lava_clients: pair ok (%.1fs)" % summary["seconds"], file=sys.stderr)
    sys.stderr.flush()
    os._exit(0 if not failures else 1)  # daemon threads may be blocked in LAVA's poll loop


# --------------------------------------------------------------------------- frames


def raw_request(host, port, payload, half_close=True, timeout=10.0):
    """One request framed like LAVA's client: 8 uppercase hex digits, then the body,
    each with its own send(); then shutdown(SHUT_WR) as MultinodeProtocol.poll does
    (status.py does not half-close: half_close=False). Reads the reply frame, then
    up to 1 s more to see whether the server closes the connection."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    header = b"%08X" % len(body) if not isinstance(payload, bytes) else payload[:8]
    if isinstance(payload, bytes):
        body = payload[8:]
    out = {}
    start = time.monotonic()
    data = b""
    closed = False
    with socket.create_connection((host, port), timeout=timeout) as s:
        want = None
        try:
            s.send(header)
            s.send(body)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # LAVA closes right after a bad 8-byte header, maybe before the body is out.
            out["send_error"] = "%s: %s" % (type(exc).__name__, exc)
        try:
            while want is None or len(data) < want:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
                if want is None and len(data) >= 8:
                    try:
                        want = 8 + int(data[:8], 16)
                    except ValueError:
                        want = len(data)
            if not closed:
                s.settimeout(1.0)
                try:
                    extra = s.recv(65536)
                    closed = not extra
                    data += extra
                except socket.timeout:
                    pass
        except socket.timeout:
            out["timed_out"] = True
        except OSError as exc:
            # e.g. LAVA closes after reading a bad 8-byte header with body bytes unread,
            # so the kernel answers with a reset instead of a FIN.
            out["reset"] = "%s: %s" % (type(exc).__name__, exc)
            closed = True
    out["seconds"] = round(time.monotonic() - start, 3)
    out["raw_reply"] = data.decode("utf-8", "backslashreplace")
    out["server_closed"] = closed
    if not data:
        out["reply"] = None
        return out
    head = data[:8]
    out["header"] = head.decode("ascii", "backslashreplace")
    try:
        declared = int(head, 16)
    except ValueError:
        out["framing_error"] = "header is not hex"
        return out
    if len(head) != 8 or head.decode("ascii", "replace") != "%08X" % declared:
        out["framing_error"] = "header is not 8 uppercase hex digits"
    out["declared_length"] = declared
    out["body_length"] = len(data) - 8
    if declared != len(data) - 8:
        out["framing_error"] = "declared %d bytes, got %d" % (declared, len(data) - 8)
    try:
        out["reply"] = json.loads(data[8:].decode("utf-8"))
    except ValueError:
        out["framing_error"] = "body is not JSON"
    return out


def frames_plan(group):
    """Requests shaped like MultinodeProtocol's, with Debian lava-coordinator's replies."""
    me = "frames.0"
    base = {
        "port": 3079, "blocksize": 4096, "poll_delay": 1, "host": "localhost",
        "hostname": socket.gethostname(), "client_name": me, "group_name": group,
        "role": "solo",
    }

    def req(**kw):
        m = dict(base)
        m.update(kw)
        return m

    ack = {"response": "ack"}
    nack = {"response": "nack"}
    wait = {"response": "wait"}
    # (name, payload, expected reply or None for "closed without reply", half_close)
    return [
        ("group_data (group of 1)", req(request="group_data", group_size=1),
         {"response": "group_data", "roles": {me: "solo"}}, True),
        ("lava_send m1", req(request="lava_send", messageID="m1", message={"k": "v"}), ack, True),
        ("lava_wait m1", req(request="lava_wait", messageID="m1", nodeID=me),
         {"response": "ack", "message": {me: {"k": "v"}}}, True),
        ("lava_wait_all m1", req(request="lava_wait_all", messageID="m1"),
         {"response": "ack", "message": {me: {"k": "v"}}}, True),
        ("lava_wait_all m1 waitrole=solo", req(request="lava_wait_all", messageID="m1", waitrole="solo"),
         {"response": "ack", "message": {me: {"k": "v"}}}, True),
        ("lava_wait never-sent", req(request="lava_wait", messageID="never", nodeID=me), wait, True),
        ("lava_wait_all never-sent (nack, not wait)", req(request="lava_wait_all", messageID="never"),
         nack, True),
        ("lava_sync s1 (1st: wait even when the last to arrive)", req(request="lava_sync", messageID="s1"),
         wait, True),
        ("lava_sync s1 (2nd: ack, message = messageID)", req(request="lava_sync", messageID="s1"),
         {"response": "ack", "message": "s1"}, True),
        ("aggregate without bundle", req(request="aggregate"), nack, True),
        ("unknown request", req(request="bogus"), nack, True),
        ("no request key", {k: v for k, v in base.items()}, nack, True),
        ("no client_name", {k: v for k, v in req(request="lava_send", messageID="x", message={}).items()
                            if k != "client_name"}, nack, True),
        ("new group without group_size", req(request="group_data", group_name=group + "-nosize"),
         nack, True),
        ("status.py style: no half-close", dict(req(request="lava_wait", messageID="never"), message=None),
         wait, False),
        ("complete (closed without reply)", req(request="complete"), None, True),
        ("header not hex (closed without reply)", b"ZZZZZZZZ{}", None, True),
        ("body not JSON (closed without reply)", b"00000003abc", None, True),
        ("clear_group", req(request="clear_group", group_size=1), ack, True),
    ]


def cmd_frames(args):
    group = "lava-compat-frames-%s" % uuid.uuid4()
    results = []
    failures = []
    for name, payload, expected, half_close in frames_plan(group):
        try:
            r = raw_request(args.host, args.port, payload, half_close=half_close)
        except OSError as exc:
            r = {"error": "%s: %s" % (type(exc).__name__, exc), "reply": None}
        entry = {"name": name,
                 "request": payload.decode() if isinstance(payload, bytes) else payload,
                 "half_close": half_close}
        entry.update(r)
        entry["expected"] = expected
        problems = []
        if "error" in r:
            problems.append(r["error"])
        if r.get("framing_error"):
            problems.append(r["framing_error"])
        if r.get("reply") != expected:
            problems.append("reply %s, expected %s" % (json.dumps(r.get("reply")), json.dumps(expected)))
        if expected is None and r.get("raw_reply"):
            problems.append("expected no reply bytes")
        if not r.get("server_closed"):
            problems.append("server did not close the connection after replying")
        entry["ok"] = not problems
        if problems and not args.no_check:
            failures.append("%s: %s" % (name, "; ".join(problems)))
        results.append(entry)
    print(json.dumps({"coordinator": "%s:%s" % (args.host, args.port), "group": group,
                      "checked": not args.no_check, "ok": not failures, "failures": failures,
                      "frames": results}, indent=2))
    if failures:
        print("lava_clients: frames FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
    return 1 if failures else 0


# --------------------------------------------------------------------------- barrier


def cmd_barrier(args):
    """Barrier latency as a LAVA MultiNode job sees it: N dispatchers' protocol objects.

    One group and one start barrier (polled every second), then --rounds lava_sync
    rounds for each poll delay in --poll-delays, in that order."""
    import_lava()
    import resource
    from lava_dispatcher.protocols.multinode import MultinodeProtocol

    delays = [int(d) for d in args.poll_delays.split(",") if d]
    phase = {"delay": None}
    # LAVA's client logs each connection the coordinator resets (then treats it as a
    # `wait`); count those, per poll delay, instead of printing a traceback for each.
    resets = {}

    class CountResets(logging.Handler):
        def emit(self, record):
            if "socket error" in record.getMessage():
                resets[phase["delay"]] = resets.get(phase["delay"], 0) + 1

    logger = logging.getLogger("dispatcher")
    logger.addHandler(CountResets())
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    # One socket per client at a time, plus Python's own: N may exceed the default 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.nodes * 2 + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    threading.stack_size(512 * 1024)
    group = str(uuid.uuid4())
    base_id = "%d" % (int(time.time() * 1000) % 10**9)
    ids = ["%s.%d" % (base_id, i) for i in range(args.nodes)]
    roles = {i: "node" for i in ids}
    start_line = threading.Barrier(args.nodes + 1)
    finish_line = threading.Barrier(args.nodes + 1)
    ended = [0.0] * args.nodes
    errors = []
    total = args.rounds * len(delays)
    with tempfile.TemporaryDirectory(prefix="lava-barrier-") as tmp:
        conf = write_conf(tmp, args.host, args.port, poll_delay=1)
        protos = []
        for sub_id, job_id in enumerate(ids):
            params = {"protocols": {MultinodeProtocol.name: {
                "target_group": group, "role": "node", "group_size": args.nodes,
                "sub_id": sub_id, "roles": roles, "timeout": {"seconds": args.deadline}}}}
            proto = MultinodeProtocol(params, job_id)
            proto.set_up = types.MethodType(with_conf_path(MultinodeProtocol.set_up, conf), proto)
            protos.append(proto)

        def node(index):
            proto = protos[index]
            try:
                proto.set_up()
                start_line.wait()
                for r in range(total):
                    start_line.wait()  # the main thread set this round's poll delay
                    reply = proto({"request": "lava_sync", "messageID": "round-%d" % r,
                                   "timeout": args.deadline})
                    ended[index] = time.monotonic()
                    if reply == "nack":
                        errors.append("node %d: round %d nacked" % (index, r))
                    finish_line.wait()
            except BaseException as exc:  # report, and let the others go on
                errors.append("node %d: %s: %s" % (index, type(exc).__name__, exc))
                start_line.abort()
                finish_line.abort()

        threads = [threading.Thread(target=node, args=(i,), daemon=True) for i in range(args.nodes)]
        began = time.monotonic()
        for t in threads:
            t.start()
        rounds = {str(d): [] for d in delays}
        setup = None

        def report(gave_up):
            print(json.dumps({"nodes": args.nodes, "setup_s": setup, "rounds_s": rounds,
                              "connection_errors": {str(d): resets.get(d, 0) for d in delays},
                              "gave_up": gave_up, "errors": errors[:10]}))
            sys.stdout.flush()

        def give_up():
            # Whatever was measured so far, then out: LAVA's clients may be stuck in
            # TCP retries for minutes (see "connection_errors").
            report(True)
            os._exit(0)

        if args.give_up:
            watchdog = threading.Timer(args.give_up, give_up)
            watchdog.daemon = True
            watchdog.start()
        try:
            start_line.wait(timeout=args.deadline)  # everyone is past group_data
            setup = time.monotonic() - began
            for r in range(total):
                delay = delays[r // args.rounds]
                phase["delay"] = delay
                for proto in protos:
                    proto.settings["poll_delay"] = delay
                start_line.wait(timeout=args.deadline)
                released = time.monotonic()
                finish_line.wait(timeout=args.deadline)
                rounds[str(delay)].append(max(ended) - released)
        except threading.BrokenBarrierError:
            errors.append("a barrier broke (a client failed or --deadline passed)")
        report(False)
    os._exit(1 if errors else 0)  # daemon threads may be blocked in LAVA's poll loop


# --------------------------------------------------------------------------- reference / selftest


def reference_cmd(conf, logfile="-", loglevel="DEBUG"):
    script = lava_root() / "usr" / "bin" / "lava-coordinator"
    if not script.is_file():
        die("%s missing; %s" % (script, INSTALL_HINT))
    return [sys.executable, str(script), "--config", conf, "--logfile", logfile, "--loglevel", loglevel]


def reference_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(lava_site()), env.get("PYTHONPATH")]))
    env["LAVA_COMPAT_ANY_PYTHON"] = "1"
    return env


def cmd_reference(args):
    """Debian's lava-coordinator in the foreground; it binds 0.0.0.0:PORT whatever the host."""
    import_lava()
    conf = write_conf(str(lava_root().parent), "localhost", args.port)
    os.execve(sys.executable, reference_cmd(conf, loglevel=args.loglevel), reference_env())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_selftest(args):
    import_lava()
    port = args.port or free_port()
    rc = 0
    with tempfile.TemporaryDirectory(prefix="lava-selftest-") as tmp:
        conf = write_conf(tmp, "127.0.0.1", port)
        log = os.path.join(tmp, "lava-coordinator.log")
        daemon = subprocess.Popen(reference_cmd(conf, log), env=reference_env(),
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        print("lava_clients: Debian lava-coordinator pid %d on port %d" % (daemon.pid, port), file=sys.stderr)
        try:
            deadline = time.monotonic() + 10
            while True:
                if daemon.poll() is not None:
                    die("lava-coordinator exited with %s" % daemon.returncode, 1)
                try:
                    # An empty connection: LAVA logs "Invalid message" and carries on.
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        die("lava-coordinator did not listen on %d" % port, 1)
                    time.sleep(0.1)
            me = [sys.executable, os.path.abspath(__file__)]
            hp = ["--host", "127.0.0.1", "--port", str(port)]
            for sub in (["status"], ["pair", "--poll-delay", str(args.poll_delay)], ["frames"]):
                t = time.monotonic()
                out = subprocess.run(me + sub + hp, env=reference_env(), capture_output=True, text=True)
                print("== %s: exit %d in %.2fs" % (sub[0], out.returncode, time.monotonic() - t))
                if args.verbose or out.returncode:
                    print(out.stdout + out.stderr)
                rc = rc or out.returncode
        finally:
            daemon.terminate()
            try:
                daemon.wait(5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            if rc or args.verbose:
                with open(log) as f:
                    print("-- lava-coordinator log:\n" + f.read())
    print("selftest %s" % ("ok" if rc == 0 else "FAILED"))
    return 1 if rc else 0


def main():
    _reexec_with_debian_python()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def hostport(sp):
        sp.add_argument("--host", default="127.0.0.1")
        sp.add_argument("--port", type=int, default=3079)

    sp = sub.add_parser("status", help="LAVA's status.py health check")
    hostport(sp)
    sp.add_argument("--deadline", type=float, default=60,
                    help="wall-clock limit; exit 124 if status.py is still blocked")
    sp = sub.add_parser("pair", help="two LAVA MultinodeProtocol clients")
    hostport(sp)
    sp.add_argument("--poll-delay", type=float, default=1,
                    help="seconds between polls after a 'wait' (coordinator conf poll_delay; LAVA default 1)")
    sp.add_argument("--timeout", type=int, default=60,
                    help="per-call poll timeout; LAVA counts it as polls x poll_delay, not wall time")
    sp.add_argument("--deadline", type=float, default=120, help="wall-clock limit for the whole pair")
    sp.add_argument("--lenient", action="store_true",
                    help="check only what lava-dispatcher consumes, not Debian's exact replies")
    sp.add_argument("-v", "--verbose", action="store_true", help="LAVA's dispatcher log on stderr")
    sp = sub.add_parser("frames", help="raw framed requests and replies")
    hostport(sp)
    sp.add_argument("--no-check", action="store_true", help="print only, do not compare")
    sp = sub.add_parser("barrier", help="lava_sync rounds across N LAVA clients")
    hostport(sp)
    sp.add_argument("--nodes", type=int, required=True)
    sp.add_argument("--rounds", type=int, default=5, help="rounds per poll delay")
    sp.add_argument("--poll-delays", default="3",
                    help="comma-separated seconds between polls after a 'wait' (Debian ships 3)")
    sp.add_argument("--deadline", type=int, default=600, help="seconds any one step may take")
    sp.add_argument("--give-up", type=float, default=0,
                    help="after this many seconds, report the rounds so far and stop (0: never)")
    sp = sub.add_parser("reference", help="run Debian's lava-coordinator in the foreground")
    sp.add_argument("--port", type=int, default=3079)
    sp.add_argument("--loglevel", default="DEBUG", help="DEBUG, INFO, WARNING or ERROR")
    sp = sub.add_parser("selftest", help="status, pair and frames against Debian's lava-coordinator")
    sp.add_argument("--port", type=int, default=0, help="default: a free loopback port")
    sp.add_argument("--poll-delay", type=float, default=1)
    sp.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    return {"status": cmd_status, "pair": cmd_pair, "frames": cmd_frames,
            "barrier": cmd_barrier, "reference": cmd_reference, "selftest": cmd_selftest}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
